import { createPostgresDatabase } from "@keyledger/api";
import { pendingMigrations } from "@keyledger/event-store";
import type { Kysely } from "kysely";
import { UsageError } from "../command";
import { openStore } from "../store";

/**
 * Opens the command's database (as `openStore`, but Postgres without the API's request timeouts: a rebuild or a
 * verification of a large log runs for minutes) and refuses, in one line, one whose schema is behind.
 */
export async function openMigratedStore(
  env: Record<string, string | undefined>,
  maxConnections = 2,
): Promise<Kysely<unknown>> {
  const db = env.DATABASE_URL
    ? createPostgresDatabase({ connectionString: env.DATABASE_URL, maxConnections, statementTimeoutMs: 86_400_000 })
    : await openStore(env, maxConnections);
  const pending = await pendingMigrations(db);
  if (pending.length > 0) {
    await db.destroy();
    throw new Error(`the database has pending migrations (${pending.join(", ")}): run pnpm keyledger migrate first`);
  }
  return db;
}

export function requiredFlag(flags: Record<string, string>, name: string): string {
  const value = flags[name];
  if (value === undefined || value === "true" || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

export function positionFlag(flags: Record<string, string>, name: string): string | undefined {
  const value = flags[name];
  if (value === undefined) return undefined;
  if (!/^[1-9]\d{0,18}$/.test(value)) throw new UsageError(`--${name} must be a log position (a positive integer)`);
  return value;
}
