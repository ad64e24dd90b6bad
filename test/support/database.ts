import { randomBytes } from "node:crypto";
import { runMigrations } from "@keyledger/event-store";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { inject } from "vitest";
import { withDatabase } from "./global-setup";

/** A Kysely over a pg pool for `url`. Positions and xids come back as strings (pg's default for int8/xid8). */
export function connect(url: string, maxConnections = 10): Kysely<unknown> {
  const pool = new pg.Pool({ connectionString: url, max: maxConnections });
  pool.on("error", () => {});
  return new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
}

/** The run's shared, migrated test database (the one the API harness uses). */
export function connectTestDatabase(maxConnections = 10): Kysely<unknown> {
  return connect(inject("databaseUrl"), maxConnections);
}

export type ScratchDatabase = { db: Kysely<unknown>; url: string; drop(): Promise<void> };

/**
 * A fresh, migrated database of its own, for tests that read the whole log and must not see other tests' events.
 * `drop()` closes the pool and drops it.
 */
export async function createScratchDatabase(maxConnections = 10): Promise<ScratchDatabase> {
  const admin = connect(inject("adminDatabaseUrl"), 1);
  const name = `keyledger_scratch_${Date.now()}_${randomBytes(4).toString("hex")}`;
  await sql.raw(`CREATE DATABASE "${name}"`).execute(admin);
  const url = withDatabase(inject("adminDatabaseUrl"), name);
  const db = connect(url, maxConnections);
  await runMigrations(db);
  return {
    db,
    url,
    async drop() {
      await db.destroy();
      await sql.raw(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).execute(admin);
      await admin.destroy();
    },
  };
}

/** Number of rows in `events` whose stream id starts with `prefix` (all rows when omitted). */
export async function countEvents(db: Kysely<unknown>, prefix?: string): Promise<number> {
  const result =
    prefix === undefined
      ? await sql<{ n: string }>`SELECT count(*) AS n FROM events`.execute(db)
      : await sql<{ n: string }>`SELECT count(*) AS n FROM events WHERE starts_with(stream_id, ${prefix})`.execute(db);
  return Number(result.rows[0]?.n ?? 0);
}

export type StoredEvent = {
  global_position: string;
  transaction_id: string;
  stream_id: string;
  stream_version: number;
  event_type: string;
  data: Record<string, unknown>;
  metadata: Record<string, unknown>;
};

/** Every event about `organizationId` (each event type carries it in its data), in log order. */
export async function eventsOfOrganization(db: Kysely<unknown>, organizationId: string): Promise<StoredEvent[]> {
  const result = await sql<StoredEvent>`
    SELECT global_position, transaction_id, stream_id, stream_version, event_type, data, metadata
      FROM events WHERE data->>'organizationId' = ${organizationId} ORDER BY global_position`.execute(db);
  return result.rows;
}

/** Events whose data or metadata text contains `needle` anywhere. */
export async function eventsContaining(db: Kysely<unknown>, needle: string): Promise<StoredEvent[]> {
  const result = await sql<StoredEvent>`
    SELECT global_position, transaction_id, stream_id, stream_version, event_type, data, metadata
      FROM events WHERE strpos(data::text, ${needle}) > 0 OR strpos(metadata::text, ${needle}) > 0`.execute(db);
  return result.rows;
}
