import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";

// Positions and transaction ids are bigint/xid8: keep them as strings, never as lossy numbers.
export type DatabaseOptions = { connectionString: string; maxConnections?: number; statementTimeoutMs?: number };

/** A Kysely instance over a pg pool. The event store and read model take any Kysely, so PGlite fits too. */
export function createPostgresDatabase(options: DatabaseOptions): Kysely<unknown> {
  const statementTimeoutMs = options.statementTimeoutMs ?? 10_000;
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.maxConnections ?? 20,
    connectionTimeoutMillis: 5_000,
    statement_timeout: statementTimeoutMs,
    // The server's statement_timeout cannot fire when the network, not the query, is stuck (a partition): the
    // client gives up a little later on its own, so a request fails (503) instead of hanging.
    query_timeout: statementTimeoutMs + 2_000,
    keepAlive: true,
    // A transaction left open by a client that went away (a partition) holds back every reader of the whole log
    // (they read below the server's oldest running transaction): the server ends it about as soon as a statement.
    idle_in_transaction_session_timeout: Math.max(statementTimeoutMs, 5_000),
  });
  // An idle client losing its connection must not crash the process; the next query reconnects.
  pool.on("error", () => {});
  // A client that loses its connection while checked out (mid-request) emits 'error' as well, where the pool no
  // longer listens: unheard, that event would crash the process. Its query rejects (503) and the pool drops it.
  pool.on("connect", (client) => {
    client.on("error", () => {});
  });
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  pools.set(db, pool);
  return db;
}

const pools = new WeakMap<Kysely<unknown>, pg.Pool>();

/**
 * Runs a read whose text never changes as a named prepared statement on Postgres (each pooled connection parses
 * and plans it once, then only executes it: planning is a large part of a short query), or through Kysely on any
 * other database (PGlite). The statement must keep its result type: select explicit columns, never `*`, so a
 * migration that adds a column cannot invalidate it.
 */
export async function queryPrepared<R>(
  db: Kysely<unknown>,
  name: string,
  query: { compile(db: Kysely<unknown>): { sql: string; parameters: readonly unknown[] } },
): Promise<R[]> {
  const compiled = query.compile(db);
  const pool = pools.get(db);
  if (pool === undefined) {
    return (await db.executeQuery<R>(compiled as Parameters<Kysely<unknown>["executeQuery"]>[0])).rows;
  }
  const result = await pool.query<R & pg.QueryResultRow>({
    name,
    text: compiled.sql,
    values: compiled.parameters as unknown[],
  });
  return result.rows;
}
