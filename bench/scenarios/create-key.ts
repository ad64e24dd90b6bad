import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type autocannon from "autocannon";
import { sql } from "kysely";
import pg from "pg";
import type { BenchDatabase } from "../lib/database";
import { startBenchEnvironment } from "../lib/environment";
import { alternate, assertClean, type LoadResult, load, median, percentile, withCpu } from "../lib/load";
import { backendsCpuBetween, databaseBackendsCpu } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";
import { profileFlags } from "./current-key";

const CONNECTIONS = 32;
/** The API's own pool size (services/api/src/database.ts default): the baseline gets the same. */
const POOL_SIZE = 20;

/** CPU per operation (µs) of the processes doing it, where this machine can see them (0 for Postgres elsewhere). */
type CpuPerOperation = { postgresMicros: number; clientMicros: number };

/**
 * The write ceiling: `CONNECTIONS` concurrent clients, each running BEGIN; two INSERTs; COMMIT on a pool of the
 * API's size, for `seconds`. Returns transactions/s, latency percentiles, and the CPU per transaction of this
 * process (the pg client) and of the pool's Postgres backends.
 */
async function rawTransactions(
  database: BenchDatabase,
  seconds: number,
): Promise<LoadResult & { cpu: CpuPerOperation }> {
  const databaseUrl = database.url;
  const pool = new pg.Pool({ connectionString: databaseUrl, max: POOL_SIZE });
  pool.on("error", () => {});
  const latencies: number[] = [];
  let errors = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const payload = JSON.stringify({ name: "bench", permissions: ["write:sandboxes"], maskedValue: "dtn***abc" });
  async function worker() {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        await client.query("INSERT INTO bench_write_ceiling (id, stream_id, data) VALUES ($1, $2, $3)", [
          randomUUID(),
          `api_key:org/user/${t0}`,
          payload,
        ]);
        await client.query("INSERT INTO bench_write_ceiling (id, stream_id, data) VALUES ($1, $2, $3)", [
          randomUUID(),
          `read_model/${t0}`,
          payload,
        ]);
        await client.query("COMMIT");
        latencies.push(performance.now() - t0);
      } catch {
        errors++;
        await client.query("ROLLBACK").catch(() => {});
      } finally {
        client.release();
      }
    }
  }
  const backendsBefore = await databaseBackendsCpu(database.name);
  const clientBefore = process.cpuUsage();
  await Promise.all(Array.from({ length: CONNECTIONS }, worker));
  const elapsed = (performance.now() - started) / 1000;
  const client = process.cpuUsage(clientBefore);
  const postgresMs = backendsCpuBetween(backendsBefore, await databaseBackendsCpu(database.name));
  await pool.end();
  const transactions = Math.max(1, latencies.length);
  return {
    okPerSecond: latencies.length / elapsed,
    ok: latencies.length,
    non2xx: 0,
    errors,
    timeouts: 0,
    seconds: elapsed,
    latencyMs: {
      p50: percentile(latencies, 50),
      p90: percentile(latencies, 90),
      p99: percentile(latencies, 99),
      max: percentile(latencies, 100),
      mean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
    },
    cpu: {
      postgresMicros: (postgresMs * 1000) / transactions,
      clientMicros: (client.user + client.system) / transactions,
    },
  };
}

async function committedTransactions(database: BenchDatabase): Promise<number> {
  const result = await sql<{ commits: string }>`
    SELECT xact_commit::text AS commits FROM pg_stat_database WHERE datname = ${database.name}`.execute(database.db);
  return Number(result.rows[0]?.commits ?? 0);
}

