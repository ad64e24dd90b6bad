import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import type { LogReaderLag } from "../../log-reader-lag";
import {
  type CacheStatsSource,
  metricsRegistry,
  registerCacheStats,
  registerLogReaderLag,
  requestDurationSeries,
} from "../../metrics";
import { withRouteHook } from "../../route-hooks";

export type MetricsOptions = {
  /** The API-key verifier, whose cache hits and misses are reported while this app runs. */
  cache?: CacheStatsSource;
  /** Measures the log readers' lag (relay, sealer, projections) when `/metrics` is scraped. */
  logReaderLag?: () => Promise<LogReaderLag[]>;
};

/** Times every request by route pattern and serves the process's registry at `GET /metrics` (Prometheus text). */
export default fp(
  async (app: FastifyInstance, options: MetricsOptions) => {
    // Labelled by the route pattern (`/api/api-keys/:name`), never the raw URL; requests no route matched share one
    // label. Each route gets its own hook with its pattern and label children bound once, so a request costs one
    // map lookup and one observation.
    const observer = (method: string, route: string) => {
      const byStatus = new Map<number, { observe(seconds: number): void }>();
      return (_request: FastifyRequest, reply: FastifyReply, done: () => void) => {
        let child = byStatus.get(reply.statusCode);
        if (child === undefined) {
          child = requestDurationSeries(method, route, reply.statusCode);
          byStatus.set(reply.statusCode, child);
        }
        child.observe(reply.elapsedTime / 1000);
        done();
      };
    };
    app.addHook("onRoute", (route) => {
      const methods = Array.isArray(route.method) ? route.method : [route.method];
      for (const method of methods) {
        const observe = observer(method, route.url);
        route.onResponse = withRouteHook(route.onResponse, (request, reply, done) =>
          request.method === method ? observe(request, reply, done) : done(),
        );
      }
    });
    const unmatched = new Map<string, ReturnType<typeof observer>>();
    app.addHook("onResponse", (request, reply, done) => {
      if (!request.is404) return done();
      let observe = unmatched.get(request.method);
      if (observe === undefined) {
        observe = observer(request.method, "unmatched");
        if (unmatched.size < 64) unmatched.set(request.method, observe);
      }
      observe(request, reply, done);
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
