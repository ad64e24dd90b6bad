import { runMigrations } from "@keyledger/event-store";
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
    logger: { level: config.logLevel, redact: { paths: LOG_REDACTIONS, censor: "[redacted]" } },
  });
  if (config.internalApiToken === undefined) {
    app.log.warn("INTERNAL_API_TOKEN is not set: the internal membership routes are off");
  }
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, "shutting down");
    const timer = setTimeout(() => process.exit(1), 10_000);
    timer.unref();
    await app.close();
    await db.destroy();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  await app.listen({ port: config.port, host: config.host });
}

main().catch((error) => {
  process.stderr.write(`keyledger: failed to start: ${(error as Error).message}\n`);
  process.exit(1);
});
