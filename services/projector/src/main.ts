import { runMigrations } from "@keyledger/event-store";
import { PgNotificationListener, Projector } from "@keyledger/projections";
import { hostProblem, probeListen } from "@keyledger/service-startup";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import pino from "pino";
import { ProjectorConfigError, parseProjectorConfig } from "./config";
import { startHealthServer } from "./health-server";

/** Longest SIGTERM/SIGINT waits for the unit of work in progress (a rebuild's batch or swap can take long). */
const STOP_WAIT_MS = 5_000;

/** The standalone projector (`pnpm run start:projector`). The only place that reads the environment. */
async function main() {
  let config: ReturnType<typeof parseProjectorConfig>;
  try {
    config = parseProjectorConfig(process.env);
  } catch (error) {
    if (error instanceof ProjectorConfigError) {
      process.stderr.write(`keyledger projector: invalid configuration: ${error.message}\n`);
      process.exit(78);
    }
    throw error;
  }
  const probed = await probeListen(config.health.host);
  if ("error" in probed) {
    process.stderr.write(
      `keyledger projector: invalid configuration: ${hostProblem(config.health.host, probed.error)}\n`,
    );
    process.exit(78);
  }
  const log = pino({ level: config.logLevel, base: { service: "projector" } });
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 4, connectionTimeoutMillis: 5_000 });
  pool.on("error", (error) => log.warn({ err: error }, "idle database connection lost"));
  // A client that loses its connection mid-query emits 'error' where the pool no longer listens: unheard, it
  // would crash the process. The query itself rejects, the projector retries, and the pool drops the client.
  pool.on("connect", (client) => {
    client.on("error", (error) => log.warn({ err: error }, "database connection lost during a query"));
  });
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  await runMigrations(db);
  const notifications = new PgNotificationListener({
    connectionString: config.databaseUrl,
    onError: (error) => log.warn({ err: error }, "notification connection lost; polling until it is back"),
  });
  const projector = new Projector({
    db,
    notifications,
    pollIntervalMs: config.pollIntervalMs,
    sealBatchSize: config.sealBatchSize,
    rebuildBatchSize: config.rebuildBatchSize,
    log,
  });
  projector.start();
  const health = await startHealthServer(db, config.health);
  log.info({ pollIntervalMs: config.pollIntervalMs, healthPort: health.port }, "projector started");

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "projector stopping");
    const timer = setTimeout(() => process.exit(1), 10_000);
    timer.unref();
    await health.close();
    // A unit of work still running after this is rolled back as the process exits; the next projector resumes it.
    const stopped = await projector.stop({ waitMs: STOP_WAIT_MS });
    if (!stopped) {
      log.warn(
        { waitedMs: STOP_WAIT_MS },
        "the unit of work in progress did not finish: left to roll back (the next projector resumes it)",
      );
    }
    await notifications.close();
    // A pool with a query still running would wait for it: the process exit closes that connection instead.
    if (stopped) await db.destroy();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((error) => {
  process.stderr.write(`keyledger projector: failed to start: ${(error as Error).message}\n`);
  process.exit(1);
});
