import { createHash } from "node:crypto";
import { PREPARED_STATEMENT } from "@keyledger/event-store";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";

// Positions and transaction ids are bigint/xid8: keep them as strings, never as lossy numbers.
export type DatabaseOptions = {
  connectionString: string;
  maxConnections?: number;
  /** Default 10 s; 0: no limit, neither the server's nor the client's (migrations: `migrationDatabase`). */
  statementTimeoutMs?: number;
};

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
    query_timeout: statementTimeoutMs === 0 ? undefined : statementTimeoutMs + 2_000,
    keepAlive: true,
    // No JIT compilation: every statement here is short, and on a young table (no statistics yet) the planner's
    // estimates can be far too high; JIT then costs more than the statement (the metrics' log-lag query took 210 ms
    // of JIT at 70,000 events). A DATABASE_URL that sets `options` itself takes precedence.
    options: "-c jit=off",
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
    preparedWhenMarked(client);
  });
  return new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
}

/**
 * One connection without statement timeouts, for `runMigrations`: a migration may rewrite a large table (0009 takes
 * about 13 s per million keys), and a replica starting meanwhile waits for it on the migration lock; the requests'
 * 10 s limit would cut either short and the process would not start.
 */
export function migrationDatabase(connectionString: string): Kysely<unknown> {
  return createPostgresDatabase({ connectionString, maxConnections: 1, statementTimeoutMs: 0 });
}

/** Names of marked statements by their text (the text is the identity: a different text is a new statement). */
const statementNames = new Map<string, string>();

function statementName(text: string): string {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `keyledger_${createHash("sha256").update(text).digest("hex").slice(0, 40)}`;
    if (statementNames.size < 1_000) statementNames.set(text, name);
  }
  return name;
}

/**
 * Statements whose text starts with `PREPARED_STATEMENT` (`@keyledger/event-store`) run as named prepared
 * statements: each connection parses and plans them once, then only executes them (planning is a large part of a
 * short statement here). Other databases (PGlite) see the marker as a comment.
 */
function preparedWhenMarked(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const [text, values] = args;
    if (typeof text === "string" && text.startsWith(PREPARED_STATEMENT) && args.length <= 2) {
      return query({ name: statementName(text), text, values });
    }
    return query(...args);
  };
}
