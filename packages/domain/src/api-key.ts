import { DomainError } from "./errors";
import { assertNever, type KeyEvent, type RevocationReason } from "./events";
import { type MemberRole, type Permission, permissionsNotGrantable } from "./permissions";

/** What a key stream folds into. A stream can hold several lifetimes of one name (create, revoke, create). */
export type ApiKeyState =
  | { status: "absent" }
  | {
      status: "active" | "revoked";
      keyId: string;
      organizationId: string;
      userId: string;
      name: string;
      keyHash: string;
      /** The value replaced by the last rotation, usable until `previousValidUntil`. */
      previousKeyHash: string | null;
      previousValidUntil: string | null;
      permissions: Permission[];
      createdAt: string;
      expiresAt: string | null;
      lastUsedAt: string | null;
    };

export const initialApiKeyState: ApiKeyState = { status: "absent" };

export type CreateKey = {
  type: "CreateKey";
  data: {
    keyId: string;
    organizationId: string;
    userId: string;
    name: string;
    keyHash: string;
    maskedValue: string;
    permissions: Permission[];
    expiresAt: Date | null;
    grantor: { role: MemberRole; permissions: Permission[] };
    now: Date;
  };
};

export type RevokeKey = { type: "RevokeKey"; data: { reason: RevocationReason; now: Date } };

/** Maximum rotation grace period: 7 days. */
export const MAX_GRACE_PERIOD_SECONDS = 604_800;

export type RotateKey = {
  type: "RotateKey";
  data: {
    keyHash: string;
    maskedValue: string;
    gracePeriodSeconds: number;
    /** `undefined` keeps the current expiry; `null` means the new value never expires. */
    expiresAt: Date | null | undefined;
    /**
     * Whether this rotation may move the key's expiry later or remove it: yes for a JWT (the key's owner, or an
     * organization owner), no for the key itself (`/current/rotate`): a leaked value must not outlive the expiry its
     * owner set.
     */
    mayExtendExpiry: boolean;
    /** The value hash the caller saw; a rotation that happened in between makes this one fail. */
    expectedKeyHash: string | undefined;
    now: Date;
  };
};

export type RecordKeyUse = {
  type: "RecordKeyUse";
  /** `keyId`: the key that was used, when known; a use of a key the name no longer holds records nothing. */
  data: { usedAt: Date; throttleMs: number; keyId?: string };
};

export type ApiKeyCommand = CreateKey | RevokeKey | RotateKey | RecordKeyUse;

