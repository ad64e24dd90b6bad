import { startBenchEnvironment } from "../lib/environment";
import { alternate, assertClean, load, median, withCpu } from "../lib/load";
import { type ChildService, freePort, spawnTs, waitForHttp } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type BenchContext, type Scenario, size } from "../lib/scenario";

/**
 * A fastify hello-world route in its own process: the HTTP ceiling every HTTP figure is divided by. Given a
 * response, it also serves exactly that response at `staticUrl` with no code behind it.
 */
export async function startHelloWorld(staticResponse?: { headers: Record<string, string>; body: string }) {
  const port = await freePort();
  const service = spawnTs({
    name: staticResponse ? "same-response" : "hello-world",
    script: "bench/servers/hello-world.ts",
    env: { PORT: String(port), STATIC_RESPONSE: staticResponse ? JSON.stringify(staticResponse) : undefined },
  });
  await waitForHttp(service, `http://127.0.0.1:${port}/health/live`);
  return { service, url: `http://127.0.0.1:${port}/hello`, staticUrl: `http://127.0.0.1:${port}/static` };
}

/** Headers node or fastify set on every response by themselves (the static route gets its own). */
const AUTOMATIC_HEADERS = new Set(["date", "connection", "keep-alive", "content-length", "transfer-encoding"]);

/** One real response, as a static route would send it: its headers (less the automatic ones) and body. */
async function capturedResponse(url: string, headers: Record<string, string>) {
  const response = await fetch(url, { headers });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const kept: Record<string, string> = {};
  response.headers.forEach((value, name) => {
    if (!AUTOMATIC_HEADERS.has(name)) kept[name] = value;
  });
  return { headers: kept, body: await response.text() };
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
    let sameResponse: Awaited<ReturnType<typeof startHelloWorld>> | undefined;
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
      // The floor for this route: a fastify route sending the very same headers and body, with no code behind it.
      const captured = await capturedResponse(current.url, current.headers);
      context.log(
        `same response: headers ${Object.keys(captured.headers).join(", ")}; body ${captured.body.length} bytes`,
      );
      sameResponse = await startHelloWorld(captured);
      const sameResponseUrl = sameResponse.staticUrl;
      context.log(`warm-up`);
      await load({ url: hello.url, connections, duration: 1 });
      await load({ url: sameResponseUrl, connections, duration: 1 });
      await load({ ...current, connections, duration: size(context, 3, 1) });
      const sameResponseRounds: Awaited<ReturnType<typeof withCpu>>[] = [];
      const rounds = await alternate(
        size(context, 3, 2),
        async () =>
          assertClean(
            "hello-world",
            await withCpu(hello.service, () => load({ url: hello.url, connections, duration: seconds })),
          ),
        async () => {
          const service = sameResponse?.service as ChildService;
          sameResponseRounds.push(
            assertClean(
              "same response",
              await withCpu(service, () => load({ url: sameResponseUrl, connections, duration: seconds })),
            ),
          );
          return assertClean(
            "/current",
            await withCpu(api.service, () => load({ ...current, connections, duration: seconds })),
          );
        },
      );
      const helloRate = median(rounds.baseline.map((r) => r.okPerSecond));
      const currentRate = median(rounds.target.map((r) => r.okPerSecond));
      const sameResponseRate = median(sameResponseRounds.map((r) => r.okPerSecond));
      const ratio = currentRate / helloRate;
      const floor = sameResponseRate / helloRate;
      const cpu = (results: { cpuMicrosPerRequest: number }[]) => median(results.map((r) => r.cpuMicrosPerRequest));
      const helloCpu = cpu(rounds.baseline);
      const sameResponseCpu = cpu(sameResponseRounds);
      const apiCpu = cpu(rounds.target);
      context.log(
        `hello-world ${helloRate.toFixed(0)} req/s (${helloCpu.toFixed(0)} µs CPU/req), ` +
          `same response, no code ${sameResponseRate.toFixed(0)} req/s (${sameResponseCpu.toFixed(0)} µs CPU/req), ` +
          `/current ${currentRate.toFixed(0)} req/s (${apiCpu.toFixed(0)} µs CPU/req)`,
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
          `CPU in Node: ${apiCpu.toFixed(0)} µs per request against hello-world's ${helloCpu.toFixed(0)}; the same ` +
          `headers and body from a route with no code take ${sameResponseCpu.toFixed(0)} µs (${floor.toFixed(2)}×, next ` +
          "row), the rest is the cached answer's code ahead of fastify (bearer parsing, SHA-256 and cache lookup, " +
          "rate-limit window and headers, request id, metrics, the KeyUsed throttle check) and the larger process " +
          "(heap, megamorphic call sites). Most of every request's CPU is node's HTTP and the socket write",
        details: {
          connections,
          rounds: rounds.target.length,
          secondsPerRound: seconds,
          p50Ms: last?.latencyMs.p50 ?? Number.NaN,
          p99Ms: last?.latencyMs.p99 ?? Number.NaN,
          helloCpuMicrosPerRequest: helloCpu,
          sameResponseCpuMicrosPerRequest: sameResponseCpu,
          apiCpuMicrosPerRequest: apiCpu,
          helloRounds: rounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
          sameResponseRounds: sameResponseRounds.map((r) => Math.round(r.okPerSecond)).join(" "),
          currentRounds: rounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
        },
      };
      const floorFigure: Figure = {
        id: "current-key-same-response-floor",
        label: "the same response as `/current` from a route with no code (fastify, same headers and body), req/s",
        value: sameResponseRate,
        unit: "req/s",
        baseline: { label: "hello-world", value: helloRate, unit: "req/s" },
        ratio: floor,
        goal: "–",
        pass: null,
        boundBy:
          "CPU in Node: the response's size and headers (request id, Daytona's three rate-limit headers) in fastify and node's HTTP; the ceiling for /current",
      };
      return [figure, floorFigure];
    } finally {
      await env.close();
      await hello.service.stop();
      await sameResponse?.service.stop();
    }
  },
};
