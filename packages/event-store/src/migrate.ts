import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { type Kysely, sql } from "kysely";

export const DEFAULT_MIGRATIONS_DIR = fileURLToPath(new URL("../../../infra/migrations/", import.meta.url));

/** Arbitrary constant shared by every process that migrates, so concurrent starts apply each file once. */
const MIGRATION_LOCK_ID = 7_244_911_001;

export type MigrationResult = { applied: string[]; alreadyApplied: string[] };

/** Applies the plain SQL files of `dir` in name order, each once, each in its own transaction. */
// biome-ignore lint/suspicious/noExplicitAny: migrations run against any schema
export async function runMigrations(db: Kysely<any>, dir = DEFAULT_MIGRATIONS_DIR): Promise<MigrationResult> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".sql")).sort();
  const applied: string[] = [];
  const alreadyApplied: string[] = [];
  // Under the migration lock too: two `CREATE TABLE IF NOT EXISTS` racing on a fresh database both pass the check
  // and one fails on the catalog's unique index (`pg_type_typname_nsp_index`), so a replica started at the same
  // moment as another would not start.
  await db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_ID})`.execute(trx);
    await sql`CREATE TABLE IF NOT EXISTS schema_migrations (
      version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`.execute(trx);
  });
  for (const file of files) {
    const version = file.replace(/\.sql$/, "");
    const text = await readFile(`${dir}/${file}`, "utf8");
    const didApply = await db.transaction().execute(async (trx) => {
      await sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_ID})`.execute(trx);
      const done = await sql`SELECT 1 FROM schema_migrations WHERE version = ${version}`.execute(trx);
      if (done.rows.length > 0) return false;
      await sql.raw(text).execute(trx);
      await sql`INSERT INTO schema_migrations (version) VALUES (${version})`.execute(trx);
      return true;
    });
    (didApply ? applied : alreadyApplied).push(version);
  }
  return { applied, alreadyApplied };
}

/** Postgres's SQLSTATE for "relation does not exist". */
const UNDEFINED_TABLE = "42P01";

/**
 * Versions not yet applied; empty means the schema is current (used by readiness checks). Every version when the
 * database has no `schema_migrations` table yet; errors reaching the database are thrown.
 */
// biome-ignore lint/suspicious/noExplicitAny: migrations run against any schema
export async function pendingMigrations(db: Kysely<any>, dir = DEFAULT_MIGRATIONS_DIR): Promise<string[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".sql")).sort();
  // Only a missing `schema_migrations` (undefined_table) means "none applied"; anything else (an unreachable or
  // missing database, a refused login, a timeout) is not an answer about migrations, and is thrown.
  const result = await sql<{ version: string }>`SELECT version FROM schema_migrations`
    .execute(db)
    .catch((error: unknown) => {
      if ((error as { code?: unknown } | null)?.code === UNDEFINED_TABLE) return { rows: [] as { version: string }[] };
      throw error;
    });
  const done = new Set(result.rows.map((r) => r.version));
  return files.map((f) => f.replace(/\.sql$/, "")).filter((v) => !done.has(v));
}