export function decideApiKey(command: ApiKeyCommand, state: ApiKeyState): KeyEvent[] {
  switch (command.type) {
    case "CreateKey": {
      const c = command.data;
      if (c.expiresAt !== null && c.expiresAt.getTime() <= c.now.getTime()) {
        throw new DomainError("EXPIRY_IN_PAST", "expiresAt must be in the future");
      }
      const permissions = [...new Set(c.permissions)];
      const denied = permissionsNotGrantable(c.grantor, permissions);
      if (denied.length > 0) {
        throw new DomainError(
          "PERMISSIONS_NOT_GRANTABLE",
          `Insufficient permissions for assigning: ${denied.join(", ")}`,
          denied,
        );
      }
      if (state.status === "active") {
        throw new DomainError("KEY_NAME_TAKEN", "API key with this name already exists");
      }
      return [
        {
          type: "KeyCreated",
          data: {
            keyId: c.keyId,
            organizationId: c.organizationId,
            userId: c.userId,
            name: c.name,
            keyHash: c.keyHash,
            maskedValue: c.maskedValue,
            permissions,
            createdAt: c.now.toISOString(),
            expiresAt: c.expiresAt === null ? null : c.expiresAt.toISOString(),
          },
        },
      ];
    }
    case "RevokeKey": {
      if (state.status !== "active") throw new DomainError("KEY_NOT_FOUND", "API key not found");
      return [
        {
          type: "KeyRevoked",
          data: {
            keyId: state.keyId,
            organizationId: state.organizationId,
            userId: state.userId,
            name: state.name,
            keyHash: state.keyHash,
            previousKeyHash: state.previousKeyHash,
            reason: command.data.reason,
            revokedAt: command.data.now.toISOString(),
          },
        },
      ];
    }
    case "RotateKey": {
      const c = command.data;
      if (state.status !== "active") throw new DomainError("KEY_NOT_FOUND", "API key not found");
      if (!isKeyUsable(state, c.now)) {
        // Still listed (as Daytona lists expired keys), so not "not found"; its value is dead, and a rotation would
        // bring a key back to life that its owner let expire: a new key is the way.
        throw new DomainError("KEY_EXPIRED", "API key has expired: create a new key instead");
      }
      if (c.expectedKeyHash !== undefined && c.expectedKeyHash !== state.keyHash) {
        throw new DomainError("KEY_CHANGED_CONCURRENTLY", "API key was rotated concurrently");
      }
      if (!Number.isInteger(c.gracePeriodSeconds) || c.gracePeriodSeconds < 0) {
        throw new DomainError("INVALID_GRACE_PERIOD", "gracePeriodSeconds must be a non-negative integer");
      }
      if (c.gracePeriodSeconds > MAX_GRACE_PERIOD_SECONDS) {
        throw new DomainError(
          "INVALID_GRACE_PERIOD",
          `gracePeriodSeconds must not be greater than ${MAX_GRACE_PERIOD_SECONDS}`,
        );
      }
      if (c.expiresAt && c.expiresAt.getTime() <= c.now.getTime()) {
        throw new DomainError("EXPIRY_IN_PAST", "expiresAt must be in the future");
      }
      if (!c.mayExtendExpiry && extendsExpiry(state.expiresAt, c.expiresAt)) {
        throw new DomainError(
          "EXPIRY_EXTENSION_NOT_ALLOWED",
          "An API key cannot extend its own expiry: rotate it with a JWT to change its expiry to a later one",
        );
      }
      const expiresAt =
        c.expiresAt === undefined ? state.expiresAt : c.expiresAt === null ? null : c.expiresAt.toISOString();
      // The previous value never outlives the key: neither its own expiry nor the one this rotation sets.
      let validUntil = c.now.getTime() + c.gracePeriodSeconds * 1000;
      if (state.expiresAt !== null) validUntil = Math.min(validUntil, Date.parse(state.expiresAt));
      if (expiresAt !== null) validUntil = Math.min(validUntil, Date.parse(expiresAt));
      const previousStillValid =
        state.previousKeyHash !== null &&
        state.previousValidUntil !== null &&
        Date.parse(state.previousValidUntil) > c.now.getTime();
      return [
        {
          type: "KeyRotated",
          data: {
            keyId: state.keyId,
            organizationId: state.organizationId,
            userId: state.userId,
            name: state.name,
            keyHash: c.keyHash,
            maskedValue: c.maskedValue,
            previousKeyHash: state.keyHash,
            previousValidUntil: new Date(validUntil).toISOString(),
            supersededKeyHash: previousStillValid ? state.previousKeyHash : null,
            expiresAt,
            rotatedAt: c.now.toISOString(),
          },
        },
      ];
    }
    case "RecordKeyUse": {
      if (state.status !== "active") return [];
      const { usedAt, throttleMs, keyId } = command.data;
      if (keyId !== undefined && keyId !== state.keyId) return [];
      if (state.expiresAt !== null && Date.parse(state.expiresAt) <= usedAt.getTime()) return [];
      if (state.lastUsedAt !== null && usedAt.getTime() - Date.parse(state.lastUsedAt) < throttleMs) {
        return [];
      }
      return [
        {
          type: "KeyUsed",
          data: {
            keyId: state.keyId,
            organizationId: state.organizationId,
            userId: state.userId,
            name: state.name,
            usedAt: usedAt.toISOString(),
          },
        },
      ];
    }
    default:
      return assertNever(command);
  }
}

export function evolveApiKey(state: ApiKeyState, event: KeyEvent): ApiKeyState {
  switch (event.type) {
    case "KeyCreated": {
      const d = event.data;
      return {
        status: "active",
        keyId: d.keyId,
        organizationId: d.organizationId,
        userId: d.userId,
        name: d.name,
        keyHash: d.keyHash,
        previousKeyHash: null,
        previousValidUntil: null,
        permissions: d.permissions,
        createdAt: d.createdAt,
        expiresAt: d.expiresAt,
        lastUsedAt: null,
      };
    }
    case "KeyRotated":
      if (state.status === "absent" || state.keyId !== event.data.keyId) return state;
      return {
        ...state,
        keyHash: event.data.keyHash,
        previousKeyHash: event.data.previousKeyHash,
        previousValidUntil: event.data.previousValidUntil,
        expiresAt: event.data.expiresAt,
      };
    case "KeyRevoked":
      if (state.status === "absent" || state.keyId !== event.data.keyId) return state;
      return { ...state, status: "revoked" };
    case "KeyUsed":
      if (state.status === "absent" || state.keyId !== event.data.keyId) return state;
      if (state.lastUsedAt !== null && state.lastUsedAt >= event.data.usedAt) return state;
      return { ...state, lastUsedAt: event.data.usedAt };
    default:
      return assertNever(event);
  }
}

/** Whether a rotation to `next` (`undefined`: keep) would end the key later than `current` (`null`: never). */
function extendsExpiry(current: string | null, next: Date | null | undefined): boolean {
  if (next === undefined || current === null) return false;
  return next === null || next.getTime() > Date.parse(current);
}

/** Whether a key as folded is usable at `now`. */
export function isKeyUsable(state: ApiKeyState, now: Date): boolean {
  if (state.status !== "active") return false;
  return state.expiresAt === null || Date.parse(state.expiresAt) > now.getTime();
}
