/** Socket-level failures reaching Postgres (node's error codes). */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * SQLSTATEs that say "the database cannot serve this now, try again": connection exceptions (class 08),
 * insufficient resources (class 53), operator intervention (57: statement timeout, shutdown, cannot connect now),
 * idle-in-transaction / transaction timeouts (25P03, 25P04), lock timeout, and serialization failures / deadlocks that outlived the command's retries.
 */
function isTransientSqlState(code: string): boolean {
  return (
    code.startsWith("08") ||
    code.startsWith("53") ||
    code.startsWith("57") ||
    // The server ended a session it saw idle in a transaction (the client stalled, e.g. a network partition).
    code === "25P03" ||
    code === "25P04" ||
    code === "55P03" ||
    code === "40001" ||
    code === "40P01"
  );
}

/** What node-postgres and pg-pool throw, without a code, when the connection is lost or never made. */
const CONNECTION_MESSAGES = [
  "Connection terminated",
  "timeout exceeded when trying to connect",
  "Query read timeout",
  "Client has encountered a connection error",
  "Client was closed and is not queryable",
  "Cannot use a pool after calling end on the pool",
];

/**
 * Whether an error means Postgres is unreachable or too slow right now (answer 503 and let the client retry),
 * as opposed to a bug (500). Follows `cause` chains and AggregateErrors (a refused connect to several addresses).
 */
export function isDatabaseUnavailable(error: unknown, depth = 0): boolean {
  if (depth > 5 || typeof error !== "object" || error === null) return false;
  const { code, message, cause, errors } = error as {
    code?: unknown;
    message?: unknown;
    cause?: unknown;
    errors?: unknown;
  };
  if (
    typeof code === "string" &&
    (NETWORK_CODES.has(code) || (/^[0-9A-Z]{5}$/.test(code) && isTransientSqlState(code)))
  ) {
    return true;
  }
  if (typeof message === "string" && CONNECTION_MESSAGES.some((m) => message.includes(m))) return true;
  if (Array.isArray(errors) && errors.some((e) => isDatabaseUnavailable(e, depth + 1))) return true;
  return isDatabaseUnavailable(cause, depth + 1);
}

/**
 * Postgres rolled the whole transaction back because it collided with another one (deadlock, serialization
 * failure): nothing was written, so the command runs again with fresh state.
 */
export function isRetryableConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "40P01" || code === "40001";
}
