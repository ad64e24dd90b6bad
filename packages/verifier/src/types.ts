/** What a verified key grants: its owner, organization, permissions and end of validity. */
export type VerifiedKey = {
  name: string;
  userId: string;
  organizationId: string;
  permissions: string[];
  /**
   * When this value stops working (ISO date-time): the key's expiry, or the end of the grace period of a
   * rotated-out value. Null: never.
   */
  expiresAt: string | null;
};

export type VerifyFailureCode = "MALFORMED" | "NOT_FOUND" | "EXPIRED" | "REVOKED";

export type VerifyResult<K extends VerifiedKey = VerifiedKey> =
  | { valid: true; key: K }
  | { valid: false; code: VerifyFailureCode };

/** The authoritative answer for one key; `MALFORMED` is decided before any lookup. */
export type LookupResult<K extends VerifiedKey = VerifiedKey> =
  | { valid: true; key: K }
  | { valid: false; code: Exclude<VerifyFailureCode, "MALFORMED"> };

/**
 * Asks the source of truth about a well-formed key: gateways call the API (`GET /api/api-keys/current`), the API
 * itself reads its database. Rejects when the source cannot be reached (the caller answers 503, never "valid").
 */
export type KeyLookup<K extends VerifiedKey = VerifiedKey> = (
  bearer: string,
  keyHash: string,
  context: LookupContext,
) => Promise<LookupResult<K>>;

/** Who asked, for the source of truth's own limits (the first caller's, when concurrent misses share a lookup). */
export type LookupContext = { clientIp?: string };

/** An event as the verifier needs it: its type and data (the NATS message body has more). */
export type InvalidatingEvent = { eventId?: string; type: string; data: Record<string, unknown> };
