import { startBenchEnvironment } from "../lib/environment";
import { assertClean, load, median, withCpu } from "../lib/load";
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

const CURRENT_PATH = "/api/api-keys/current";

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

/**
 * `GET /api/api-keys/current` with one key used over and over (the cached case) ÷ hello-world req/s.
 *
 * Identical Node servers differ by up to ±15 % in CPU per request from one process to the next, and each keeps its
 * speed for its lifetime (measured here: six hello-world processes, alternating rounds, per-process medians 22-29 µs;
 * also with address-space randomisation off). One process of each would compare two draws of that lottery, so the
 * scenario starts several of each (hello-world, the no-code route, API replicas on the same database) and takes the
 * median over every round of every process, each round of one alternating with the others.
 */
export const currentKeyScenario: Scenario = {
  id: "current-key",
  title: "GET /api/api-keys/current with a cached key vs fastify hello-world",
  async run(context) {
    const processes = size(context, 3, 2);
    const [hellos, env] = await startBoth(
      Promise.all(Array.from({ length: processes }, () => startHelloWorld())),
      startBenchEnvironment(context, "current", { nodeFlags: profileFlags(context, "current-key") }),
      (started) => Promise.all(started.map((h) => h.service.stop())),
      (e) => e.close(),
    );
    const sameResponses: Awaited<ReturnType<typeof startHelloWorld>>[] = [];
    try {
      const { api, client } = env;
      await client.setMember("org-bench", "user-owner", "owner");
      const key = await client.createKey(await client.jwtHeaders("user-owner", "org-bench"), "cached", []);
      const headers = { authorization: `Bearer ${key}` };
      // The floor for this route: a fastify route sending the very same headers and body, with no code behind it.
      const captured = await capturedResponse(`${api.baseUrl}${CURRENT_PATH}`, headers);
      context.log(
        `same response: headers ${Object.keys(captured.headers).join(", ")}; body ${captured.body.length} bytes`,
      );
      // Started together (each takes about a second); the environment stops the replicas it started.
      const [replicas, sameResponseStarts] = await Promise.all([
        Promise.allSettled(
          Array.from({ length: processes - 1 }, (_, i) =>
            env.startReplica(`api-${i + 1}`, profileFlags(context, `current-key-${i + 1}`)),
          ),
        ),
        Promise.allSettled(Array.from({ length: processes }, () => startHelloWorld(captured))),
      ]);
      for (const started of sameResponseStarts) if (started.status === "fulfilled") sameResponses.push(started.value);
      for (const started of [...replicas, ...sameResponseStarts])
        if (started.status === "rejected") throw started.reason;
      const apis = [api, ...replicas.map((started) => (started as PromiseFulfilledResult<typeof api>).value)];
      const seconds = size(context, 5, 1);
      const connections = THROUGHPUT_CONNECTIONS;
      const trios = hellos.map((hello, i) => {
        const sameResponse = sameResponses[i] as Awaited<ReturnType<typeof startHelloWorld>>;
        const current = apis[i] as (typeof apis)[number];
        return {
          hello: { service: hello.service, url: hello.url },
          sameResponse: { service: sameResponse.service, url: sameResponse.staticUrl },
          current: { service: current.service, url: `${current.baseUrl}${CURRENT_PATH}`, headers },
        };
      });
      context.log(`warm-up (${processes} processes of each)`);
      for (const trio of trios) {
        await load({ url: trio.hello.url, connections, duration: size(context, 1, 0.5) });
        await load({ url: trio.sameResponse.url, connections, duration: size(context, 1, 0.5) });
        await load({ url: trio.current.url, headers, connections, duration: size(context, 3, 1) });
      }
      type Target = { service: ChildService; url: string; headers?: Record<string, string> };
      const measure = async (label: string, target: Target) =>
        assertClean(
          label,
          await withCpu(target.service, () =>
            load({ url: target.url, headers: target.headers, connections, duration: seconds }),
          ),
        );
      type Measured = Awaited<ReturnType<typeof measure>>;
      const byProcess = trios.map(() => ({
        hello: [] as Measured[],
        sameResponse: [] as Measured[],
        current: [] as Measured[],
      }));
      for (let round = 0; round < size(context, 3, 2); round++) {
        for (const [i, trio] of trios.entries()) {
          const mine = byProcess[i] as (typeof byProcess)[number];
          mine.hello.push(await measure("hello-world", trio.hello));
          mine.sameResponse.push(await measure("same response", trio.sameResponse));
          mine.current.push(await measure("/current", trio.current));
        }
      }
      type Pick = (p: (typeof byProcess)[number]) => Measured[];
      const helloRounds: Pick = (p) => p.hello;
      const sameResponseRounds: Pick = (p) => p.sameResponse;
      const currentRounds: Pick = (p) => p.current;
      const rate = (pick: Pick) => median(byProcess.flatMap(pick).map((r) => r.okPerSecond));
      const cpu = (results: Measured[]) => median(results.map((r) => r.cpuMicrosPerRequest));
      const helloRate = rate(helloRounds);
      const currentRate = rate(currentRounds);
      const sameResponseRate = rate(sameResponseRounds);
      const ratio = currentRate / helloRate;
      const floor = sameResponseRate / helloRate;
      const helloCpu = cpu(byProcess.flatMap(helloRounds));
      const sameResponseCpu = cpu(byProcess.flatMap(sameResponseRounds));
      const apiCpu = cpu(byProcess.flatMap(currentRounds));
      const perProcess = (pick: Pick) => byProcess.map((p) => cpu(pick(p)).toFixed(1)).join(" / ");
      const roundRates = (pick: Pick) =>
        byProcess
          .flatMap(pick)
          .map((r) => Math.round(r.okPerSecond))
          .join(" ");
      context.log(
        `hello-world ${helloRate.toFixed(0)} req/s (${helloCpu.toFixed(0)} µs CPU/req), ` +
          `same response, no code ${sameResponseRate.toFixed(0)} req/s (${sameResponseCpu.toFixed(0)} µs CPU/req), ` +
          `/current ${currentRate.toFixed(0)} req/s (${apiCpu.toFixed(0)} µs CPU/req); per process (µs CPU/req): ` +
          `hello-world ${perProcess(helloRounds)}, same response ${perProcess(sameResponseRounds)}, ` +
          `/current ${perProcess(currentRounds)}`,
      );
      const last = byProcess.flatMap(currentRounds).at(-1);
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
          processesOfEach: processes,
          roundsPerProcess: size(context, 3, 2),
          secondsPerRound: seconds,
          p50Ms: last?.latencyMs.p50 ?? Number.NaN,
          p99Ms: last?.latencyMs.p99 ?? Number.NaN,
          helloCpuMicrosPerRequest: helloCpu,
          sameResponseCpuMicrosPerRequest: sameResponseCpu,
          apiCpuMicrosPerRequest: apiCpu,
          helloCpuMicrosPerProcess: perProcess(helloRounds),
          sameResponseCpuMicrosPerProcess: perProcess(sameResponseRounds),
          apiCpuMicrosPerProcess: perProcess(currentRounds),
          helloRounds: roundRates(helloRounds),
          sameResponseRounds: roundRates(sameResponseRounds),
          currentRounds: roundRates(currentRounds),
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
      for (const started of [...hellos, ...sameResponses]) await started.service.stop();
    }
  },
};
