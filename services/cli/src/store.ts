import { createPostgresDatabase, EmbeddedDatabaseBusy, openEmbeddedDatabase } from "@keyledger/api";
import type { Kysely } from "kysely";

/**
 * The database a CLI command works on: `DATABASE_URL` if set, else the embedded database in `KEYLEDGER_DATA_DIR`
 * (default `.keyledger`), the one `pnpm start` uses. PGlite serves one process at a time, so while the API has
 * the embedded database open this refuses with one line instead of opening the directory a second time.
 */
export async function openStore(
  env: Record<string, string | undefined>,
  maxConnections = 2,
  statementTimeoutMs?: number,
): Promise<Kysely<unknown>> {
  if (env.DATABASE_URL) {
    return createPostgresDatabase({ connectionString: env.DATABASE_URL, maxConnections, statementTimeoutMs });
  }
  const dataDir = env.KEYLEDGER_DATA_DIR || ".keyledger";
  try {
    return await openEmbeddedDatabase({ dataDir });
  } catch (error) {
    if (!(error instanceof EmbeddedDatabaseBusy)) throw error;
    throw new Error(
      `the embedded database in ${dataDir} is open in process ${error.pid} (the running API?): ` +
        "stop it first, or run against Postgres with DATABASE_URL",
    );
  }
}
