import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import type { LogReaderLag } from "../../log-reader-lag";
import {
  type CacheStatsSource,
  httpRequestDuration,
  metricsRegistry,
  registerCacheStats,
  registerLogReaderLag,
} from "../../metrics";

export type MetricsOptions = {
  /** The API-key verifier, whose cache hits and misses are reported while this app runs. */
  cache?: CacheStatsSource;
  /** Measures the log readers' lag (relay, sealer, projections) when `/metrics` is scraped. */
  logReaderLag?: () => Promise<LogReaderLag[]>;
};

/** Times every request by route pattern and serves the process's registry at `GET /metrics` (Prometheus text). */
export default fp(
  async (app: FastifyInstance, options: MetricsOptions) => {
    app.addHook("onResponse", async (request, reply) => {
      httpRequestDuration.observe(
        {
          method: request.method,
          // The pattern (`/api/api-keys/:name`), never the raw URL; requests no route matched share one label.
          route: request.routeOptions.url ?? "unmatched",
          status_code: String(reply.statusCode),
        },
        reply.elapsedTime / 1000,
      );
    });
    if (options.cache) {
      const unregister = registerCacheStats(options.cache);
      app.addHook("onClose", async () => {
        unregister();
      });
    }
    if (options.logReaderLag) {
      const unregister = registerLogReaderLag(options.logReaderLag);
      app.addHook("onClose", async () => {
        unregister();
      });
    }
    app.get("/metrics", { schema: { hide: true } }, async (_request, reply) => {
      reply.header("content-type", metricsRegistry.contentType);
      return metricsRegistry.metrics();
    });
  },
  { name: "metrics" },
);
