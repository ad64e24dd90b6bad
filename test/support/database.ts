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
