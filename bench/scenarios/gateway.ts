import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { decodeEventMessage, eventSubjectFilter, NatsLink } from "@keyledger/nats-bus";
import { sql } from "kysely";
import pg from "pg";
import { onInterrupt } from "../lib/cleanup";
import { startBenchEnvironment } from "../lib/environment";
import { type GatewayProcess, startGatewayProcess } from "../lib/gateway";
import { HttpProbe, type ProbeResult } from "../lib/http-probe";
import { alternate, assertClean, type LoadResult, load, median, percentile, withCpu } from "../lib/load";
import { freePort, REPO_ROOT, spawnTs, waitForHttp } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";
import { profileFlags, startBoth, startHelloWorld, THROUGHPUT_CONNECTIONS } from "./current-key";

const ORG = "org-gateway";
/** Gateways A and B run with the defaults (no upstream pipelining); the pipelined figure uses this. */
const PIPELINED = 8;
const OWNER = "owner";

/** `count` publishes 2 ms apart from a second connection to a subscription on `nc`; each one's latency (ms). */
async function natsHopLatencies(url: string, nc: NatsLink["connection"], count: number): Promise<number[]> {
  if (nc === undefined) return [];
  const link = new NatsLink({ servers: url, name: "keyledger-bench-hop" });
  const sender = await link.whenConnected();
  const subject = `keyledger_bench_hop.${process.pid}.${Date.now()}`;
  let arrived: ((at: number) => void) | undefined;
  const sub = nc.subscribe(subject, { callback: () => arrived?.(performance.now()) });
  const samples: number[] = [];
  try {
    await nc.flush();
    for (let i = 0; i < count && sender !== undefined; i++) {
      const at = new Promise<number>((resolve) => {
        arrived = resolve;
      });
      const sentAt = performance.now();
      sender.publish(subject);
      samples.push((await at) - sentAt);
      await sleep(2);
    }
  } finally {
    sub.unsubscribe();
    await link.close();
  }
  return samples;
}

/** `bench/servers/bare-proxy.ts` in front of `upstreamBase`, alternated against hello-world direct. */
async function measureBareProxy(
  upstreamBase: string,
  helloRound: () => Promise<LoadResult & { cpuMicrosPerRequest: number }>,
  seconds: number,
  quick: boolean,
) {
  const port = await freePort();
  const proxy = spawnTs({
    name: "bare-proxy",
    script: "bench/servers/bare-proxy.ts",
    env: { PORT: String(port), UPSTREAM_URL: upstreamBase },
  });
  try {
    await waitForHttp(proxy, `http://127.0.0.1:${port}/health/live`);
    const target = { url: `http://127.0.0.1:${port}/hello`, connections: THROUGHPUT_CONNECTIONS };
    // A reference, not a goal: one round in a quick run (which has to stay under 2 minutes).
    await load({ ...target, duration: quick ? 0.5 : 3 });
    const rounds = await alternate(quick ? 1 : 3, helloRound, async () =>
      assertClean("bare proxy", await withCpu(proxy, () => load({ ...target, duration: seconds }))),
    );
    return {
      helloRate: median(rounds.baseline.map((r) => r.okPerSecond)),
      rate: median(rounds.target.map((r) => r.okPerSecond)),
      details: {
        connections: THROUGHPUT_CONNECTIONS,
        helloCpuMicrosPerRequest: median(rounds.baseline.map((r) => r.cpuMicrosPerRequest)),
        proxyCpuMicrosPerRequest: median(rounds.target.map((r) => r.cpuMicrosPerRequest)),
        helloRounds: rounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
        proxyRounds: rounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
      },
    };
  } finally {
    await proxy.stop();
  }
}

/** Probes back to back until the answer is 401; returns the first 401 (when it was sent and when it arrived). */
async function untilRejected(probe: HttpProbe, key: string, deadline: number): Promise<ProbeResult> {
  for (;;) {
    const result = await probe.get(key);
    if (result.status === 401) return result;
    if (result.status !== 200) throw new Error(`probe answered ${result.status}`);
    if (performance.now() > deadline) throw new Error("key still accepted 5 s after its revocation");
  }
}

