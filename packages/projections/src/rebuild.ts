import { EVENT_TYPES, type KeyledgerEvent } from "@keyledger/domain";
import { type Kysely, sql } from "kysely";
import type { ProjectionDefinition } from "./projection-registry";
import { KnownRows } from "./read-model-projection";

/** Schema holding the shadow tables of projections being rebuilt (infra/migrations/0005). */
export const SHADOW_SCHEMA = "projection_rebuild";

export type ProjectionStatus = {
  name: string;
  status: "live" | "rebuilding";
  /** Live: the latest snapshot whose committed events it reflects. Rebuilding: the tier being applied. */
  snapshot: string | null;
  previousSnapshot: string | null;
  /** Rebuilding: the last global position applied within the current tier. */
  position: string;
  /** Events applied by the current (or, when live, the last) rebuild. */
  eventsApplied: number;
  rebuildStartedAt: Date | null;
  rebuiltAt: Date | null;
};

type StateRow = {
  name: string;
  status: "live" | "rebuilding";
  snapshot: string | null;
  previous_snapshot: string | null;
  position: string;
  events_applied: string;
  rebuild_started_at: Date | null;
  rebuilt_at: Date | null;
  /** `rebuild_started_at` to the microsecond: tells one rebuild from the next. */
  started: string | null;
};

function toStatus(row: StateRow): ProjectionStatus {
  return {
    name: row.name,
    status: row.status,
    snapshot: row.snapshot,
    previousSnapshot: row.previous_snapshot,
    position: String(row.position),
    eventsApplied: Number(row.events_applied),
    rebuildStartedAt: row.rebuild_started_at,
    rebuiltAt: row.rebuilt_at,
  };
}

const STATE_COLUMNS = sql`name, status, snapshot::text AS snapshot, previous_snapshot::text AS previous_snapshot,
  position::text AS position, events_applied::text AS events_applied, rebuild_started_at, rebuilt_at,
  rebuild_started_at::text AS started`;

/** A rebuild's progress as committed: changes whenever any process applies a batch, moves to a tier or restarts. */
const progressOf = (row: StateRow) =>
  `${row.started}|${row.snapshot}|${row.previous_snapshot}|${row.position}|${row.events_applied}`;

export async function loadProjectionStatus(db: Kysely<unknown>, name: string): Promise<ProjectionStatus | undefined> {
  const result = await sql<StateRow>`SELECT ${STATE_COLUMNS} FROM projection_state WHERE name = ${name}`.execute(db);
  return result.rows[0] ? toStatus(result.rows[0]) : undefined;
}

/** Records that a live, inline projection reflects every event committed as of now (the projector's checkpoint). */
export async function markProjectionCurrent(db: Kysely<unknown>, name: string): Promise<void> {
  await sql`
    INSERT INTO projection_state (name, status, snapshot) VALUES (${name}, 'live', pg_current_snapshot())
    ON CONFLICT (name) DO UPDATE SET snapshot = EXCLUDED.snapshot, updated_at = now()
     WHERE projection_state.status = 'live'`.execute(db);
}

/** One advisory lock per projection: one rebuild batch (or swap, or restart) at a time, across processes. */
const lockKey = (name: string) => sql`hashtextextended(${`keyledger.projection.${name}`}, 0)`;

const shadow = (table: string) => sql`${sql.id(SHADOW_SCHEMA)}.${sql.id(table)}`;

async function liveSchema(trx: Kysely<unknown>): Promise<string> {
  const result = await sql<{ schema: string }>`SELECT current_schema() AS schema`.execute(trx);
  return result.rows[0]?.schema ?? "public";
}

/**
 * Starts (or restarts) a rebuild: empty shadow tables shaped like the live ones (columns, defaults, checks and
 * primary key; no secondary indexes, they are checked when the rows are copied into the live tables) and a first
 * tier of everything committed as of now.
 */
