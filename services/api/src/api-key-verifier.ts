import type { BusLogger, NatsLink } from "@keyledger/nats-bus";
import {
  createVerifier,
  type InvalidatingEvent,
  type LookupResult,
  type VerifiedKey,
  type Verifier,
  type VerifierCacheOptions,
} from "@keyledger/verifier";
import type { Kysely } from "kysely";
import { type ApiKeyRow, findApiKeyByHash, validUntilForValue } from "./read-model-queries";

/** What the API's own verifier caches: the verified key plus the read-model row its routes answer with. */
export type ApiVerifiedKey = VerifiedKey & {
  row: ApiKeyRow;
  keyHash: string;
  /** When the presented value stops working (the key's expiry, or the end of a rotation grace period). */
  validUntil: Date | null;
};

export type ApiKeyVerifier = Verifier<ApiVerifiedKey>;

/**
 * The authoritative answer from the read model: unknown → NOT_FOUND, revoked (or a rotated-out value whose grace
 * ended, or an earlier value a later rotation superseded) → REVOKED, past its expiry → EXPIRED.
 */
export function databaseKeyLookup(db: Kysely<unknown>) {
  return async (_bearer: string, keyHash: string): Promise<LookupResult<ApiVerifiedKey>> => {
    const row = await findApiKeyByHash(db, keyHash);
    if (!row) return { valid: false, code: "NOT_FOUND" };
    if (row.revoked_at !== null) return { valid: false, code: "REVOKED" };
    const now = new Date();
    const validUntil = validUntilForValue(row, keyHash, now);
    if (validUntil === undefined) {
      const expired = row.expires_at !== null && row.expires_at.getTime() <= now.getTime();
      return { valid: false, code: expired || row.key_hash === keyHash ? "EXPIRED" : "REVOKED" };
    }
    return {
      valid: true,
      key: {
        name: row.name,
        userId: row.user_id,
        organizationId: row.organization_id,
        permissions: row.permissions,
        expiresAt: validUntil === null ? null : validUntil.toISOString(),
        row,
        keyHash,
        validUntil,
      },
    };
  };
}

export type ApiKeyVerifierOptions = {
  /**
   * NATS for invalidations: the event bus's connection (no echo: the app applies its own events); without it every
   * API-key request reads the database.
   */
  natsLink: NatsLink | undefined;
  subjectPrefix: string | undefined;
  cache: VerifierCacheOptions | undefined;
  log: BusLogger;
  /** Every event the subscription delivers (the membership cache listens). */
  onEvent?: (event: InvalidatingEvent) => void;
};

/** The API's in-process verifier: the gateways' verifier with a database lookup instead of HTTP. */
export function createApiKeyVerifier(db: Kysely<unknown>, options: ApiKeyVerifierOptions): ApiKeyVerifier {
  return createVerifier<ApiVerifiedKey>({
    lookup: databaseKeyLookup(db),
    natsLink: options.natsLink,
    subjectPrefix: options.subjectPrefix,
    cache: options.cache,
    // Rows carry lastUsedAt: a KeyUsed drops the row, so /current and the use throttle see the new value.
    keyIdOf: (key) => key.row.key_id,
    name: "keyledger-api-verifier",
    log: options.log,
    onEvent: options.onEvent,
  });
}
