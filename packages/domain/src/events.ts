import type { MemberRole, Permission } from "./permissions";

/** Who caused an event, and through which door. Never a secret. */
export type EventMetadata = {
  actorUserId: string | null;
  organizationId: string;
  authMethod: "jwt" | "api_key" | "internal" | "system";
  requestId: string | null;
};

export const REVOCATION_REASONS = ["deleted", "permissions_unassigned", "member_removed"] as const;
export type RevocationReason = (typeof REVOCATION_REASONS)[number];

export type KeyCreated = {
  type: "KeyCreated";
  data: {
    keyId: string;
    organizationId: string;
    userId: string;
    name: string;
    /** SHA-256 hex of the value; the value itself is never in an event. */
    keyHash: string;
    maskedValue: string;
    permissions: Permission[];
    createdAt: string;
    expiresAt: string | null;
  };
};

export type KeyRevoked = {
  type: "KeyRevoked";
  data: {
    keyId: string;
    organizationId: string;
    userId: string;
    name: string;
    keyHash: string;
    /** A previous value still in its rotation grace period dies with the key. */
    previousKeyHash: string | null;
    reason: RevocationReason;
    revokedAt: string;
  };
};

/** A key got a new value; the previous value keeps working until `previousValidUntil`. */
export type KeyRotated = {
  type: "KeyRotated";
  data: {
    keyId: string;
    organizationId: string;
    userId: string;
    name: string;
    keyHash: string;
    maskedValue: string;
    previousKeyHash: string;
    previousValidUntil: string;
    /** The value from an earlier rotation whose grace period this rotation ended at once, if any. */
    supersededKeyHash: string | null;
    expiresAt: string | null;
    rotatedAt: string;
  };
};

export type KeyUsed = {
  type: "KeyUsed";
  data: { keyId: string; organizationId: string; userId: string; name: string; usedAt: string };
};

export type MemberAccessChanged = {
  type: "MemberAccessChanged";
  data: {
    organizationId: string;
    userId: string;
    role: MemberRole;
    permissions: Permission[];
    changedAt: string;
  };
};

export type MemberRemoved = {
  type: "MemberRemoved";
  data: { organizationId: string; userId: string; removedAt: string };
};

export type KeyEvent = KeyCreated | KeyRevoked | KeyRotated | KeyUsed;
export type MemberEvent = MemberAccessChanged | MemberRemoved;
export type KeyledgerEvent = KeyEvent | MemberEvent;
export type KeyledgerEventType = KeyledgerEvent["type"];

export const EVENT_TYPES: readonly KeyledgerEventType[] = [
  "KeyCreated",
  "KeyRevoked",
  "KeyRotated",
  "KeyUsed",
  "MemberAccessChanged",
  "MemberRemoved",
];

/** One stream per key name of a user in an organization: its version guards name uniqueness. */
export function keyStreamId(organizationId: string, userId: string, name: string): string {
  return `api_key:${encodeURIComponent(organizationId)}/${encodeURIComponent(userId)}/${encodeURIComponent(name)}`;
}

export function memberStreamId(organizationId: string, userId: string): string {
  return `member:${encodeURIComponent(organizationId)}/${encodeURIComponent(userId)}`;
}

export function assertNever(value: never): never {
  throw new Error(`unexpected variant: ${JSON.stringify(value)}`);
}
