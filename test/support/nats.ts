import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeEventMessage, deleteEventStream, type EventMessage } from "@keyledger/nats-bus";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { sql } from "kysely";
import { inject } from "vitest";
import { connectTestDatabase } from "./database";

/** The shared NATS server of this machine (JetStream on). Tests never reconfigure it: they use unique streams. */
export const SHARED_NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";

export type TestEventStream = {
  natsUrl: string;
  streamName: string;
  subjectPrefix: string;
  /** Deletes the stream. */
  cleanup(): Promise<void>;
};

/** A stream name and subject prefix unique to this test (`KEYLEDGER_TEST_<rand>`, `kltest<rand>.*.*`). */
export function testEventStream(natsUrl = SHARED_NATS_URL): TestEventStream {
  const rand = randomBytes(5).toString("hex");
  const streamName = `KEYLEDGER_TEST_${rand}`;
  return {
    natsUrl,
    streamName,
    subjectPrefix: `kltest${rand}`,
    async cleanup() {
      const nc = await connect({ servers: natsUrl, timeout: 2_000 }).catch(() => undefined);
      if (!nc) return;
      try {
        await deleteEventStream(nc, streamName);
      } finally {
        await nc.close();
      }
    },
  };
}

/**
 * The API's NATS options on `stream`, with its relay on the run's shared test database (its own session, as in
 * production): what tests pass as `startApi({ nats })`.
 */
export function apiNatsOptions(stream: TestEventStream) {
  return {
    url: stream.natsUrl,
    streamName: stream.streamName,
    subjectPrefix: stream.subjectPrefix,
    relay: { databaseUrl: inject("databaseUrl") },
  };
}

/**
 * Stores the API relay's checkpoint for `stream` at the end of the log as it is now (unless it has one), so the relay
 * publishes what is appended from here on: the run's database holds every other test file's events, and
 * republishing that history under the test's subjects would flood its subscribers.
 */
export async function startRelayAtLogHead(stream: TestEventStream): Promise<void> {
  const admin = connectTestDatabase(1);
  try {
    await sql`
      INSERT INTO checkpoints (name, transaction_id, global_position, updated_at)
      SELECT ${`nats-relay:${stream.streamName}`}, transaction_id, global_position, now() FROM events
       ORDER BY transaction_id DESC, global_position DESC LIMIT 1
      ON CONFLICT (name) DO NOTHING`.execute(admin);
  } finally {
    await admin.destroy();
  }
}

/** Every message in the stream whose subject matches `filter`, in stream order, with its event decoded. */
export async function readStreamEvents(
  natsUrl: string,
  streamName: string,
  filter: string,
): Promise<{ subject: string; seq: number; event: EventMessage | undefined }[]> {
  const nc = await connect({ servers: natsUrl, timeout: 2_000 });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(streamName, { subjects_filter: filter }).catch((error: Error) => {
      if (error.name === "StreamNotFoundError" || /stream not found/i.test(error.message)) return undefined;
      throw error;
    });
    if (!info) return [];
    const total = Object.values(info.state.subjects ?? {}).reduce((sum, n) => sum + n, 0);
    const out: { subject: string; seq: number; event: EventMessage | undefined }[] = [];
    if (total === 0) return out;
    const consumer = await jetstream(nc).consumers.get(streamName, { filter_subjects: filter });
    while (out.length < total) {
      const batch = await consumer.fetch({ max_messages: total - out.length, expires: 2_000 });
      let received = 0;
      for await (const m of batch) {
        received += 1;
        out.push({ subject: m.subject, seq: m.seq, event: decodeEventMessage(m.data) });
      }
      if (received === 0) break;
    }
    return out;
  } finally {
    await nc.close();
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function natsServerBinary(): string {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  return existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server";
}

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export type OwnNatsServer = {
  url: string;
  port: number;
  /** Starts the server (again) on the same port and store directory; resolves once it accepts connections. */
  start(): Promise<void>;
  /** Stops it (SIGTERM) and waits for the process to exit. */
  stop(): Promise<void>;
  /** Freezes it (SIGSTOP): connections stay open and nothing answers, as a hung server. */
  pause(): void;
  /** Lets a frozen server run again (SIGCONT). */
  resume(): void;
  /** Stops it and removes its store directory. */
  close(): Promise<void>;
};

/** A private `nats-server -js` on a free port with its store in a temp dir, for fault tests (stop/start). */
export async function startNatsServer(): Promise<OwnNatsServer> {
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), "keyledger-nats-"));
  let child: ChildProcess | undefined;
  const server: OwnNatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    async start() {
      if (child) return;
      const proc = spawn(natsServerBinary(), ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], {
        stdio: "ignore",
      });
      child = proc;
      let exited = false;
      proc.once("exit", () => {
        exited = true;
      });
      for (let i = 0; i < 200; i++) {
        if (exited) throw new Error("nats-server exited at start");
        if (await portAccepts(port)) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error("nats-server did not start");
    },
    async stop() {
      const proc = child;
      child = undefined;
      if (!proc || proc.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
      });
    },
    pause() {
      child?.kill("SIGSTOP");
    },
    resume() {
      child?.kill("SIGCONT");
    },
    async close() {
      server.resume();
      await server.stop();
      await rm(storeDir, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}
