import { startBenchEnvironment } from "../lib/environment";
import { alternate, assertClean, load, median, withCpu } from "../lib/load";
import { freePort, spawnTs, waitForHttp } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type BenchContext, type Scenario, size } from "../lib/scenario";

/** A fastify hello-world route in its own process: the HTTP ceiling every HTTP figure is divided by. */
export async function startHelloWorld() {
  const port = await freePort();
  const service = spawnTs({ name: "hello-world", script: "bench/servers/hello-world.ts", env: { PORT: String(port) } });
  await waitForHttp(service, `http://127.0.0.1:${port}/health/live`);
  return { service, url: `http://127.0.0.1:${port}/hello` };
}

/**
 * `--cpu-prof` into `<profile dir>/<name>/` (one file per thread: the main thread's is the largest; tsx's loader
 * runs in a worker thread of its own).
 */
export function profileFlags(context: BenchContext, name: string): string[] {
  return context.profileDir ? ["--cpu-prof", `--cpu-prof-dir=${context.profileDir}/${name}`] : [];
}

export const THROUGHPUT_CONNECTIONS = 32;

/** Starts two things at once; if one fails, stops the other and throws. */
export async function startBoth<A, B>(
  a: Promise<A>,
  b: Promise<B>,
  stopA: (a: A) => Promise<unknown>,
  stopB: (b: B) => Promise<unknown>,
): Promise<[A, B]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === "fulfilled" && rb.status === "fulfilled") return [ra.value, rb.value];
  if (ra.status === "fulfilled") await stopA(ra.value);
  if (rb.status === "fulfilled") await stopB(rb.value);
  throw ra.status === "rejected" ? ra.reason : (rb as PromiseRejectedResult).reason;
}

/** `GET /api/api-keys/current` with one key used over and over (the cached case) ÷ hello-world req/s. */
export const currentKeyScenario: Scenario = {
  id: "current-key",
  title: "GET /api/api-keys/current with a cached key vs fastify hello-world",
  async run(context) {
    const [hello, env] = await startBoth(
      startHelloWorld(),
      startBenchEnvironment(context, "current", { nodeFlags: profileFlags(context, "current-key") }),
      (h) => h.service.stop(),
      (e) => e.close(),
    );
    try {
      const { api, client } = env;
      await client.setMember("org-bench", "user-owner", "owner");
      const key = await client.createKey(await client.jwtHeaders("user-owner", "org-bench"), "cached", []);
      const current = {
        url: `${api.baseUrl}/api/api-keys/current`,
        headers: { authorization: `Bearer ${key}` },
      };
      const seconds = size(context, 5, 1.5);
      const connections = THROUGHPUT_CONNECTIONS;
      context.log(`warm-up`);
      await load({ url: hello.url, connections, duration: 1 });
      await load({ ...current, connections, duration: size(context, 3, 1) });
      const rounds = await alternate(
        size(context, 3, 2),
        async () =>
          assertClean(
            "hello-world",
            await withCpu(hello.service, () => load({ url: hello.url, connections, duration: seconds })),
          ),
        async () =>
          assertClean(
            "/current",
            await withCpu(api.service, () => load({ ...current, connections, duration: seconds })),
          ),
      );
      const helloRate = median(rounds.baseline.map((r) => r.okPerSecond));
      const currentRate = median(rounds.target.map((r) => r.okPerSecond));
      const ratio = currentRate / helloRate;
      context.log(
        `hello-world ${helloRate.toFixed(0)} req/s (${median(rounds.baseline.map((r) => r.cpuMicrosPerRequest)).toFixed(0)} µs CPU/req), ` +
          `/current ${currentRate.toFixed(0)} req/s (${median(rounds.target.map((r) => r.cpuMicrosPerRequest)).toFixed(0)} µs CPU/req)`,
      );
      const last = rounds.target[rounds.target.length - 1];
      const figure: Figure = {
        id: "current-key-throughput",
        label: "`GET /api/api-keys/current`, cached key, req/s",
        value: currentRate,
        unit: "req/s",
        baseline: { label: "hello-world", value: helloRate, unit: "req/s" },
        ratio,
        goal: "≥ 0.8×",
        pass: ratio >= 0.8,
        boundBy:
          "CPU in Node: about 1.5× hello-world's CPU per request (auth hook and verify, rate-limit window and headers, request id, metrics, more response headers), most of either being the socket write",
        details: {
          connections,
          rounds: rounds.target.length,
          secondsPerRound: seconds,
          p50Ms: last?.latencyMs.p50 ?? Number.NaN,
          p99Ms: last?.latencyMs.p99 ?? Number.NaN,
          helloCpuMicrosPerRequest: median(rounds.baseline.map((r) => r.cpuMicrosPerRequest)),
          apiCpuMicrosPerRequest: median(rounds.target.map((r) => r.cpuMicrosPerRequest)),
          helloRounds: rounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
          currentRounds: rounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
        },
      };
      return [figure];
    } finally {
      await env.close();
      await hello.service.stop();
    }
  },
};
