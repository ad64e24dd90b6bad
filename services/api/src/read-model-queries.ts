import type { MemberRole, Permission } from "@keyledger/domain";
import type { ReadModelTables } from "@keyledger/projections";
import type { Kysely, Selectable } from "kysely";

export type ApiKeyRow = Selectable<ReadModelTables["api_keys"]>;
export type MemberRow = { organizationId: string; userId: string; role: MemberRole; permissions: Permission[] };

function readModel(db: Kysely<unknown>) {
  return db as unknown as Kysely<ReadModelTables>;
}

/**
 * The key whose current value, or previous value (rotation grace), has this hash; live or revoked; or undefined.
 */
export function findApiKeyByHash(db: Kysely<unknown>, keyHash: string): Promise<ApiKeyRow | undefined> {
  return readModel(db)
    .selectFrom("api_keys")
    .selectAll()
    .where((eb) => eb.or([eb("key_hash", "=", keyHash), eb("previous_key_hash", "=", keyHash)]))
    .executeTakeFirst();
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

/** Live keys of an organization (all of them, or one user's), most recently used first. */
export function listLiveApiKeys(
  db: Kysely<unknown>,
  organizationId: string,
  userId: string | undefined,
): Promise<ApiKeyRow[]> {
  let query = readModel(db)
    .selectFrom("api_keys")
    .selectAll()
    .where("organization_id", "=", organizationId)
    .where("revoked_at", "is", null);
  if (userId !== undefined) query = query.where("user_id", "=", userId);
  return query
    .orderBy(
      (eb) => eb.ref("last_used_at"),
      (ob) => ob.desc().nullsLast(),
    )
    .orderBy("created_at", "desc")
    .execute();
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
