import { runMigrations } from "@keyledger/event-store";
import closeWithGrace from "close-with-grace";
import { buildApp, LOG_REDACTIONS } from "./app";
import { ConfigError, parseApiConfig } from "./config";
import { createPostgresDatabase } from "./database";

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
  const db = createPostgresDatabase({ connectionString: config.databaseUrl });
  await runMigrations(db);
  const app = await buildApp({
    db,
    oidc: config.oidc,
    internalApiToken: config.internalApiToken,
    keyUsedThrottleMs: config.keyUsedThrottleMs,
    bodyLimitBytes: config.bodyLimitBytes,
    rateLimits: config.rateLimits,
    trustProxy: config.trustProxy,
    logger: { level: config.logLevel, redact: { paths: LOG_REDACTIONS, censor: "[redacted]" } },
  });
  if (config.internalApiToken === undefined) {
    app.log.warn("INTERNAL_API_TOKEN is not set: the internal membership routes are off");
  }
  // SIGTERM/SIGINT: stop accepting, finish in-flight requests, flush pending KeyUsed (the app's onClose), close
  // the pool, exit 0; past 10 s, or on an uncaught error, exit 1.
  closeWithGrace(
    { delay: 10_000, logger: { error: (message: unknown) => app.log.error(message) } },
    async ({ signal, err }) => {
      if (err) app.log.error({ err }, "uncaught error: shutting down");
      else app.log.info({ signal }, "shutting down");
      await app.close();
      await db.destroy();
    },
  );
  await app.listen({ port: config.port, host: config.host });
}

main().catch((error) => {
  process.stderr.write(`keyledger: failed to start: ${(error as Error).message}\n`);
  process.exit(1);
});
