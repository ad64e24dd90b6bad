import { assertNever, type KeyledgerEvent } from "@keyledger/domain";
import { type Kysely, type RawBuilder, type Selectable, sql } from "kysely";
import type { ApiKeysTable, OrganizationMembersTable } from "./schema";

export type ApiKeyRecord = Selectable<ApiKeysTable>;
export type MemberRecord = Selectable<OrganizationMembersTable>;

/** A read-model table as the projection sees it: its name and primary key. */
export type ReadModelTable = { name: "api_keys" | "organization_members"; primaryKey: readonly string[] };

export const API_KEYS_TABLE: ReadModelTable = { name: "api_keys", primaryKey: ["key_id"] };
export const MEMBERS_TABLE: ReadModelTable = {
  name: "organization_members",
  primaryKey: ["organization_id", "user_id"],
};

type Row = Record<string, unknown>;

/**
 * What one event does to the read model: the one row it touches (table and primary key) and a pure function
 * from that row as it is (undefined: absent) to the row as it becomes (undefined: deleted). Returning the same
 * object means "no change".
 */
export type RowChange = {
  table: ReadModelTable;
  key: Row;
  next(current: Row | undefined): Row | undefined;
  /** `next` leaves any existing row as it is and only creates an absent one: an insert that skips a present row. */
  createOnly?: true;
};

function keyChange(
  keyId: string,
  next: (row: ApiKeyRecord | undefined) => ApiKeyRecord | undefined,
  createOnly?: true,
): RowChange {
  return { table: API_KEYS_TABLE, key: { key_id: keyId }, next: next as RowChange["next"], createOnly };
}

function memberChange(
  organizationId: string,
  userId: string,
  next: (row: MemberRecord | undefined) => MemberRecord | undefined,
): RowChange {
  return {
    table: MEMBERS_TABLE,
    key: { organization_id: organizationId, user_id: userId },
    next: next as RowChange["next"],
  };
}

const sameTime = (a: Date | null, b: Date | null) =>
  a === null ? b === null : b !== null && a.getTime() === b.getTime();
const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const dateOrNull = (value: string | null) => (value === null ? null : new Date(value));

/**
 * The one definition of how an event changes the read model (`api_keys`, `organization_members`). Used inline by
 * the API in the appending transaction, by rebuilds from the log and by replays (audit as of a time), through
 * `applyEventsToReadModel` (SQL) or `foldReadModel` (memory). Idempotent: applying an event twice in a row changes
 * nothing the second time. Each row is touched only by the events of one stream (a key's by its key stream, a
 * member's by their member stream), so any order that keeps each stream's version order gives the same rows.
 */