export async function requestRebuild(db: Kysely<unknown>, projection: ProjectionDefinition): Promise<void> {
  await db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(${lockKey(projection.name)})`.execute(trx);
    const schema = await liveSchema(trx);
    for (const table of projection.tables) {
      const live = sql`${sql.id(schema)}.${sql.id(table)}`;
      await sql`DROP TABLE IF EXISTS ${shadow(table)}`.execute(trx);
      await sql`CREATE TABLE ${shadow(table)}
                  (LIKE ${live} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)`.execute(trx);
      const pk = await sql<{ definition: string }>`
        SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint
         WHERE conrelid = ${`${schema}.${table}`}::regclass AND contype = 'p'`.execute(trx);
      if (pk.rows[0]) await sql`ALTER TABLE ${shadow(table)} ADD ${sql.raw(pk.rows[0].definition)}`.execute(trx);
    }
    await sql`
      INSERT INTO projection_state (name, status, snapshot, previous_snapshot, position, events_applied,
                                    rebuild_started_at, updated_at)
      VALUES (${projection.name}, 'rebuilding', pg_current_snapshot(), NULL, 0, 0, now(), now())
      ON CONFLICT (name) DO UPDATE
        SET status = 'rebuilding', snapshot = EXCLUDED.snapshot, previous_snapshot = NULL, position = 0,
            events_applied = 0, rebuild_started_at = now(), updated_at = now()`.execute(trx);
  });
}

/** Shaped like an event (`type`, `data`), so that a page is passed on as it was read. */
type TierRow = { type: string; data: unknown; global_position: string };

const PROJECTED_TYPES: ReadonlySet<string> = new Set(EVENT_TYPES);

/**
 * A page of one tier: events visible in `snapshot` but not in `previous` (all of `snapshot` when there is none),
 * after `position`, in global-position order. Tiers partition the committed log by the first snapshot that saw
 * them, so no event is skipped, and within a tier global-position order keeps every stream's version order
 * (a stream's next version is inserted only after its previous one committed). The log's commit-safe
 * (transaction id, position) order does not: a command that took its transaction id early (a row lock) can commit
 * a stream's version n+1 with a lower transaction id than version n.
 */
async function readTierPage(trx: Kysely<unknown>, tier: Tier, limit: number): Promise<TierRow[]> {
  const newer =
    tier.previous === null
      ? sql``
      : sql`AND transaction_id >= pg_snapshot_xmin(${tier.previous}::pg_snapshot)
            AND NOT pg_visible_in_snapshot(transaction_id, ${tier.previous}::pg_snapshot)`;
  const result = await sql<TierRow>`
    SELECT event_type AS type, data, global_position::text AS global_position
      FROM events e
     WHERE global_position > ${tier.position}::bigint
       AND transaction_id < pg_snapshot_xmax(${tier.snapshot}::pg_snapshot)
       AND pg_visible_in_snapshot(transaction_id, ${tier.snapshot}::pg_snapshot)
       ${newer}
     ORDER BY e.global_position
     LIMIT ${limit}`.execute(trx);
  return result.rows;
}

function projected(rows: TierRow[]): KeyledgerEvent[] {
  const all = rows.every((row) => PROJECTED_TYPES.has(row.type));
  return (all ? rows : rows.filter((row) => PROJECTED_TYPES.has(row.type))) as unknown as KeyledgerEvent[];
}

async function currentSnapshot(trx: Kysely<unknown>): Promise<string> {
  const result = await sql<{ snapshot: string }>`SELECT pg_current_snapshot()::text AS snapshot`.execute(trx);
  return (result.rows[0] as { snapshot: string }).snapshot;
}

type Tier = { snapshot: string; previous: string | null; position: string };

/** A page read ahead of its batch (a tier's pages never change: they are defined by fixed snapshots). */
export type PrefetchedPage = Promise<{ tier: Tier; rows: TierRow[] } | undefined>;

/** What one step of a rebuild hands to the next step in the same process. */
export type RebuildCarry = {
  /** The next page, read on another connection while this step applied its own. */
  next?: PrefetchedPage;
  /**
   * The shadow rows as this process committed them, so that the next step need not read them back. Only valid while
   * the committed progress is still `progress`: if another process applied a batch meanwhile, it is dropped.
   */
  known?: { progress: string; rows: KnownRows };
};

export type RebuildStepResult =
  | { kind: "applied"; events: number; carry: RebuildCarry }
  | { kind: "next-tier"; carry: RebuildCarry }
  | { kind: "swapped"; events: number; eventsApplied: number }
  | { kind: "busy" }
  | { kind: "idle" };

export type RebuildOptions = {
  /** Events per transaction. */
  batchSize?: number;
  /** The swap is done once at most this many events remain to catch up; more starts another tier first. */
  swapThreshold?: number;
  /** How long the swap waits for the live tables' locks before giving up for now. */
  lockTimeoutMs?: number;
  /** At most this many shadow rows are kept in memory between batches (more are read back from the tables). */
  knownRows?: number;
};

const sameTier = (a: Tier, b: Tier) =>
  a.snapshot === b.snapshot && a.previous === b.previous && a.position === b.position;

/**
 * One transaction of a rebuild: applies the next page of the current tier to the shadow tables and stores the
 * progress with it; when the tier is done, starts the next tier, or — if little is left — swaps: locks the live
 * tables (writers wait), applies what committed since, replaces the live rows with the shadow's and marks the
 * projection live. Killing the process at any point loses at most the open transaction; calling this again
 * continues. Another process holding the projection's lock makes it return `busy`. Pass the previous step's
 * `carry` (same process) to skip reading back rows and pages it already has.
 */
export async function rebuildStep(
  db: Kysely<unknown>,
  projection: ProjectionDefinition,
  options: RebuildOptions & { carry?: RebuildCarry } = {},
): Promise<RebuildStepResult> {
  const batchSize = options.batchSize ?? 5000;
  const swapThreshold = options.swapThreshold ?? batchSize;
  let result: RebuildStepResult;
  try {
    result = await db.transaction().execute(async (trx): Promise<RebuildStepResult> => {
      // A batch lost to a crash is redone from the progress committed with it: no need to wait for the WAL flush.
      // The shadow tables are not analyzed while they fill, and the batch's row writes are keyed on their primary
      // key: without hash and merge joins the planner probes it rather than scanning the growing table per batch.
      // search_path points at the shadow tables, so the projection's unqualified SQL writes them (the log and
      // projection_state are only in the live schema).
      const settings = await sql<{ locked: boolean; schema: string }>`
        SELECT s.schema, pg_try_advisory_xact_lock(${lockKey(projection.name)}) AS locked,
               set_config('statement_timeout', '0', true), set_config('synchronous_commit', 'off', true),
               set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
               set_config('search_path', ${`${SHADOW_SCHEMA}, `} || quote_ident(s.schema), true)
          FROM (SELECT coalesce(current_schema(), 'public') AS schema OFFSET 0) AS s`.execute(trx);
      if (!settings.rows[0]?.locked) return { kind: "busy" };
      const schema = settings.rows[0].schema;
      const state = await sql<StateRow>`
        SELECT ${STATE_COLUMNS} FROM projection_state WHERE name = ${projection.name} FOR UPDATE`.execute(trx);
      const row = state.rows[0];
      if (row?.status !== "rebuilding" || row.snapshot === null) return { kind: "idle" };
      const tier = { snapshot: row.snapshot, previous: row.previous_snapshot, position: String(row.position) };
      const carried = options.carry?.known;
      let known: KnownRows;
      if (carried && carried.progress === progressOf(row)) {
        known = carried.rows;
        known.rollback();
      } else {
        // Nothing applied yet: the shadow tables are empty, so every row they will hold goes through `known`.
        const empty = row.events_applied === "0" && row.previous_snapshot === null;
        known = new KnownRows(empty, options.knownRows);
      }

      const ahead = await options.carry?.next?.catch(() => undefined);
      const page = ahead && sameTier(ahead.tier, tier) ? ahead.rows : await readTierPage(trx, tier, batchSize);
      if (page.length > 0) {
        // Read the next page on another connection while this one is applied (reading is a third of the work).
        const nextTier = { ...tier, position: (page[page.length - 1] as TierRow).global_position };
        const next: PrefetchedPage | undefined =
          page.length === batchSize
            ? readTierPage(db, nextTier, batchSize).then(
                (rows) => ({ tier: nextTier, rows }),
                () => undefined,
              )
            : undefined;
        await projection.apply(trx, projected(page), known);
        const progress = await sql<StateRow>`
          UPDATE projection_state
             SET position = ${(page[page.length - 1] as TierRow).global_position}::bigint,
                 events_applied = events_applied + ${page.length}, updated_at = now()
           WHERE name = ${projection.name}
          RETURNING ${STATE_COLUMNS}`.execute(trx);
        return {
          kind: "applied",
          events: page.length,
          carry: { next, known: { progress: progressOf(progress.rows[0] as StateRow), rows: known } },
        };
      }

      const now = await currentSnapshot(trx);
      const pending = await readTierPage(
        trx,
        { snapshot: now, previous: tier.snapshot, position: "0" },
        swapThreshold + 1,
      );
      if (pending.length > swapThreshold) {
        const progress = await sql<StateRow>`
          UPDATE projection_state
             SET previous_snapshot = snapshot, snapshot = ${now}::pg_snapshot, position = 0, updated_at = now()
           WHERE name = ${projection.name}
          RETURNING ${STATE_COLUMNS}`.execute(trx);
        return {
          kind: "next-tier",
          carry: { known: { progress: progressOf(progress.rows[0] as StateRow), rows: known } },
        };
      }
      return swap(trx, projection, schema, tier, Number(row.events_applied), batchSize, known, options);
    });
  } catch (error) {
    if ((error as { code?: string }).code === "55P03") return { kind: "busy" }; // lock_timeout on the live tables
    throw error;
  }
  // Committed: what the step wrote to the shadow tables is now what they hold.
  if (result.kind === "applied" || result.kind === "next-tier") result.carry.known?.rows.commit();
  return result;
}

async function swap(
  trx: Kysely<unknown>,
  projection: ProjectionDefinition,
  schema: string,
  tier: Tier,
  eventsBefore: number,
  batchSize: number,
  known: KnownRows,
  options: RebuildOptions,
): Promise<RebuildStepResult> {
  await sql`SELECT set_config('lock_timeout', ${`${options.lockTimeoutMs ?? 3000}ms`}, true)`.execute(trx);
  const tables = projection.tables.map((table) => sql`${sql.id(schema)}.${sql.id(table)}`);
  await sql`LOCK TABLE ${sql.join(tables)} IN ACCESS EXCLUSIVE MODE`.execute(trx);
  await sql`SET LOCAL lock_timeout = 0`.execute(trx);
  // Writers of this projection now wait; every event committed so far is visible in `final`.
  const final = await currentSnapshot(trx);
  let current = tier;
  let caughtUp = 0;
  for (;;) {
    const page = await readTierPage(trx, current, batchSize);
    if (page.length > 0) {
      await projection.apply(trx, projected(page), known);
      caughtUp += page.length;
      current = { ...current, position: (page[page.length - 1] as TierRow).global_position };
      continue;
    }
    if (current.snapshot === final) break;
    current = { snapshot: final, previous: current.snapshot, position: "0" };
  }
  await sql`SELECT set_config('search_path', ${schema}, true)`.execute(trx);
  for (const table of projection.tables) {
    const live = sql`${sql.id(schema)}.${sql.id(table)}`;
    const columns = await sql<{ column_name: string }>`
      SELECT column_name FROM information_schema.columns
       WHERE table_schema = ${SHADOW_SCHEMA} AND table_name = ${table} AND is_generated = 'NEVER'
       ORDER BY ordinal_position`.execute(trx);
    const list = sql.join(columns.rows.map((c) => sql.id(c.column_name)));
    // Loading the rows into an empty table and then building each index (one sort) takes about half as long as
    // inserting every row into every index; nothing else sees the table meanwhile (ACCESS EXCLUSIVE). Kept: the
    // indexes of constraints a foreign key refers to.
    const constraints = await sql<{ name: string; definition: string }>`
      SELECT c.conname AS name, pg_get_constraintdef(c.oid) AS definition FROM pg_constraint c
       WHERE c.conrelid = ${`${schema}.${table}`}::regclass AND c.contype IN ('p', 'u', 'x')
         AND NOT EXISTS (SELECT FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid)
       ORDER BY c.contype, c.conname`.execute(trx);
    const indexes = await sql<{ name: string; definition: string }>`
      SELECT r.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class r ON r.oid = i.indexrelid
       WHERE i.indrelid = ${`${schema}.${table}`}::regclass
         AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
       ORDER BY r.relname`.execute(trx);
    await sql`TRUNCATE ${live}`.execute(trx);
    for (const index of indexes.rows) await sql`DROP INDEX ${sql.id(schema)}.${sql.id(index.name)}`.execute(trx);
    for (const constraint of constraints.rows) {
      await sql`ALTER TABLE ${live} DROP CONSTRAINT ${sql.id(constraint.name)}`.execute(trx);
    }
    await sql`INSERT INTO ${live} (${list}) SELECT ${list} FROM ${shadow(table)}`.execute(trx);
    await sql`DROP TABLE ${shadow(table)}`.execute(trx);
    for (const constraint of constraints.rows) {
      await sql`ALTER TABLE ${live} ADD CONSTRAINT ${sql.id(constraint.name)} ${sql.raw(constraint.definition)}`.execute(
        trx,
      );
    }
    for (const index of indexes.rows) await sql.raw(index.definition).execute(trx);
  }
  await sql`
    UPDATE projection_state
       SET status = 'live', snapshot = ${final}::pg_snapshot, previous_snapshot = NULL, position = 0,
           events_applied = events_applied + ${caughtUp}, rebuilt_at = now(), updated_at = now()
     WHERE name = ${projection.name}`.execute(trx);
  return { kind: "swapped", events: caughtUp, eventsApplied: eventsBefore + caughtUp };
}

export type RebuildStats = {
  projection: string;
  events: number;
  durationMs: number;
  eventsPerSecond: number;
  rows: Record<string, number>;
};

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Continues a requested rebuild until it is swapped in (waiting while another process holds a batch).
 * `onProgress` gets the events applied so far.
 */
export async function continueRebuild(
  db: Kysely<unknown>,
  projection: ProjectionDefinition,
  options: RebuildOptions & { onProgress?: (eventsApplied: number) => void } = {},
): Promise<{ eventsApplied: number }> {
  let applied = 0;
  let carry: RebuildCarry | undefined;
  for (;;) {
    const step = await rebuildStep(db, projection, { ...options, carry });
    carry = step.kind === "applied" || step.kind === "next-tier" ? step.carry : undefined;
    switch (step.kind) {
      case "applied":
        applied += step.events;
        options.onProgress?.(applied);
        break;
      case "next-tier":
        break;
      case "busy":
        await pause(25);
        break;
      case "swapped":
        return { eventsApplied: step.eventsApplied };
      case "idle": {
        const status = await loadProjectionStatus(db, projection.name);
        return { eventsApplied: status?.eventsApplied ?? applied };
      }
    }
  }
}

/** Truncates and rebuilds a projection from the log (`pnpm keyledger rebuild`); the API keeps serving meanwhile. */
export async function rebuildProjection(
  db: Kysely<unknown>,
  projection: ProjectionDefinition,
  options: RebuildOptions & { onProgress?: (eventsApplied: number) => void } = {},
): Promise<RebuildStats> {
  const started = performance.now();
  await requestRebuild(db, projection);
  const { eventsApplied } = await continueRebuild(db, projection, options);
  const durationMs = performance.now() - started;
  const rows: Record<string, number> = {};
  for (const table of projection.tables) {
    const count = await sql<{ n: string }>`SELECT count(*)::text AS n FROM ${sql.id(table)}`.execute(db);
    rows[table] = Number(count.rows[0]?.n ?? 0);
  }
  return {
    projection: projection.name,
    events: eventsApplied,
    durationMs,
    eventsPerSecond: durationMs > 0 ? Math.round((eventsApplied * 1000) / durationMs) : 0,
    rows,
  };
}
