import { EVENT_TYPES, type KeyledgerEvent } from "@keyledger/domain";
import { type Kysely, sql } from "kysely";
import {
  API_KEYS_TABLE,
  type ApiKeyRecord,
  foldReadModel,
  MEMBERS_TABLE,
  type MemberRecord,
  type ReadModelState,
} from "./read-model-projection";

export type KeyAsOf = {
  keyId: string;
  name: string;
  userId: string;
  /** The owner's role in the organization then (null: not a member). */
  ownerRole: string | null;
  permissions: string[];
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
  revokedAt: string | null;
  revokedReason: string | null;
  rotatedAt: string | null;
  /** After a rotation, when the previous value stopped (or stops) working. */
  previousValueValidUntil: string | null;
  state: "valid" | "revoked" | "expired";
  /** Whether the key authenticated at `asOf`. */
  validThen: boolean;
};

export type OrganizationAsOf = {
  organizationId: string;
  asOf: string;
  eventsReplayed: number;
  /** Global position of the last event replayed. */
  lastPosition: string | null;
  keys: KeyAsOf[];
  members: { userId: string; role: string; permissions: string[] }[];
};

const iso = (value: Date | null) => (value === null ? null : value.toISOString());
const PROJECTED_TYPES: ReadonlySet<string> = new Set(EVENT_TYPES);

/**
 * Replays an organization's events that occurred up to `asOf` through the read-model projection (the same
 * definition the API and rebuilds use), in memory, and reports its keys and members as they were then.
 */
export async function replayOrganizationAsOf(
  db: Kysely<unknown>,
  options: { organizationId: string; asOf: Date; pageSize?: number },
): Promise<OrganizationAsOf> {
  const pageSize = options.pageSize ?? 5000;
  const state: ReadModelState = new Map();
  let replayed = 0;
  let position = "0";
  await db
    .transaction()
    .setIsolationLevel("repeatable read")
    .setAccessMode("read only")
    .execute(async (trx) => {
      await sql`SET LOCAL statement_timeout = 0`.execute(trx);
      for (;;) {
        const page = await sql<{ global_position: string; event_type: string; data: unknown }>`
          SELECT global_position::text AS global_position, event_type, data FROM events e
           WHERE global_position > ${position}::bigint
             AND occurred_at <= ${options.asOf}
             AND coalesce(data->>'organizationId', metadata->>'organizationId') = ${options.organizationId}
           ORDER BY e.global_position LIMIT ${pageSize}`.execute(trx);
        if (page.rows.length === 0) break;
        const events = page.rows
          .filter((row) => PROJECTED_TYPES.has(row.event_type))
          .map((row) => ({ type: row.event_type, data: row.data }) as KeyledgerEvent);
        foldReadModel(state, events);
        replayed += page.rows.length;
        position = (page.rows[page.rows.length - 1] as { global_position: string }).global_position;
      }
    });
  const asOf = options.asOf.getTime();
  const members = [...(state.get(MEMBERS_TABLE.name)?.values() ?? [])] as MemberRecord[];
  const roles = new Map(members.map((m) => [m.user_id, m.role]));
  const keys = ([...(state.get(API_KEYS_TABLE.name)?.values() ?? [])] as ApiKeyRecord[])
    .map((key): KeyAsOf => {
      const expired = key.expires_at !== null && key.expires_at.getTime() <= asOf;
      const state = key.revoked_at !== null ? "revoked" : expired ? "expired" : "valid";
      return {
        keyId: key.key_id,
        name: key.name,
        userId: key.user_id,
        ownerRole: roles.get(key.user_id) ?? null,
        permissions: key.permissions,
        createdAt: key.created_at.toISOString(),
        expiresAt: iso(key.expires_at),
        lastUsedAt: iso(key.last_used_at),
        revokedAt: iso(key.revoked_at),
        revokedReason: key.revoked_reason,
        rotatedAt: iso(key.rotated_at),
        previousValueValidUntil: iso(key.previous_valid_until),
        state,
        validThen: state === "valid",
      };
    })
    .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
  return {
    organizationId: options.organizationId,
    asOf: options.asOf.toISOString(),
    eventsReplayed: replayed,
    lastPosition: replayed > 0 ? position : null,
    keys,
    members: members
      .map((m) => ({ userId: m.user_id, role: m.role, permissions: m.permissions }))
      .sort((a, b) => a.userId.localeCompare(b.userId)),
  };
}

/**
 * Whether the log holds any event of the organization, at any time (the organization as `replayOrganizationAsOf`
 * reads it: the data's `organizationId`, else the metadata's). Reads the whole log when it holds none.
 */
export async function organizationHasEvents(db: Kysely<unknown>, organizationId: string): Promise<boolean> {
  const result = await sql<{ found: boolean }>`
    SELECT EXISTS (
      SELECT 1 FROM events
       WHERE coalesce(data->>'organizationId', metadata->>'organizationId') = ${organizationId}) AS found`.execute(db);
  return result.rows[0]?.found === true;
}
