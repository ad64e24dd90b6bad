import { randomBytes } from "node:crypto";
import { runMigrations } from "@keyledger/event-store";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { onInterrupt } from "./cleanup";

/** The Postgres server the benchmarks use: `BENCH_DATABASE_URL`, else the local server as the tests use it. */
export function adminDatabaseUrl(env: Record<string, string | undefined>): string {
  return env.BENCH_DATABASE_URL ?? env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export function connect(url: string, maxConnections = 4): Kysely<unknown> {
  const pool = new pg.Pool({ connectionString: url, max: maxConnections });
  pool.on("error", () => {});
  return new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
}

export type BenchDatabase = {
  name: string;
  url: string;
  /** A small pool for seeding and checks from the runner. */
  db: Kysely<unknown>;
  drop(): Promise<void>;
};

/**
 * A fresh database `keyledger_bench_<random>` on the server, migrated with the project's migrations. `drop()` closes
 * the pool and drops it (FORCE: a child process that is still connected does not keep it alive).
 */
export async function createBenchDatabase(adminUrl: string, label: string): Promise<BenchDatabase> {
  const name = `keyledger_bench_${label}_${randomBytes(4).toString("hex")}`;
  const admin = connect(adminUrl, 1);
  try {
    await sql.raw(`CREATE DATABASE "${name}"`).execute(admin);
  } finally {
    await admin.destroy();
  }
  const url = withDatabase(adminUrl, name);
  const db = connect(url, 4);
  const dropDatabase = async () => {
    await db.destroy().catch(() => {});
    const again = connect(adminUrl, 1);
    try {
      await sql.raw(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).execute(again);
    } finally {
      await again.destroy();
    }
  };
  const unregister = onInterrupt(dropDatabase);
  await runMigrations(db);
  return {
    name,
    url,
    db,
    async drop() {
      unregister();
      await dropDatabase();
    },
  };
}

export async function serverVersion(adminUrl: string): Promise<string> {
  const admin = connect(adminUrl, 1);
  try {
    const result = await sql<{ server_version: string }>`SHOW server_version`.execute(admin);
    return result.rows[0]?.server_version ?? "unknown";
  } finally {
    await admin.destroy();
  }
}
