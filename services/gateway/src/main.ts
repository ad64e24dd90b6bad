import { hostProblem, probeListen } from "@keyledger/service-startup";
import { createVerifier } from "@keyledger/verifier";
import pino from "pino";
import { GatewayConfigError, parseGatewayConfig } from "./config";
import { buildGateway, GATEWAY_LOG_REDACTIONS } from "./gateway";

/** The only place that reads the environment. */
async function main() {
  let config: ReturnType<typeof parseGatewayConfig>;
  try {
    config = parseGatewayConfig(process.env);
  } catch (error) {
    if (error instanceof GatewayConfigError) {
      process.stderr.write(`keyledger-gateway: invalid configuration: ${error.message}\n`);
      process.exit(78);
    }
    throw error;
  }
  const probed = await probeListen(config.host);
  if ("error" in probed) {
    process.stderr.write(`keyledger-gateway: invalid configuration: ${hostProblem(config.host, probed.error)}\n`);
    process.exit(78);
  }
  const log = pino({ level: config.logLevel, redact: { paths: GATEWAY_LOG_REDACTIONS, censor: "[redacted]" } });
  const verifier = createVerifier({
    apiUrl: config.apiUrl,
    natsUrl: config.natsUrl,
    subjectPrefix: config.subjectPrefix,
    cache: config.cache,
    lookupTimeoutMs: config.lookupTimeoutMs,
    keyUseReports: config.keyUseReportIntervalMs > 0 ? { intervalMs: config.keyUseReportIntervalMs } : undefined,
    name: "keyledger-gateway",
    log,
  });
  if (config.natsUrl === undefined) {
    log.warn("NATS_URL is not set: nothing is cached, every request is checked with the API");
  }
  const gateway = await buildGateway({
    mode: config.mode,
    upstreamUrl: config.upstreamUrl,
    upstreamConnections: config.upstreamConnections,
    upstreamPipelining: config.upstreamPipelining,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    forwardAuthorization: config.forwardAuthorization,
    verifier,
    log,
  });
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    log.info({ signal }, "shutting down");
    const timer = setTimeout(() => process.exit(1), 10_000);
    timer.unref();
    await gateway.close();
    await verifier.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  // The address bound, not the one asked for: with PORT=0 the system picks the port.
  const url = await gateway.listen({ port: config.port, host: config.host });
  log.info({ url, port: Number(new URL(url).port), mode: config.mode }, "gateway listening");
}

main().catch((error) => {
  process.stderr.write(`keyledger-gateway: failed to start: ${(error as Error).message}\n`);
  process.exit(1);
});
