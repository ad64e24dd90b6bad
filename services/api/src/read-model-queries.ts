import type { MemberRole, Permission } from "@keyledger/domain";
import { PREPARED_STATEMENT } from "@keyledger/event-store";
import type { ReadModelTables } from "@keyledger/projections";
import { type Kysely, type Selectable, sql } from "kysely";

export type ApiKeyRow = Selectable<ReadModelTables["api_keys"]>;
export type MemberRow = { organizationId: string; userId: string; role: MemberRole; permissions: Permission[] };

const API_KEY_COLUMNS = `key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at,
  expires_at, last_used_at, revoked_at, revoked_reason, previous_key_hash, previous_valid_until, rotated_at`;

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
    .selectAll()
    .where("organization_id", "=", organizationId)
    .where("user_id", "=", userId)
    .where("name", "=", name)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

/** `timestamptz` as JavaScript's `toISOString()` writes it (UTC, milliseconds: the read model stores no finer). */
const isoTime = (column: string) =>
  sql`to_char(${sql.ref(column)} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/**
 * The body of `GET /api/api-keys`: live keys of an organization (all of them, or one user's), most recently used
 * first, never used last, then newest first, each in the list item shape (`toApiKeyListItem`'s fields, in its
 * order), as one JSON text that Postgres builds: the API passes it through instead of parsing up to thousands of
 * rows into objects and serializing them again.
 */
export async function listLiveApiKeysJson(
  db: Kysely<unknown>,
  organizationId: string,
  userId: string | undefined,
): Promise<string> {
  const ownedBy = userId === undefined ? sql`` : sql`AND k.user_id = ${userId}`;
  const result = await sql<{ body: string }>`${sql.raw(PREPARED_STATEMENT)}
    SELECT '[' || coalesce(string_agg(doc, ',' ORDER BY last_used_at DESC NULLS LAST, created_at DESC), '') || ']'
           AS body
      FROM (SELECT row_to_json(item)::text AS doc, k.last_used_at, k.created_at
              FROM api_keys k
                   CROSS JOIN LATERAL (
                     SELECT k.name, k.masked_value AS value, ${isoTime("k.created_at")} AS "createdAt",
                            k.permissions, ${isoTime("k.last_used_at")} AS "lastUsedAt",
                            ${isoTime("k.expires_at")} AS "expiresAt", k.user_id AS "userId",
                            k.organization_id AS "organizationId") AS item
             WHERE k.organization_id = ${organizationId} AND k.revoked_at IS NULL ${ownedBy}) AS listed`.execute(db);
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
