import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from "prom-client";
import { LatencyHistogram, type LatencySeries } from "./latency-histogram";
import type { LogReaderLag } from "./log-reader-lag";

/**
 * The process's Prometheus registry, served at `/metrics`. Every keyledger metric is named `keyledger_*`; add a
 * new one here (or register it on `metricsRegistry` from the module that owns it) so all services share one
 * registry and one scrape format.
 */
export const metricsRegistry = new Registry();
collectDefaultMetrics({ register: metricsRegistry, prefix: "keyledger_" });

/**
 * Request latency per route pattern (never the raw URL, so names and ids do not explode the label set). Observed on
 * every request, so not prom-client's `Histogram` (see `LatencyHistogram`); exported in the same format.
 */
const httpRequestDuration = new LatencyHistogram(
  "keyledger_http_request_duration_seconds",
  "HTTP request latency by method, route pattern and status code",
  ["method", "route", "status_code"],
  [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
);
// The registry only calls what LatencyHistogram has (name, help, type, get, reset); its type names prom-client's
// own classes.
metricsRegistry.registerMetric(httpRequestDuration as unknown as Metric);

/** The latency series of one route's answers with one status code, bound once (an observation is then cheap). */
export function requestDurationSeries(method: string, route: string, statusCode: number): LatencySeries {
  return httpRequestDuration.series({ method, route, status_code: String(statusCode) });
}

/** Outcomes of presenting an API key: valid, or why not. */
export const API_KEY_VERIFICATION_OUTCOMES = ["valid", "malformed", "not_found", "expired", "revoked"] as const;
export type ApiKeyVerificationOutcome = (typeof API_KEY_VERIFICATION_OUTCOMES)[number];

/** Verifications per outcome, counted with a plain increment per request and reported when scraped. */
const verificationCounts = new Map<ApiKeyVerificationOutcome, number>(
  API_KEY_VERIFICATION_OUTCOMES.map((outcome) => [outcome, 0]),
);

export const apiKeyVerifications = new Counter({
  name: "keyledger_api_key_verifications_total",
  help: "API keys presented to the service, by outcome",
  labelNames: ["outcome"] as const,
  registers: [metricsRegistry],
  collect() {
    this.reset();
    for (const [outcome, count] of verificationCounts) this.inc({ outcome }, count);
  },
});

/** Counts one API-key verification. */
export function recordApiKeyVerification(outcome: ApiKeyVerificationOutcome): void {
  verificationCounts.set(outcome, (verificationCounts.get(outcome) ?? 0) + 1);
}

/** Something that keeps cache counters (the API-key verifier's `stats`). */
export type CacheStatsSource = { readonly stats: { hits: number; misses: number } };
const cacheSources = new Set<CacheStatsSource>();

/** Counts cache hits and misses of every registered source; the hit ratio is hits / (hits + misses). */
const cacheCounter = (name: string, help: string, read: (source: CacheStatsSource) => number) =>
  new Counter({
    name,
    help,
    registers: [metricsRegistry],
    collect() {
      this.reset();
      let total = 0;
      for (const source of cacheSources) total += read(source);
      this.inc(total);
    },
  });
cacheCounter(
  "keyledger_api_key_cache_hits_total",
  "API-key verifications answered from the cache",
  (s) => s.stats.hits,
);
cacheCounter(
  "keyledger_api_key_cache_misses_total",
  "API-key verifications that had to look the key up",
  (s) => s.stats.misses,
);

/** Reports `source`'s cache counters at `/metrics` until the returned function is called. */
export function registerCacheStats(source: CacheStatsSource): () => void {
  cacheSources.add(source);
  return () => cacheSources.delete(source);
}

/** Where each reader of the log (relay, sealer, projections) stands, measured when `/metrics` is scraped. */
const lagSources = new Set<() => Promise<LogReaderLag[]>>();

async function collectLag(gauge: Gauge<"reader">, pick: (lag: LogReaderLag) => number): Promise<void> {
  gauge.reset();
  for (const measure of lagSources) {
    const lags = await measure().catch(() => []);
    for (const lag of lags) gauge.set({ reader: lag.reader }, pick(lag));
  }
}

new Gauge({
  name: "keyledger_log_reader_lag_events",
  help: "Committed events a reader of the log (relay, sealer, projection) has not handled yet",
  labelNames: ["reader"] as const,
  registers: [metricsRegistry],
  async collect() {
    await collectLag(this, (lag) => lag.events);
  },
});

new Gauge({
  name: "keyledger_log_reader_lag_seconds",
  help: "Age of the oldest committed event a reader of the log has not handled yet (0 when caught up)",
  labelNames: ["reader"] as const,
  registers: [metricsRegistry],
  async collect() {
    await collectLag(this, (lag) => lag.seconds);
  },
});

/** Reports the log readers' lag measured by `measure` at `/metrics` until the returned function is called. */
export function registerLogReaderLag(measure: () => Promise<LogReaderLag[]>): () => void {
  lagSources.add(measure);
  return () => lagSources.delete(measure);
}
