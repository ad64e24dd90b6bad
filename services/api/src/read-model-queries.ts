import type { MemberRole, Permission } from "@keyledger/domain";
import { PREPARED_STATEMENT } from "@keyledger/event-store";
import type { ReadModelTables } from "@keyledger/projections";
import { type Kysely, type Selectable, sql } from "kysely";

export type ApiKeyRow = Selectable<ReadModelTables["api_keys"]>;
export type MemberRow = { organizationId: string; userId: string; role: MemberRole; permissions: Permission[] };

/** The columns of an `ApiKeyRow` (every column but the generated `list_item`, which only the list reads). */
const API_KEY_COLUMN_NAMES = [
  "key_id",
  "organization_id",
  "user_id",
  "name",
  "key_hash",
  "masked_value",
  "permissions",
  "created_at",
  "expires_at",
  "last_used_at",
  "revoked_at",
  "revoked_reason",
  "previous_key_hash",
  "previous_valid_until",
  "rotated_at",
] as const satisfies readonly (keyof ReadModelTables["api_keys"])[];
const API_KEY_COLUMNS = API_KEY_COLUMN_NAMES.join(", ");

function readModel(db: Kysely<unknown>) {
  return db as unknown as Kysely<ReadModelTables>;
}

/**
 * The key whose current value, or previous value (rotation grace), has this hash; live or revoked; or undefined.
 * Two index lookups (the current value's first), never a scan: with `key_hash = $1 OR previous_key_hash = $1` a
 * table without statistics yet (young, or just restored) was read whole, 12 ms at 100,000 keys.
 */
export async function findApiKeyByHash(db: Kysely<unknown>, keyHash: string): Promise<ApiKeyRow | undefined> {
  const result = await sql<ApiKeyRow>`${sql.raw(PREPARED_STATEMENT)}
    (SELECT ${sql.raw(API_KEY_COLUMNS)} FROM api_keys WHERE key_hash = ${keyHash}
     UNION ALL
     SELECT ${sql.raw(API_KEY_COLUMNS)} FROM api_keys WHERE previous_key_hash = ${keyHash})
    LIMIT 1`.execute(db);
  return result.rows[0];
}

/**
 * `findApiKeyByHash` for many hashes in one statement (gateways' key-use reports): each hash to the key whose
 * current value, or else previous value, has it. Two index lookups per hash, as there.
 */
export async function findApiKeysByHashes(
  db: Kysely<unknown>,
  keyHashes: readonly string[],
): Promise<Map<string, ApiKeyRow>> {
  const found = new Map<string, ApiKeyRow>();
  if (keyHashes.length === 0) return found;
  const hashes = [...new Set(keyHashes)];
  const result = await sql<ApiKeyRow & { matched_hash: string; current_value: boolean }>`${sql.raw(PREPARED_STATEMENT)}
    SELECT ${sql.raw(API_KEY_COLUMNS)}, key_hash AS matched_hash, true AS current_value
      FROM api_keys WHERE key_hash = ANY(${hashes}::text[])
    UNION ALL
    SELECT ${sql.raw(API_KEY_COLUMNS)}, previous_key_hash AS matched_hash, false AS current_value
      FROM api_keys WHERE previous_key_hash = ANY(${hashes}::text[])`.execute(db);
  for (const { matched_hash, current_value, ...row } of result.rows) {
    if (current_value || !found.has(matched_hash)) found.set(matched_hash, row);
  }
  return found;
}

/**
 * When the value with `keyHash` stops working: the key's expiry for its current value, the end of the grace
 * period for a rotated-out value. `undefined` means it is not valid now (revoked, expired, grace over).
 */
export function validUntilForValue(row: ApiKeyRow, keyHash: string, now: Date): Date | null | undefined {
  if (row.revoked_at !== null) return undefined;
  let until: Date | null = row.expires_at;
  if (row.key_hash !== keyHash) {
    if (row.previous_key_hash !== keyHash || row.previous_valid_until === null) return undefined;
    until = until === null || row.previous_valid_until < until ? row.previous_valid_until : until;
  }
  return until !== null && until.getTime() <= now.getTime() ? undefined : until;
}

/** A live (not revoked) key by owner and name. */
export function findLiveApiKey(
  db: Kysely<unknown>,
  organizationId: string,
  userId: string,
  name: string,
): Promise<ApiKeyRow | undefined> {
  // Postgres text cannot hold NUL, so no stored name has one (and asking would be an error, not "none").
  if (name.includes("\u0000")) return Promise.resolve(undefined);
  return readModel(db)
    .selectFrom("api_keys")
    .select(API_KEY_COLUMN_NAMES)
    .where("organization_id", "=", organizationId)
    .where("user_id", "=", userId)
    .where("name", "=", name)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

/**
 * The body of `GET /api/api-keys`: live keys of an organization (all of them, or one user's), most recently used
 * first, never used last, then newest first, as one JSON text. Each row stores its item (`list_item`, a column
 * Postgres generates from the row: migration 0009, in `toApiKeyListItem`'s shape), so Postgres only joins them and
 * the API passes the text through instead of parsing up to thousands of rows into objects and serializing them
 * again.
 */
export async function listLiveApiKeysJson(
  db: Kysely<unknown>,
  organizationId: string,
  userId: string | undefined,
): Promise<string> {
  const ownedBy = userId === undefined ? sql`` : sql`AND user_id = ${userId}`;
  const result = await sql<{ body: string }>`${sql.raw(PREPARED_STATEMENT)}
    SELECT '[' || coalesce(string_agg(list_item, ',' ORDER BY last_used_at DESC NULLS LAST, created_at DESC), '')
           || ']' AS body
      FROM api_keys
     WHERE organization_id = ${organizationId} AND revoked_at IS NULL ${ownedBy}`.execute(db);
  return result.rows[0]?.body ?? "[]";
}

export async function findMember(
  db: Kysely<unknown>,
  organizationId: string,
  userId: string,
  lock: "none" | "share" | "update" = "none",
): Promise<MemberRow | undefined> {
  let query = readModel(db)
    .selectFrom("organization_members")
    .select(["organization_id", "user_id", "role", "permissions"])
    .where("organization_id", "=", organizationId)
    .where("user_id", "=", userId);
  if (lock === "share") query = query.forShare();
  if (lock === "update") query = query.forUpdate();
  const row = await query.executeTakeFirst();
  return row
    ? {
        organizationId: row.organization_id,
        userId: row.user_id,
        role: row.role as MemberRole,
        permissions: row.permissions as Permission[],
      }
    : undefined;
}
