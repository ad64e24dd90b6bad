import { sql } from "kysely";
import { ApiClient, type ApiProcess, startApiProcess } from "./api";
import { onInterrupt } from "./cleanup";
import { type BenchDatabase, createBenchDatabase } from "./database";
import { benchNatsNames, deleteBenchStream, type NatsNames } from "./nats";
import type { BenchContext } from "./scenario";

export type BenchEnvironment = {
  database: BenchDatabase;
  nats: (NatsNames & { url: string }) | undefined;
  api: ApiProcess;
  client: ApiClient;
  /** Another API process on the same database and stream (replicas). */
  startReplica(name: string, nodeFlags?: string[]): Promise<ApiProcess>;
  close(): Promise<void>;
};

/**
 * What most scenarios need: a database of their own (`keyledger_bench_<label>_<random>`, migrated), a JetStream
 * stream and subject prefix of their own on the shared NATS server, and the API on them in its own process. `close()`
 * stops every process it started and drops the database and the stream.
 */
export async function startBenchEnvironment(
  context: BenchContext,
  label: string,
  options: {
    nats?: boolean;
    nodeFlags?: string[];
    env?: Record<string, string>;
    /**
     * Runs on the migrated database before the API starts (bulk seeding). Whatever it appends counts as old
     * history: the relay's checkpoint is moved past it, so the API does not republish it during the measurement.
     */
    seed?: (database: BenchDatabase) => Promise<void>;
  } = {},
): Promise<BenchEnvironment> {
  const database = await createBenchDatabase(context.adminDatabaseUrl, label);
  const nats = options.nats === false ? undefined : { url: context.natsUrl, ...benchNatsNames(label) };
  const unregisterStream = nats ? onInterrupt(() => deleteBenchStream(nats.url, nats.streamName)) : () => {};
  const processes: ApiProcess[] = [];
  const cleanup = async () => {
    for (const p of processes.reverse()) await p.stop();
    await database.drop();
    unregisterStream();
    if (nats) await deleteBenchStream(nats.url, nats.streamName).catch(() => {});
  };
  const start = async (name: string, nodeFlags?: string[]) => {
    const api = await startApiProcess({
      name,
      databaseUrl: database.url,
      issuer: context.issuer,
      nats,
      nodeFlags,
      env: options.env,
    });
    processes.push(api);
    return api;
  };
  try {
    if (options.seed) {
      await options.seed(database);
      if (nats) await fastForwardCheckpoint(database, `nats-relay:${nats.streamName}`);
    }
    const api = await start("api", options.nodeFlags);
    return {
      database,
      nats,
      api,
      client: new ApiClient(api.baseUrl, context.issuer),
      startReplica: start,
      close: cleanup,
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/** Stores a log reader's checkpoint at the last event of the log, as if it had handled all of it. */
export async function fastForwardCheckpoint(database: BenchDatabase, name: string): Promise<void> {
  await sql`
    INSERT INTO checkpoints (name, transaction_id, global_position, updated_at)
    SELECT ${name}, transaction_id, global_position, now() FROM events
     ORDER BY transaction_id DESC, global_position DESC LIMIT 1
    ON CONFLICT (name) DO UPDATE
      SET transaction_id = EXCLUDED.transaction_id, global_position = EXCLUDED.global_position, updated_at = now()`.execute(
    database.db,
  );
}