/**
 * Through `services/gateway` (2 replicas, upstream = the hello-world server):
 * - verify throughput: req/s through one gateway with a cached key ÷ hello-world req/s direct;
 * - revocation propagation: with background verify load on both gateways, a key is revoked through the API
 *   (DELETE) while each gateway is probed back to back with it; the time from the revoke's commit (a `pg_notify`
 *   sent inside the revoking transaction by a trigger this benchmark adds to its own database, so Postgres delivers
 *   it when that transaction commits; received by a LISTEN in this process) to the first bytes of each gateway's first 401
 *   (bench/lib/http-probe.ts).
 */
export const gatewayScenario: Scenario = {
  id: "gateway",
  title: "gateway verify throughput vs hello-world; revocation propagation to 2 gateways under load",
  async unavailable() {
    return existsSync(`${REPO_ROOT}/services/gateway/src/main.ts`) ? null : "services/gateway has not landed";
  },
  async run(context) {
    const [hello, env] = await startBoth(
      startHelloWorld(),
      // KeyUsed throttled to a day: after each key's first use, the revoke is the only commit in its window.
      startBenchEnvironment(context, "gateway", { env: { KEY_USED_THROTTLE_MS: "86400000" } }),
      (h) => h.service.stop(),
      (e) => e.close(),
    );
    const helloBase = hello.url.replace(/\/hello$/, "");
    const gateways: GatewayProcess[] = [];
    let background: ReturnType<typeof spawn> | undefined;
    const listener = new pg.Client({ connectionString: env.database.url });
    const closers: (() => Promise<unknown>)[] = [];
    try {
      const nats = env.nats as NonNullable<typeof env.nats>;
      const started = await Promise.allSettled(
        ["gateway-a", "gateway-b"].map((name) =>
          startGatewayProcess({
            name,
            upstreamUrl: helloBase,
            apiUrl: env.api.baseUrl,
            natsUrl: nats.url,
            subjectPrefix: nats.subjectPrefix,
            nodeFlags: profileFlags(context, name),
          }),
        ),
      );
      for (const result of started) if (result.status === "fulfilled") gateways.push(result.value);
      for (const result of started) if (result.status === "rejected") throw result.reason;
      const gatewayA = gateways[0] as GatewayProcess;
      await env.client.setMember(ORG, OWNER, "owner");
      const jwt = await env.client.jwtHeaders(OWNER, ORG);

      // Throughput: one cached key through gateway A vs hello-world direct.
      const cached = await env.client.createKey(jwt, "throughput");
      const viaGateway = {
        url: `${gatewayA.baseUrl}/hello`,
        headers: { authorization: `Bearer ${cached}` },
        connections: THROUGHPUT_CONNECTIONS,
      };
      const seconds = size(context, 5, 1);
      context.log("throughput warm-up");
      await load({ ...viaGateway, duration: size(context, 3, 1) });
      await load({ url: hello.url, connections: THROUGHPUT_CONNECTIONS, duration: 1 });
      /** One baseline round: hello-world direct, with its CPU. */
      const helloRound = async () =>
        assertClean(
          "hello-world",
          await withCpu(hello.service, () =>
            load({ url: hello.url, connections: THROUGHPUT_CONNECTIONS, duration: seconds }),
          ),
        );
      const rounds = await alternate(size(context, 3, 2), helloRound, async () =>
        assertClean("gateway", await withCpu(gatewayA.service, () => load({ ...viaGateway, duration: seconds }))),
      );
      const helloRate = median(rounds.baseline.map((r) => r.okPerSecond));
      const gatewayRate = median(rounds.target.map((r) => r.okPerSecond));
      const helloCpu = median(rounds.baseline.map((r) => r.cpuMicrosPerRequest));
      const gatewayCpu = median(rounds.target.map((r) => r.cpuMicrosPerRequest));
      context.log(
        `hello-world ${helloRate.toFixed(0)} req/s (${helloCpu.toFixed(0)} µs CPU/req), ` +
          `via gateway ${gatewayRate.toFixed(0)} req/s (${gatewayCpu.toFixed(0)} µs CPU/req in the gateway)`,
      );

      /**
       * A further gateway process with `extraEnv`, alternated against hello-world like gateway A (in a quick run,
       * one round: a quick run is a smoke check that has to stay under 2 minutes, and these are variants of the
       * proxy figure, whose own rounds come first), then stopped.
       */
      const measureVariant = async (name: string, path: string, extraEnv: Record<string, string>) => {
        const variant = await startGatewayProcess({
          name,
          upstreamUrl: extraEnv.GATEWAY_MODE === "forward-auth" ? undefined : helloBase,
          apiUrl: env.api.baseUrl,
          natsUrl: nats.url,
          subjectPrefix: nats.subjectPrefix,
          nodeFlags: profileFlags(context, name),
          env: extraEnv,
        });
        try {
          const target = { ...viaGateway, url: `${variant.baseUrl}${path}` };
          await load({ ...target, duration: size(context, 3, 0.5) });
          const variantRounds = await alternate(size(context, 3, 1), helloRound, async () =>
            assertClean(name, await withCpu(variant.service, () => load({ ...target, duration: seconds }))),
          );
          const summary = {
            helloRate: median(variantRounds.baseline.map((r) => r.okPerSecond)),
            rate: median(variantRounds.target.map((r) => r.okPerSecond)),
            details: {
              connections: THROUGHPUT_CONNECTIONS,
              helloCpuMicrosPerRequest: median(variantRounds.baseline.map((r) => r.cpuMicrosPerRequest)),
              gatewayCpuMicrosPerRequest: median(variantRounds.target.map((r) => r.cpuMicrosPerRequest)),
              helloRounds: variantRounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
              gatewayRounds: variantRounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
              ...extraEnv,
            },
          };
          context.log(
            `${name}: hello-world ${summary.helloRate.toFixed(0)} req/s, ${name} ${summary.rate.toFixed(0)} req/s ` +
              `(${summary.details.gatewayCpuMicrosPerRequest.toFixed(0)} µs CPU/req)`,
          );
          return summary;
        } finally {
          await variant.stop();
        }
      };
      // The proxy with upstream pipelining (a setting with a trade-off, so a figure of its own).
      const pipelined = await measureVariant("gateway-pipelined", "/hello", {
        UPSTREAM_PIPELINING: String(PIPELINED),
      });
      // Forward-auth mode (a separate figure, not the proxy's): answering 200 + identity headers, as an Envoy
      // ext_authz / nginx auth_request / Traefik ForwardAuth service; nothing goes upstream.
      const forwardAuth = await measureVariant("gateway-forward-auth", "/verify", { GATEWAY_MODE: "forward-auth" });
      // The floor under the proxy figure: the same transport (node:http, an undici pool) with no code of its own.
      const bareProxy = await measureBareProxy(helloBase, helloRound, seconds, context.quick);
      context.log(
        `proxy with no code: hello-world ${bareProxy.helloRate.toFixed(0)} req/s, bare proxy ${bareProxy.rate.toFixed(0)} req/s ` +
          `(${bareProxy.details.proxyCpuMicrosPerRequest.toFixed(0)} µs CPU/req)`,
      );

      // Revocation under background load.
      const backgroundKeys: string[] = [];
      for (let i = 0; i < 20; i++) backgroundKeys.push(await env.client.createKey(jwt, `background-${i}`));
      const rate = size(context, 500, 300);
      background = spawn(process.execPath, ["--import", "tsx", "bench/micro/background-load.ts"], {
        cwd: REPO_ROOT,
        env: {
          ...process.env,
          BENCH_TARGETS: JSON.stringify(gateways.map((g) => ({ url: `${g.baseUrl}/hello`, keys: backgroundKeys }))),
          BENCH_RATE: String(rate),
        },
        stdio: ["ignore", "pipe", "inherit"],
      });
      const backgroundProcess = background;
      const unregisterBackground = onInterrupt(async () => backgroundProcess.kill("SIGKILL"));
      void new Promise((resolve) => backgroundProcess.once("exit", resolve)).then(unregisterBackground);
      let backgroundOutput = "";
      background.stdout?.on("data", (chunk: Buffer) => {
        backgroundOutput += chunk.toString();
      });
      // The commit clock: Postgres delivers a NOTIFY sent inside a transaction when it commits. The API itself sends
      // none inside its transactions (it notifies the log's readers after commits), so the benchmark adds a trigger
      // on its own database that notifies inside the transaction appending KeyRevoked, with the key's name.
      await sql
        .raw(`CREATE FUNCTION bench_notify_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN PERFORM pg_notify('keyledger_bench_revoked', NEW.data->>'name'); RETURN NULL; END $$`)
        .execute(env.database.db);
      await sql
        .raw(`CREATE TRIGGER bench_notify_revoked AFTER INSERT ON events FOR EACH ROW
                WHEN (NEW.event_type = 'KeyRevoked') EXECUTE FUNCTION bench_notify_revoked()`)
        .execute(env.database.db);
      await listener.connect();
      await listener.query("LISTEN keyledger_bench_revoked");
      const committedAtByName = new Map<string, number>();
      listener.on("notification", (message) => {
        if (message.payload && !committedAtByName.has(message.payload)) {
          committedAtByName.set(message.payload, performance.now());
        }
      });
      // Where the time goes: when each KeyRevoked reaches a plain NATS subscriber here (as it reaches the gateways),
      // subscribed only for revocations after the measured ones: a subscriber is one more process for NATS to wake
      // on each event, on the same 2 cores (side runs: measured with it, the p50 was 0.1-0.3 ms higher).
      const revokedOnNats = new Map<string, number>();
      const natsLink = new NatsLink({ servers: nats.url, name: "keyledger-bench-observer" });
      closers.push(() => natsLink.close());
      const nc = await natsLink.whenConnected();
      const observeRevocations = async () => {
        const subscription = nc?.subscribe(eventSubjectFilter(nats.subjectPrefix), {
          callback: (error, msg) => {
            if (error) return;
            const event = decodeEventMessage(msg.data);
            const name = (event?.data as { name?: unknown } | undefined)?.name;
            if (event?.type === "KeyRevoked" && typeof name === "string" && !revokedOnNats.has(name)) {
              revokedOnNats.set(name, performance.now());
            }
          },
        });
        await nc?.flush();
        return subscription;
      };
      await sleep(size(context, 3000, 1000)); // background keys' first uses (and their KeyUsed) happen now
      // The floor of one NATS hop here, under the same load: a publish to a subscription on another connection of
      // this process (no application code on either side).
      const natsHop = await natsHopLatencies(nats.url, nc, size(context, 300, 50));
      context.log(
        `one NATS hop (publish → callback, same process): p50 ${percentile(natsHop, 50).toFixed(2)} ms, ` +
          `p99 ${percentile(natsHop, 99).toFixed(2)} ms`,
      );
      const probes = gateways.map((gateway) => HttpProbe.forUrl(`${gateway.baseUrl}/hello`));
      closers.push(async () => {
        for (const probe of probes) probe.close();
      });
      const samples: number[] = [];
      const bounds: number[] = [];
      const iterations = size(context, 100, 5);
      // The first revocations run code no request has run before (the API's revoke, the gateways' handling of
      // KeyRevoked and their 401 answer), compiled on first call: measured as the rest, they are the slowest (in the
      // run of 2026-12-04 10:08, 5 of the 6 samples over 10 ms came from the first 14 keys). They are not counted.
      const warmUpIterations = size(context, 10, 2);
      // After the measured revocations, a few more with the NATS observer subscribed, for the commit → NATS figure.
      const observedIterations = size(context, 20, 3);
      context.log(
        `revocation: ${iterations} keys after ${warmUpIterations} not counted, then ${observedIterations} observed on ` +
          `NATS, background ${rate} req/s per gateway`,
      );
      /** Creates the key, has both gateways cache it, revokes it while probing both; the commit and the 401s. */
      const revokeWhileProbing = async (name: string) => {
        const key = await env.client.createKey(jwt, name);
        for (const [g, gateway] of gateways.entries()) {
          for (let k = 0; k < 2; k++) {
            const first = await (probes[g] as HttpProbe).get(key);
            if (first.status !== 200) throw new Error(`new key answered ${first.status} at ${gateway.service.name}`);
          }
        }
        // The key's first use (the gateways' misses asked the API) is recorded as KeyUsed before the revoke; later
        // uses are throttled for a day, so the revoke is the only commit in the window.
        await sleep(300);
        const deadline = performance.now() + 5000;
        const probing = probes.map((probe) => untilRejected(probe, key, deadline));
        const revokeSentAt = performance.now();
        await env.client.revokeKey(jwt, name);
        const rejections = await Promise.all(probing);
        // The notification can reach this process after the 401s did (both are timestamped on arrival).
        for (let wait = 0; !committedAtByName.has(name) && wait < 100; wait++) await sleep(10);
        const committedAt = committedAtByName.get(name);
        if (committedAt === undefined || committedAt < revokeSentAt) throw new Error("no commit notification");
        return { committedAt, rejections };
      };
      for (let i = -warmUpIterations; i < iterations; i++) {
        const counted = i >= 0;
        const { committedAt, rejections } = await revokeWhileProbing(
          counted ? `revoked-${i}` : `revoked-warm-up-${-i}`,
        );
        if (!counted) continue;
        for (const rejection of rejections) {
          samples.push(rejection.at - committedAt);
          // The request that got the first 401 was sent after the rejection became possible or before: this is
          // the other bound (negative when it left before the commit was seen here).
          bounds.push(rejection.sentAt - committedAt);
        }
      }
      const onNats: number[] = [];
      const observer = await observeRevocations();
      for (let i = 0; i < observedIterations; i++) {
        const name = `revoked-observed-${i}`;
        const { committedAt } = await revokeWhileProbing(name);
        const seenOnNats = revokedOnNats.get(name);
        if (seenOnNats !== undefined) onNats.push(seenOnNats - committedAt);
      }
      observer?.unsubscribe();
      for (const probe of probes) probe.close();
      background.kill("SIGTERM");
      await new Promise((resolve) => background?.once("exit", resolve));
      background = undefined;
      const backgroundResults = backgroundOutput.trim()
        ? (JSON.parse(backgroundOutput.trim().split("\n").pop() as string) as { ok: number; non2xx: number }[])
        : [];
      const p50 = percentile(samples, 50);
      const p99 = percentile(samples, 99);
      const max = percentile(samples, 100);
      context.log(`propagation samples (ms): ${samples.map((s) => s.toFixed(1)).join(" ")}`);
      context.log(
        `commit → KeyRevoked on NATS: p50 ${percentile(onNats, 50).toFixed(2)} ms, p99 ${percentile(onNats, 99).toFixed(2)} ms`,
      );
      context.log(
        `propagation p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, max ${max.toFixed(2)} ms ` +
          `(first rejected request sent: p50 ${percentile(bounds, 50).toFixed(2)} ms, p99 ${percentile(bounds, 99).toFixed(2)} ms)`,
      );
      const details = {
        samples: samples.length,
        warmUpRevocationsNotCounted: warmUpIterations,
        revocationsObservedOnNatsNotCounted: observedIterations,
        gateways: gateways.length,
        backgroundRatePerGateway: rate,
        backgroundOk: backgroundResults.map((r) => r.ok).join(" "),
        backgroundNon2xx: backgroundResults.map((r) => r.non2xx).join(" "),
        commitToNatsP50Ms: percentile(onNats, 50),
        commitToNatsP99Ms: percentile(onNats, 99),
        natsHopP50Ms: percentile(natsHop, 50),
        natsHopP99Ms: percentile(natsHop, 99),
        lowerBoundP50Ms: percentile(bounds, 50),
        lowerBoundP99Ms: percentile(bounds, 99),
      };
      const gatewayRatio = gatewayRate / helloRate;
      const figures: Figure[] = [
        {
          id: "gateway-throughput",
          label: "verify through the gateway (cached key → hello-world upstream, default settings), req/s",
          value: gatewayRate,
          unit: "req/s",
          baseline: { label: "hello-world", value: helloRate, unit: "req/s" },
          ratio: gatewayRatio,
          goal: "≥ 0.8×",
          pass: gatewayRatio >= 0.8,
          boundBy: `CPU, mostly socket writes: the proxy hop is a second HTTP exchange (to upstream and back) per request, ${gatewayCpu.toFixed(0)} µs CPU per request in the gateway against hello-world's ${helloCpu.toFixed(0)}, and 3 processes share the 2 cores where the baseline has 2; a proxy on the same transport with no code of its own reaches ${(bareProxy.rate / bareProxy.helloRate).toFixed(2)}× (${bareProxy.details.proxyCpuMicrosPerRequest.toFixed(0)} µs, next row but one)`,
          details: {
            connections: THROUGHPUT_CONNECTIONS,
            helloCpuMicrosPerRequest: helloCpu,
            gatewayCpuMicrosPerRequest: gatewayCpu,
            helloRounds: rounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
            gatewayRounds: rounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
          },
        },
        {
          id: "gateway-throughput-pipelined",
          label: `verify through the gateway with UPSTREAM_PIPELINING=${PIPELINED} (otherwise as above), req/s`,
          value: pipelined.rate,
          unit: "req/s",
          baseline: { label: "hello-world", value: pipelined.helloRate, unit: "req/s" },
          ratio: pipelined.rate / pipelined.helloRate,
          goal: "≥ 0.8×",
          pass: pipelined.rate / pipelined.helloRate >= 0.8,
          boundBy:
            "as above, with the requests of one event-loop turn sharing an upstream write and read (about 3 socket syscalls per request instead of 4)",
          details: pipelined.details,
        },
        {
          id: "gateway-forward-auth",
          label: "forward-auth mode: GET answered 200 + identity headers (cached key, no upstream), req/s",
          value: forwardAuth.rate,
          unit: "req/s",
          baseline: { label: "hello-world", value: forwardAuth.helloRate, unit: "req/s" },
          ratio: forwardAuth.rate / forwardAuth.helloRate,
          goal: "–",
          pass: null,
          boundBy: "CPU in Node: one HTTP exchange and a cache hit, like hello-world's one route",
          details: forwardAuth.details,
        },
        {
          id: "gateway-bare-proxy-floor",
          label: "a reverse proxy with no code (node:http + the same undici pool, no key check) → hello-world, req/s",
          value: bareProxy.rate,
          unit: "req/s",
          baseline: { label: "hello-world", value: bareProxy.helloRate, unit: "req/s" },
          ratio: bareProxy.rate / bareProxy.helloRate,
          goal: "–",
          pass: null,
          boundBy:
            "CPU: node's HTTP server and undici's client, four socket operations per request, and the upstream on the same 2 cores; the ceiling for the proxy figure",
          details: bareProxy.details,
        },
        {
          id: "revocation-p50",
          label: "revocation commit → rejected at each of 2 gateways, p50",
          value: p50,
          unit: "ms",
          goal: "≤ 1 ms",
          pass: p50 <= 1,
          boundBy: `wake-ups: the API reading its COMMIT reply and publishing (commit → a plain NATS subscriber, in ${observedIterations} revocations after the measured ones: p50 ${percentile(onNats, 50).toFixed(2)} ms; one bare NATS hop: ${percentile(natsHop, 50).toFixed(2)} ms), the gateway reading it, and the probe's next round trip (a 401 counts when its first bytes arrive; the probe that got it was sent at p50 ${percentile(bounds, 50).toFixed(2)} ms)`,
          details,
        },
        {
          id: "revocation-p99",
          label: "revocation commit → rejected, p99",
          value: p99,
          unit: "ms",
          goal: "≤ 10 ms",
          pass: p99 <= 10,
          boundBy: "the same path when one of the 6 processes waits for one of the 2 cores",
          details,
        },
        {
          id: "revocation-max",
          label: "revocation commit → rejected, max",
          value: max,
          unit: "ms",
          goal: "–",
          pass: null,
          boundBy: "as p99",
          details,
        },
      ];
      return figures;
    } finally {
      background?.kill("SIGKILL");
      await listener.end().catch(() => {});
      for (const close of closers) await close().catch(() => {});
      for (const gateway of gateways) await gateway.stop();
      await env.close();
      await hello.service.stop();
    }
  },
};
