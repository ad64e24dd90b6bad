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
  let pending: string[];
  try {
    pending = await pendingMigrations(db);
  } catch (error) {
    await db.destroy().catch(() => {});
    throw new Error(`cannot read ${databaseName(env)}: ${errorText(error)}`);
  }
  if (pending.length > 0) {
    await db.destroy();
    throw new Error(`the database has pending migrations (${pending.join(", ")}): run pnpm keyledger migrate first`);
  }
  return db;
}

/** Which database a command opened, for messages: DATABASE_URL's host, port and name (never its credentials). */
function databaseName(env: Record<string, string | undefined>): string {
  if (!env.DATABASE_URL) return `the embedded database in ${env.KEYLEDGER_DATA_DIR || ".keyledger"}`;
  try {
    const url = new URL(env.DATABASE_URL);
    return `the database at ${url.host}${url.pathname} (DATABASE_URL)`;
  } catch {
    return "the database of DATABASE_URL";
  }
}

/** An error's message; a connection error's code when it has no message (node's AggregateError for ::1 and 127.0.0.1). */
function errorText(error: unknown): string {
  const { message, code } = (error ?? {}) as { message?: unknown; code?: unknown };
  if (typeof message === "string" && message !== "") return message;
  return typeof code === "string" ? code : String(error);
}

export function requiredFlag(flags: Record<string, string>, name: string): string {
  const value = flags[name];
  if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

const MAX_POSITION = 9_223_372_036_854_775_807n;

export function positionFlag(flags: Record<string, string>, name: string): string | undefined {
  const value = flags[name];
  if (value === undefined) return undefined;
  // Positions are Postgres bigints: a 19-digit number past 2^63 - 1 is no position, not a database error.
  if (!/^[1-9]\d{0,18}$/.test(value) || BigInt(value) > MAX_POSITION) {
    throw new UsageError(`--${name} must be a log position (a positive integer up to ${MAX_POSITION})`);
  }
  return value;
}
