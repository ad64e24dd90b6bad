import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";

// Positions and transaction ids are bigint/xid8: keep them as strings, never as lossy numbers.
export type DatabaseOptions = { connectionString: string; maxConnections?: number; statementTimeoutMs?: number };

/** A Kysely instance over a pg pool. The event store and read model take any Kysely, so PGlite fits too. */
export function createPostgresDatabase(options: DatabaseOptions): Kysely<unknown> {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.maxConnections ?? 20,
    connectionTimeoutMillis: 5_000,
    statement_timeout: options.statementTimeoutMs ?? 10_000,
    idle_in_transaction_session_timeout: 30_000,
  });
  // An idle client losing its connection must not crash the process; the next query reconnects.
  pool.on("error", () => {});
  return new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
}
