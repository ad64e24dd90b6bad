import autocannon from "autocannon";

export type LoadOptions = {
  url: string;
  connections: number;
  /** Seconds; ignored when `amount` is set. */
  duration?: number;
  amount?: number;
  method?: "GET" | "POST" | "PUT" | "DELETE";
  headers?: Record<string, string>;
  body?: string;
  requests?: autocannon.Request[];
  timeoutSeconds?: number;
  /**
   * Keep every 2xx response time with sub-millisecond precision and report percentiles from them (autocannon's own
   * histogram has 1 ms resolution).
   */
  preciseLatency?: boolean;
};

export type LoadResult = {
  /** 2xx responses per second over the whole run. */
  okPerSecond: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  seconds: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
};

/** One autocannon run from this process against a server in another process. */
export async function load(options: LoadOptions): Promise<LoadResult> {
  const instance = autocannon({
    url: options.url,
    connections: options.connections,
    ...(options.amount === undefined ? { duration: options.duration ?? 5 } : { amount: options.amount }),
    method: options.method ?? "GET",
    headers: options.headers,
    body: options.body,
    requests: options.requests,
    timeout: options.timeoutSeconds ?? 10,
  }) as unknown as autocannon.Instance & Promise<autocannon.Result>;
  const samples: number[] = [];
  if (options.preciseLatency) {
    instance.on("response", (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) samples.push(responseTime);
    });
  }
  const result = await instance;
  const ok = result["2xx"];
  const seconds = Math.max(result.duration, 0.001);
  return {
    okPerSecond: ok / seconds,
    ok,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    seconds,
    latencyMs:
      samples.length > 0
        ? {
            p50: percentile(samples, 50),
            p90: percentile(samples, 90),
            p99: percentile(samples, 99),
            max: percentile(samples, 100),
            mean: samples.reduce((a, b) => a + b, 0) / samples.length,
          }
        : {
            p50: result.latency.p50,
            p90: result.latency.p90,
            p99: result.latency.p99,
            max: result.latency.max,
            mean: result.latency.average,
          },
  };
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile (0 < p ≤ 100) of raw samples. */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

/**
 * Measures a baseline and a target in alternating rounds (B, T, B, T, ...) so that load from other processes on
 * the machine hits both alike, and returns the median of each. Every round is checked with `assertOk`.
 */
export async function alternate<B, T>(
  rounds: number,
  baseline: () => Promise<B>,
  target: () => Promise<T>,
): Promise<{ baseline: B[]; target: T[] }> {
  const out = { baseline: [] as B[], target: [] as T[] };
  for (let i = 0; i < rounds; i++) {
    out.baseline.push(await baseline());
    out.target.push(await target());
  }
  return out;
}

/** Throws when a run had errors or unexpected statuses: a figure from failed requests means nothing. */
export function assertClean<R extends LoadResult>(label: string, result: R, allowedNon2xx = 0): R {
  if (result.errors > 0 || result.timeouts > 0 || result.non2xx > allowedNon2xx || result.ok === 0) {
    throw new Error(
      `${label}: ${result.ok} ok, ${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts`,
    );
  }
  return result;
}

/** A load run plus the CPU time the server process spent on it, per 2xx response (µs). */
export async function withCpu<R extends LoadResult>(
  server: { cpuMs(): Promise<number> },
  run: () => Promise<R>,
): Promise<R & { cpuMicrosPerRequest: number }> {
  const before = await server.cpuMs();
  const result = await run();
  const after = await server.cpuMs();
  return { ...result, cpuMicrosPerRequest: ((after - before) * 1000) / Math.max(1, result.ok) };
}
