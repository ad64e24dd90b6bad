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

/**
 * A row's primary key as a map key. Columns are joined with NUL, which no Postgres text value can contain, so
 * distinct keys never collide.
 */
function keyOf(table: ReadModelTable, row: Row): string {
  const [first, ...rest] = table.primaryKey;
  let key = String(row[first as string]);
  for (const column of rest) key += `\u0000${String(row[column])}`;
  return key;
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

/**
 * Rows a caller knows the tables to hold, kept across transactions: a rebuild's shadow tables, which only the
 * process holding the rebuild's lock writes. `applyEventsToReadModel` reads rows from here instead of from the
 * table, and `stage`s the rows it writes; the caller `commit`s them once its transaction has committed (and drops
 * the whole object if it did not). When `complete` (it was started on empty tables and has seen every write since),
 * a key it does not hold is absent from the table; otherwise such a key is loaded. Past `maxRows` rows it forgets
 * them all and stops being complete, to bound memory.
 */
export class KnownRows {
  private readonly tables = new Map<string, Map<string, Row | null>>();
  private staged = new Map<string, Map<string, Row | null>>();
  private size = 0;

  constructor(
    public complete: boolean,
    private readonly maxRows = 250_000,
  ) {}

  /** The row (`undefined`: absent), or `UNKNOWN` when it has to be read from the table. */
  get(table: ReadModelTable, key: string): Row | undefined | typeof UNKNOWN {
    const row = this.tables.get(table.name)?.get(key);
    if (row === undefined) return this.complete ? undefined : UNKNOWN;
    return row ?? undefined;
  }

  /** Records what the open transaction writes (or read): visible to `get` only after `commit`. */
  stage(table: ReadModelTable, key: string, row: Row | undefined): void {
    let rows = this.staged.get(table.name);
    if (!rows) {
      rows = new Map();
      this.staged.set(table.name, rows);
    }
    rows.set(key, row ?? null);
  }

  /** The transaction that wrote the staged rows did not commit. */
  rollback(): void {
    this.staged.clear();
  }

  /** The transaction that wrote the staged rows has committed. */
  commit(): void {
    for (const [table, staged] of this.staged) {
      let rows = this.tables.get(table);
      if (!rows) {
        rows = new Map();
        this.tables.set(table, rows);
      }
      const before = rows.size;
      for (const [key, row] of staged) rows.set(key, row);
      this.size += rows.size - before;
    }
    this.staged.clear();
    if (this.size > this.maxRows) {
      this.tables.clear();
      this.size = 0;
      this.complete = false;
    }
  }
}

export const UNKNOWN: unique symbol = Symbol("unknown row");

type Touched = { key: Row; original: Row | undefined; current: Row | undefined };

/**
 * Per table name: the SQL types (`format_type`) of the columns this code reads and writes, looked up once per
 * process. Generated columns (e.g. `api_keys.list_item`) are left out: Postgres computes them from the others, and
 * naming one in an INSERT or UPDATE is an error.
 */
const columnTypes = new Map<string, Map<string, string>>();

async function typesOf(trx: Kysely<unknown>, table: ReadModelTable): Promise<Map<string, string>> {
  const known = columnTypes.get(table.name);
  if (known) return known;
  const result = await sql<{ name: string; type: string }>`
    SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute
     WHERE attrelid = ${table.name}::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''`.execute(trx);
  const types = new Map(result.rows.map((r) => [r.name, r.type]));
  columnTypes.set(table.name, types);
  return types;
}

/** A value as Postgres text input (arrays as array literals; `null` is NULL). */
function asText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return arrayLiteral(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

const NEEDS_ESCAPE = /["\\]/;

/** A Postgres array literal of `values` as text (each element quoted; `null` is NULL). */
function arrayLiteral(values: readonly unknown[]): string {
  let literal = "{";
  for (let i = 0; i < values.length; i++) {
    if (i > 0) literal += ",";
    const text = asText(values[i]);
    if (text === null) literal += "NULL";
    else if (NEEDS_ESCAPE.test(text)) literal += `"${text.replace(/["\\]/g, "\\$&")}"`;
    else literal += `"${text}"`;
  }
  return `${literal}}`;
}

/**
 * `unnest($1::text[], …) AS k(columns)`: the rows as one text array literal per column (a few parameters, however
 * many rows), and the columns of `k` cast to the table's types.
 */
function rowsAsTable(table: ReadModelTable, types: Map<string, string>, columns: string[], rows: Row[]) {
  const arrays = columns.map((column) => sql`${arrayLiteral(rows.map((row) => row[column]))}::text[]`);
  const unnest = sql`unnest(${sql.join(arrays)}) AS k(${sql.join(columns.map((c) => sql.id(c)))})`;
  const typed = (column: string) => {
    const type = types.get(column);
    if (type === undefined) throw new Error(`${table.name} has no column ${column}`);
    return sql`${sql.ref(`k.${column}`)}::${sql.raw(type)}`;
  };
  return { unnest, typed };
}

/**
 * Applies events, in order, to the read model in `trx` — the inline path (a command's events) and rebuilds (pages
 * of the log) alike. Loads every row the events touch (locked) that `known` does not hold, folds the events over
 * them in memory with `readModelChange`, then writes the rows that changed: deletes, then updates, then inserts, a
 * statement each per table. Unqualified table names: a rebuild points `search_path` at its shadow tables.
 */
export async function applyEventsToReadModel(
  trx: Kysely<unknown>,
  events: readonly KeyledgerEvent[],
  known?: KnownRows,
): Promise<void> {
  if (events.length === 0) return;
  const changes = events.map(readModelChange);
  const keys: string[] = new Array(changes.length);
  const touched = new Map<ReadModelTable, Map<string, Touched>>();
  const unknown = new Map<ReadModelTable, Touched[]>();
  for (let i = 0; i < changes.length; i++) {
    const change = changes[i] as RowChange;
    let rows = touched.get(change.table);
    if (!rows) {
      rows = new Map();
      touched.set(change.table, rows);
    }
    const key = keyOf(change.table, change.key);
    keys[i] = key;
    if (rows.has(key)) continue;
    const row = known ? known.get(change.table, key) : UNKNOWN;
    const entry: Touched = { key: change.key, original: undefined, current: undefined };
    if (row === UNKNOWN) {
      let list = unknown.get(change.table);
      if (!list) {
        list = [];
        unknown.set(change.table, list);
      }
      list.push(entry);
    } else {
      entry.original = row;
      entry.current = row;
    }
    rows.set(key, entry);
  }
  for (const [table, entries] of unknown) {
    const types = await typesOf(trx, table);
    const pk = [...table.primaryKey];
    const k = rowsAsTable(
      table,
      types,
      pk,
      entries.map((e) => e.key),
    );
    const loaded = await sql<Row>`
      SELECT ${sql.join([...types.keys()].map((column) => sql.ref(`t.${column}`)))} FROM ${sql.id(table.name)} AS t
       WHERE (${pkSelect(table, "t")}) IN (SELECT ${sql.join(pk.map(k.typed))} FROM ${k.unnest})
         FOR UPDATE OF t`.execute(trx);
    const rows = touched.get(table) as Map<string, Touched>;
    for (const row of loaded.rows) {
      const entry = rows.get(keyOf(table, row));
      if (entry) {
        entry.original = row;
        entry.current = row;
      }
    }
  }
  for (let i = 0; i < changes.length; i++) {
    const change = changes[i] as RowChange;
    const entry = touched.get(change.table)?.get(keys[i] as string) as Touched;
    entry.current = change.next(entry.current);
  }
  for (const [table, rows] of touched) {
    const deleted: Row[] = [];
    const updated: Row[] = [];
    const inserted: Row[] = [];
    // Columns to set: those whose value is not the very same object as the loaded row's in some updated row (a
    // change copies the row and replaces what it changes).
    const changed = new Set<string>(table.primaryKey);
    for (const [key, { key: pkValues, original, current }] of rows) {
      known?.stage(table, key, current);
      if (current === original) continue;
      if (current === undefined) deleted.push(pkValues);
      else if (original === undefined) inserted.push(current);
      else {
        updated.push(current);
        for (const column in current) if (current[column] !== original[column]) changed.add(column);
      }
    }
    if (deleted.length + updated.length + inserted.length === 0) continue;
    const types = await typesOf(trx, table);
    const pk = [...table.primaryKey];
    if (deleted.length > 0) {
      const k = rowsAsTable(table, types, pk, deleted);
      await sql`DELETE FROM ${sql.id(table.name)} AS t
                 WHERE (${pkSelect(table, "t")}) IN (SELECT ${sql.join(pk.map(k.typed))} FROM ${k.unnest})`.execute(
        trx,
      );
    }
    if (updated.length > 0) {
      const columns = [...changed];
      const k = rowsAsTable(table, types, columns, updated);
      await sql`UPDATE ${sql.id(table.name)} AS t
                   SET ${sql.join(
                     columns.filter((c) => !table.primaryKey.includes(c)).map((c) => sql`${sql.id(c)} = ${k.typed(c)}`),
                   )}
                  FROM ${k.unnest}
                 WHERE ${sql.join(
                   pk.map((c) => sql`${sql.ref(`t.${c}`)} = ${k.typed(c)}`),
                   sql` AND `,
                 )}`.execute(trx);
    }
    if (inserted.length > 0) {
      const columns = columnsOf(inserted);
      const k = rowsAsTable(table, types, columns, inserted);
      await sql`INSERT INTO ${sql.id(table.name)} (${sql.join(columns.map((c) => sql.id(c)))})
                SELECT ${sql.join(columns.map(k.typed))} FROM ${k.unnest}`.execute(trx);
    }
  }
}

/** `jsonb_populate_recordset(NULL::<table>, $rows)`: rows as JSON, typed by the table's own row type. */
const recordset = (table: ReadModelTable, rows: Row[]) =>
  sql`jsonb_populate_recordset(NULL::${sql.id(table.name)}, ${JSON.stringify(rows)}::jsonb)`;

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

/**
 * The inline write of `KeyUsed` events appended in the same statement (`appended`: rows with the log's columns, e.g.
 * the append's CTE; at most one `KeyUsed` per key): what `readModelChange` does with each — a later `usedAt` moves
 * the key's `last_used_at`, an absent key or an earlier use changes nothing — as one UPDATE. Rows of other event
 * types are left alone.
 */
export function keyUsedReadModelWrite(appended: RawBuilder<unknown>): RawBuilder<unknown> {
  return sql`UPDATE api_keys AS t SET last_used_at = (a.data->>'usedAt')::timestamptz
               FROM ${appended} AS a
              WHERE a.event_type = 'KeyUsed' AND t.key_id = (a.data->>'keyId')::uuid
                AND (t.last_used_at IS NULL OR t.last_used_at < (a.data->>'usedAt')::timestamptz)`;
}

const pkSelect = (table: ReadModelTable, alias: string) =>
  sql.join(table.primaryKey.map((column) => sql.ref(`${alias}.${column}`)));

function columnsOf(rows: Row[]): string[] {
  const columns = new Set<string>();
  for (const row of rows) for (const column of Object.keys(row)) columns.add(column);
  return [...columns];
}

/** Applies one event to the read model (the API's inline path). See `applyEventsToReadModel`. */
export function applyToReadModel(trx: Kysely<unknown>, event: KeyledgerEvent): Promise<void> {
  return applyEventsToReadModel(trx, [event]);
}