/** `POST /api/api-keys` at 32 connections ÷ raw pg two-row transactions/s at 32 clients; p99 latency. */
export const createKeyScenario: Scenario = {
  id: "create-key",
  title: "POST /api/api-keys at 32 connections vs a raw pg two-insert transaction",
  async run(context) {
    const env = await startBenchEnvironment(context, "create", { nodeFlags: profileFlags(context, "create-key") });
    const { database, api, client } = env;
    await sql
      .raw("CREATE TABLE bench_write_ceiling (id uuid PRIMARY KEY, stream_id text NOT NULL, data jsonb NOT NULL)")
      .execute(database.db);
    try {
      // Several dashboard users of one organization create keys at once (one user per connection slot).
      const users = Array.from({ length: Number(process.env.BENCH_CREATE_USERS ?? 8) }, (_, i) => `user-${i}`);
      const headers: Record<string, string>[] = [];
      for (const user of users) {
        await client.setMember("org-bench", user, "owner");
        headers.push({ ...(await client.jwtHeaders(user, "org-bench")), "content-type": "application/json" });
      }
      let counter = 0;
      const run = randomUUID().slice(0, 8);
      const requests: autocannon.Request[] = [
        {
          method: "POST",
          path: "/api/api-keys",
          setupRequest: (request) => {
            counter++;
            return {
              ...request,
              headers: headers[counter % headers.length],
              body: JSON.stringify({ name: `key-${run}-${counter}`, permissions: ["write:sandboxes"] }),
            };
          },
        },
      ];
      /** Creates for `seconds`, with the CPU per create of Postgres (all of the database's backends: the API's
       * pool and the log's readers) and of this process (the load generator). */
      const creates = async (seconds: number) => {
        const backendsBefore = await databaseBackendsCpu(database.name);
        const clientBefore = process.cpuUsage();
        const result = assertClean(
          "POST /api/api-keys",
          await load({ url: api.baseUrl, connections: CONNECTIONS, duration: seconds, requests }),
        );
        const client = process.cpuUsage(clientBefore);
        const postgresMs = backendsCpuBetween(backendsBefore, await databaseBackendsCpu(database.name));
        const cpu: CpuPerOperation = {
          postgresMicros: (postgresMs * 1000) / result.ok,
          clientMicros: (client.user + client.system) / result.ok,
        };
        return { ...result, cpu };
      };
      const seconds = size(context, 5, 1);
      context.log("warm-up");
      await rawTransactions(database, 1);
      await creates(size(context, 3, 1));
      const rounds = await alternate(
        size(context, 3, 2),
        async () => assertClean("raw pg transaction", await rawTransactions(database, seconds)),
        () => withCpu(api.service, () => creates(seconds)),
      );
      const baselineRate = median(rounds.baseline.map((r) => r.okPerSecond));
      const createRate = median(rounds.target.map((r) => r.okPerSecond));
      const p99 = median(rounds.target.map((r) => r.latencyMs.p99));
      const p50 = median(rounds.target.map((r) => r.latencyMs.p50));
      const ratio = createRate / baselineRate;
      context.log(`raw tx ${baselineRate.toFixed(0)}/s, creates ${createRate.toFixed(0)}/s, p99 ${p99} ms`);
      const apiCpuMicrosPerCreate = median(rounds.target.map((r) => r.cpuMicrosPerRequest));
      const postgresMicrosPerCreate = median(rounds.target.map((r) => r.cpu.postgresMicros));
      const loadGeneratorMicrosPerCreate = median(rounds.target.map((r) => r.cpu.clientMicros));
      const postgresMicrosPerTx = median(rounds.baseline.map((r) => r.cpu.postgresMicros));
      const clientMicrosPerTx = median(rounds.baseline.map((r) => r.cpu.clientMicros));
      // Transactions Postgres committed per create, all writers included (command, relay checkpoint, sealer).
      const commitsBefore = await committedTransactions(database);
      const counted = await load({
        url: api.baseUrl,
        connections: CONNECTIONS,
        duration: size(context, 3, 1),
        requests,
      });
      await sleep(1200); // the statistics are flushed about once a second
      const commitsPerCreate =
        counted.ok > 0 ? ((await committedTransactions(database)) - commitsBefore) / counted.ok : Number.NaN;
      const µs = (value: number) => `${value.toFixed(0)} µs`;
      const cpuPerCreate =
        `API ${µs(apiCpuMicrosPerCreate)}, Postgres ${µs(postgresMicrosPerCreate)}, ` +
        `load generator ${µs(loadGeneratorMicrosPerCreate)}`;
      const cpuPerTx = `pg client ${µs(clientMicrosPerTx)}, Postgres ${µs(postgresMicrosPerTx)}`;
      context.log(
        `CPU per create: ${cpuPerCreate}; per raw tx: ${cpuPerTx}; ${commitsPerCreate.toFixed(2)} commits per create`,
      );
      const details = {
        apiCpuMicrosPerCreate,
        postgresMicrosPerCreate,
        loadGeneratorMicrosPerCreate,
        postgresMicrosPerTx,
        clientMicrosPerTx,
        commitsPerCreate,
        connections: CONNECTIONS,
        rounds: rounds.target.length,
        secondsPerRound: seconds,
        baselineP99Ms: median(rounds.baseline.map((r) => r.latencyMs.p99)),
        createRounds: rounds.target.map((r) => Math.round(r.okPerSecond)).join(" "),
        baselineRounds: rounds.baseline.map((r) => Math.round(r.okPerSecond)).join(" "),
      };
      const figures: Figure[] = [
        {
          id: "create-key-throughput",
          label: "`POST /api/api-keys` creates/s, 32 connections",
          value: createRate,
          unit: "creates/s",
          baseline: { label: "raw pg 2-insert tx", value: baselineRate, unit: "tx/s" },
          ratio,
          goal: "≥ 0.5×",
          pass: ratio >= 0.5,
          boundBy:
            `CPU: both saturate the 2 cores, so the ratio follows the CPU each needs. Per create: ${cpuPerCreate}; ` +
            `per raw transaction: ${cpuPerTx}. A create is one self-committing statement (the guarded append with its ` +
            "read-model row), the HTTP exchange, the fast-path publish, and in the API the relay's acknowledged " +
            "republish, the verifier's copies of the event and the sealer",
          details,
        },
        {
          id: "create-key-p99",
          label: "`POST /api/api-keys` p99 latency, 32 connections",
          value: p99,
          unit: "ms",
          baseline: { label: "raw pg tx p99", value: details.baselineP99Ms, unit: "ms" },
          goal: "≤ 50 ms",
          pass: p99 <= 50,
          boundBy: "queueing at 32 connections behind the throughput above",
          details: { p50Ms: p50 },
        },
      ];
      return figures;
    } finally {
      await env.close();
    }
  },
};