export function readModelChange(event: KeyledgerEvent): RowChange {
  switch (event.type) {
    case "KeyCreated": {
      const d = event.data;
      return keyChange(
        d.keyId,
        (row) =>
          row !== undefined
            ? row
            : {
                key_id: d.keyId,
                organization_id: d.organizationId,
                user_id: d.userId,
                name: d.name,
                key_hash: d.keyHash,
                masked_value: d.maskedValue,
                permissions: d.permissions,
                created_at: new Date(d.createdAt),
                expires_at: dateOrNull(d.expiresAt),
                last_used_at: null,
                revoked_at: null,
                revoked_reason: null,
                previous_key_hash: null,
                previous_valid_until: null,
                rotated_at: null,
              },
        true,
      );
    }
    case "KeyRevoked": {
      const d = event.data;
      return keyChange(d.keyId, (row) =>
        row === undefined || row.revoked_at !== null
          ? row
          : { ...row, revoked_at: new Date(d.revokedAt), revoked_reason: d.reason },
      );
    }
    case "KeyRotated": {
      const d = event.data;
      return keyChange(d.keyId, (row) => {
        if (row === undefined || row.revoked_at !== null) return row;
        const next: ApiKeyRecord = {
          ...row,
          key_hash: d.keyHash,
          masked_value: d.maskedValue,
          previous_key_hash: d.previousKeyHash,
          previous_valid_until: new Date(d.previousValidUntil),
          expires_at: dateOrNull(d.expiresAt),
          rotated_at: new Date(d.rotatedAt),
        };
        const unchanged =
          row.key_hash === next.key_hash &&
          row.masked_value === next.masked_value &&
          row.previous_key_hash === next.previous_key_hash &&
          sameTime(row.previous_valid_until, next.previous_valid_until) &&
          sameTime(row.expires_at, next.expires_at) &&
          sameTime(row.rotated_at, next.rotated_at);
        return unchanged ? row : next;
      });
    }
    case "KeyUsed": {
      const usedAt = new Date(event.data.usedAt);
      return keyChange(event.data.keyId, (row) =>
        row === undefined || (row.last_used_at !== null && row.last_used_at.getTime() >= usedAt.getTime())
          ? row
          : { ...row, last_used_at: usedAt },
      );
    }
    case "MemberAccessChanged": {
      const d = event.data;
      const updatedAt = new Date(d.changedAt);
      return memberChange(d.organizationId, d.userId, (row) =>
        row !== undefined &&
        row.role === d.role &&
        sameList(row.permissions, d.permissions) &&
        sameTime(row.updated_at, updatedAt)
          ? row
          : {
              ...row,
              organization_id: d.organizationId,
              user_id: d.userId,
              role: d.role,
              permissions: d.permissions,
              updated_at: updatedAt,
            },
      );
    }
    case "MemberRemoved":
      return memberChange(event.data.organizationId, event.data.userId, () => undefined);
    default:
      return assertNever(event);
  }
}

function keyOf(table: ReadModelTable, row: Row): string {
  return JSON.stringify(table.primaryKey.map((column) => row[column]));
}

/** Rows of a read model held in memory: table name → primary key → row. */
export type ReadModelState = Map<ReadModelTable["name"], Map<string, Row>>;

/** Applies events to rows held in memory (replays, audits). Same definition as the SQL path. */
export function foldReadModel(state: ReadModelState, events: Iterable<KeyledgerEvent>): ReadModelState {
  for (const event of events) {
    const change = readModelChange(event);
    let rows = state.get(change.table.name);
    if (!rows) {
      rows = new Map();
      state.set(change.table.name, rows);
    }
    const key = keyOf(change.table, change.key);
    const next = change.next(rows.get(key));
    if (next === undefined) rows.delete(key);
    else rows.set(key, next);
  }
  return state;
}

const pkSelect = (table: ReadModelTable, alias: string) =>
  sql.join(table.primaryKey.map((column) => sql.ref(`${alias}.${column}`)));

/** `jsonb_populate_recordset(NULL::<table>, $rows)`: rows as JSON, typed by the table's own row type. */
const recordset = (table: ReadModelTable, rows: Row[]) =>
  sql`jsonb_populate_recordset(NULL::${sql.id(table.name)}, ${JSON.stringify(rows)}::jsonb)`;

/**
 * Applies events, in order, to the read model in `trx` — the inline path (a command's events) and rebuilds (pages
 * of the log) alike. Loads every row the events touch (locked), folds the events over them in memory with
 * `readModelChange`, then writes the rows that changed: deletes, then updates, then inserts, a statement each per
 * table. Unqualified table names: a rebuild points `search_path` at its shadow tables.
 */
