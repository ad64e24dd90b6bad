import { join, resolve } from "node:path";
import { runMigrations } from "@keyledger/event-store";
import { PgNotificationListener, Projector } from "@keyledger/projections";
import { hostProblem, probeListen } from "@keyledger/service-startup";
import closeWithGrace from "close-with-grace";
import { buildApp, LOG_REDACTIONS } from "./app";
import { ConfigError, parseApiConfig } from "./config";
import { createPostgresDatabase, migrationDatabase } from "./database";
import { loadDevIssuer } from "./dev-issuer";

/** Longest shutdown waits for the in-process projector's unit of work in progress. */
const PROJECTOR_STOP_WAIT_MS = 5_000;

/** The only place that reads the environment. */
async function main() {
  let config: ReturnType<typeof parseApiConfig>;
  try {
    config = parseApiConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`keyledger: invalid configuration: ${error.message}\n`);
      process.exit(78);
    }
    throw error;
  }
  const probed = await probeListen(config.host);
  if ("error" in probed) {
    process.stderr.write(`keyledger: invalid configuration: ${hostProblem(config.host, probed.error)}\n`);
    process.exit(78);
  }
  // PORT=0 without PUBLIC_URL: the development issuer's URL (its tokens' `iss`) must name the port the API answers
  // on, so the API listens on the free port just found (not on "any port", which would leave it `localhost:0`).
  const usePortFound = config.port === 0 && config.publicUrl === undefined && config.oidc === undefined;
  const port = usePortFound ? probed.port : config.port;
  const publicUrl = config.publicUrl ?? `http://localhost:${port}`;
  const db = config.databaseUrl
    ? createPostgresDatabase({ connectionString: config.databaseUrl })
    : // Loaded only when used: PGlite's WebAssembly adds about 35 MB to the resident memory of every API process.
      await (await import("./embedded-database")).openEmbeddedDatabase({ dataDir: config.dataDir });
  if (config.databaseUrl) {
    const migrations = migrationDatabase(config.databaseUrl);
    try {
      await runMigrations(migrations);
    } finally {
      await migrations.destroy();
    }
  } else {
    await runMigrations(db);
  }
  // LISTEN needs a connection of its own: Postgres only (the embedded database polls).
  let onListenError = (_error: Error) => {};
  const notifications = config.databaseUrl
    ? new PgNotificationListener({ connectionString: config.databaseUrl, onError: (error) => onListenError(error) })
    : undefined;
  const devIssuer = config.oidc
    ? undefined
    : await loadDevIssuer({ issuer: publicUrl, keyFile: join(config.dataDir, "dev-issuer-key.json") });
  const app = await buildApp({
    db,
    oidc: config.oidc,
    devIssuer,
    internalApiToken: config.internalApiToken,
    keyUsedThrottleMs: config.keyUsedThrottleMs,
    bodyLimitBytes: config.bodyLimitBytes,
    rateLimits: config.rateLimits,
    trustProxy: config.trustProxy,
    corsOrigins: config.corsOrigins,
    nats: config.nats && {
      ...config.nats,
      // One active relay across replicas (advisory lock on its own session); the embedded database is one process.
      relay: config.databaseUrl ? { databaseUrl: config.databaseUrl } : { db: "shared" },
    },
    logger: { level: config.logLevel, redact: { paths: LOG_REDACTIONS, censor: "[redacted]" } },
    notifications,
  });
  onListenError = (error) => app.log.warn({ err: error }, "LISTEN connection lost; polling until it is back");
  // The projector (hash chain, rebuilds) runs here too unless PROJECTOR_IN_API=false (then run start:projector),
  // on a small pool of its own: a rebuild's swap may outlast the request timeouts, and must not take requests' slots.
  const projectorDb =
    config.projectorInApi && config.databaseUrl
      ? createPostgresDatabase({ connectionString: config.databaseUrl, maxConnections: 3, statementTimeoutMs: 600_000 })
      : db;
  const projector = config.projectorInApi
    ? new Projector({ db: projectorDb, notifications, log: app.log.child({ component: "projector" }) })
    : undefined;
  if (!config.databaseUrl) {
    app.log.warn(
      { dataDir: resolve(config.dataDir) },
      "DATABASE_URL is not set: using the embedded database (PGlite), one process only; set DATABASE_URL for Postgres",
    );
  }
  if (devIssuer) {
    app.log.warn(
      {
        issuer: devIssuer.issuer,
        jwksUrl: devIssuer.jwksUrl,
        keyFile: devIssuer.keyFile && resolve(devIssuer.keyFile),
      },
      "DEVELOPMENT ONLY: OIDC_ISSUER is not set, so this API issues and trusts its own JWTs " +
        "(pnpm keyledger dev-token). Never expose it; NODE_ENV=production refuses to start without OIDC",
    );
  }
  if (config.nats === undefined) {
    app.log.warn(
      "NATS_URL is not set: events are not published (no relay), and API keys are read from the database on every request",
    );
  } else {
    app.log.info(
      { stream: config.nats.streamName, subjectPrefix: config.nats.subjectPrefix },
      "publishing events to NATS JetStream (relay + fast path)",
    );
  }
  if (config.internalApiToken === undefined) {
    app.log.warn("INTERNAL_API_TOKEN is not set: the internal membership routes are off");
  }
  // SIGTERM/SIGINT: stop accepting, finish in-flight requests, flush pending KeyUsed (the app's onClose), close
  // the pool, exit 0; past 10 s, or on an uncaught error, exit 1. The projector stops meanwhile, not first: its unit
  // of work in progress (a rebuild's batch or swap can take long on a large log) must not keep the server accepting
  // nor the requests waiting. Each unit is one transaction that stores its own progress, so one still running after
  // PROJECTOR_STOP_WAIT_MS is left to Postgres to roll back when the process exits, and the next projector resumes.
  closeWithGrace(
    { delay: 10_000, logger: { error: (message: unknown) => app.log.error(message) } },
    async ({ signal, err }) => {
      if (err) app.log.error({ err }, "uncaught error: shutting down");
      else app.log.info({ signal }, "shutting down");
      const projectorStopped = projector?.stop({ waitMs: PROJECTOR_STOP_WAIT_MS }) ?? Promise.resolve(true);
      await app.close();
      const stopped = await projectorStopped;
      if (!stopped) {
        app.log.warn(
          { waitedMs: PROJECTOR_STOP_WAIT_MS },
          "the projector's unit of work in progress did not finish: left to roll back (the next projector resumes it)",
        );
      }
      await notifications?.close();
      // A pool with a query still running would wait for it: the process exit closes that connection instead.
      if (projectorDb !== db && stopped) await projectorDb.destroy();
      await db.destroy();
    },
  );
  projector?.start();
  await app.listen({ port, host: config.host });
}

main().catch((error) => {
  if (error instanceof Error && error.name === "EmbeddedDatabaseBusy") {
    process.stderr.write(
      `keyledger: failed to start: ${error.message} (is another \`pnpm start\` running? stop it, or set DATABASE_URL)\n`,
    );
    process.exit(1);
  }
  process.stderr.write(`keyledger: failed to start: ${(error as Error).message}\n`);
  process.exit(1);
});