export async function applyEventsToReadModel(trx: Kysely<unknown>, events: readonly KeyledgerEvent[]): Promise<void> {
  if (events.length === 0) return;
  const changes = events.map(readModelChange);
  const touched = new Map<ReadModelTable, Map<string, { key: Row; original: Row | undefined; current?: Row }>>();
  for (const change of changes) {
    let rows = touched.get(change.table);
    if (!rows) {
      rows = new Map();
      touched.set(change.table, rows);
    }
    const key = keyOf(change.table, change.key);
    if (!rows.has(key)) rows.set(key, { key: change.key, original: undefined });
  }
  for (const [table, rows] of touched) {
    const keys = [...rows.values()].map((r) => r.key);
    const loaded = await sql<Row>`
      SELECT t.* FROM ${sql.id(table.name)} AS t
       WHERE (${pkSelect(table, "t")}) IN (SELECT ${pkSelect(table, "k")} FROM ${recordset(table, keys)} AS k)
         FOR UPDATE OF t`.execute(trx);
    for (const row of loaded.rows) {
      const entry = rows.get(keyOf(table, row));
      if (entry) entry.original = row;
    }
    for (const entry of rows.values()) entry.current = entry.original;
  }
  for (const change of changes) {
    const entry = touched.get(change.table)?.get(keyOf(change.table, change.key));
    if (entry) entry.current = change.next(entry.current);
  }
  for (const [table, rows] of touched) {
    const deleted: Row[] = [];
    const updated: Row[] = [];
    const inserted: Row[] = [];
    for (const { key, original, current } of rows.values()) {
      if (current === original) continue;
      if (current === undefined) deleted.push(key);
      else if (original === undefined) inserted.push(current);
      else updated.push(current);
    }
    const pk = pkSelect(table, "t");
    if (deleted.length > 0) {
      await sql`DELETE FROM ${sql.id(table.name)} AS t
                 WHERE (${pk}) IN (SELECT ${pkSelect(table, "k")} FROM ${recordset(table, deleted)} AS k)`.execute(trx);
    }
    if (updated.length > 0) {
      const columns = columnsOf(updated).filter((c) => !table.primaryKey.includes(c));
      await sql`UPDATE ${sql.id(table.name)} AS t
                   SET ${sql.join(columns.map((c) => sql`${sql.id(c)} = ${sql.ref(`k.${c}`)}`))}
                  FROM ${recordset(table, updated)} AS k
                 WHERE ${sql.join(
                   table.primaryKey.map((c) => sql`${sql.ref(`t.${c}`)} = ${sql.ref(`k.${c}`)}`),
                   sql` AND `,
                 )}`.execute(trx);
    }
    if (inserted.length > 0) {
      const columns = columnsOf(inserted).map((c) => sql.id(c));
      await sql`INSERT INTO ${sql.id(table.name)} (${sql.join(columns)})
                SELECT ${sql.join(columns)} FROM ${recordset(table, inserted)} AS k`.execute(trx);
    }
  }
}

/**
 * The inline writes of events that only create rows (`createOnly`: e.g. `KeyCreated`), as statements to run
 * inside another statement (an append's CTEs): `INSERT ... ON CONFLICT (primary key) DO NOTHING`, which is exactly
 * what `next` does to a present row, with `next(undefined)` as the new row; `onlyIf` (an SQL condition) must hold.
 * `undefined` when some event changes existing rows: use `applyEventsToReadModel` in a transaction instead.
 */
export function createOnlyReadModelWrites(
  events: readonly KeyledgerEvent[],
  onlyIf: RawBuilder<unknown>,
): RawBuilder<unknown>[] | undefined {
  const changes = events.map(readModelChange);
  if (changes.some((change) => !change.createOnly)) return undefined;
  const rowsByTable = new Map<ReadModelTable, Row[]>();
  for (const change of changes) {
    const row = change.next(undefined);
    if (row === undefined) continue;
    const rows = rowsByTable.get(change.table) ?? [];
    rows.push(row);
    rowsByTable.set(change.table, rows);
  }
  return [...rowsByTable].map(([table, rows]) => {
    const columns = columnsOf(rows).map((c) => sql.id(c));
    return sql`INSERT INTO ${sql.id(table.name)} (${sql.join(columns)})
               SELECT ${sql.join(columns)} FROM ${recordset(table, rows)} AS k WHERE ${onlyIf}
               ON CONFLICT (${sql.join(table.primaryKey.map((c) => sql.id(c)))}) DO NOTHING`;
  });
}

function columnsOf(rows: Row[]): string[] {
  const columns = new Set<string>();
  for (const row of rows) for (const column of Object.keys(row)) columns.add(column);
  return [...columns];
}

/** Applies one event to the read model (the API's inline path). See `applyEventsToReadModel`. */
export function applyToReadModel(trx: Kysely<unknown>, event: KeyledgerEvent): Promise<void> {
  return applyEventsToReadModel(trx, [event]);
}
