import { type ChildProcess, spawn } from "node:child_process";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createPostgresDatabase } from "@keyledger/api";
import { type Kysely, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { createScratchDatabase } from "../support/database";
import { startNatsServer, testEventStream } from "../support/nats";
import { startTestIssuer, type TestIssuer } from "../support/oidc-issuer";

const ROOT = join(import.meta.dirname, "..", "..");
const INTERNAL_TOKEN = "sigterm-test-internal-token-0123";

/**
 * Graceful shutdown of the real entry point (services/api/src/main.ts, as `pnpm start` runs it): on SIGTERM the
 * API stops accepting connections, finishes the request in flight, flushes the pending `KeyUsed`, closes the
 * pool and exits 0 (close-with-grace exits 1 if that takes more than 10 s).
 */
describe("SIGTERM", () => {
  let issuer: TestIssuer;
  let db: Kysely<unknown>;
  let child: ChildProcess | undefined;
  const output: string[] = [];

  beforeAll(async () => {
    issuer = await startTestIssuer();
    db = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
  });
  afterAll(async () => {
    if (child && child.exitCode === null) child.kill("SIGKILL");
    await db?.destroy();
    await issuer?.close();
  });

  async function startService(extraEnv: Record<string, string> = {}): Promise<{ baseUrl: string; port: number }> {
    output.length = 0;
    child = spawn(process.execPath, ["--import", "tsx", "services/api/src/main.ts"], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: inject("databaseUrl"),
        OIDC_ISSUER: issuer.issuer,
        OIDC_JWKS_URL: issuer.jwksUrl,
        OIDC_AUDIENCE: issuer.audience,
        INTERNAL_API_TOKEN: INTERNAL_TOKEN,
        KEY_USED_THROTTLE_MS: "0",
        PORT: "0",
        HOST: "127.0.0.1",
        LOG_LEVEL: "info",
        ...extraEnv,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const listening = new Promise<number>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output.push(chunk.toString());
        const port = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output.join(""))?.[1];
        if (port) resolve(Number(port));
      };
      child?.stdout?.on("data", onData);
      child?.stderr?.on("data", (chunk: Buffer) => output.push(chunk.toString()));
      child?.on("exit", (code) => reject(new Error(`API exited with ${code} before listening:\n${output.join("")}`)));
    });
    const port = await listening;
    return { baseUrl: `http://127.0.0.1:${port}`, port };
  }

  function exited(proc: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (proc.exitCode !== null) return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode });
    return new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  }

  /** Resolves with the whole raw HTTP response once the server closes or the body is complete. */
  function responseOf(socket: Socket): Promise<string> {
    return new Promise((resolve, reject) => {
      let data = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk) => {
        data += chunk;
        const length = Number(/content-length: (\d+)/i.exec(data)?.[1] ?? Number.NaN);
        const headerEnd = data.indexOf("\r\n\r\n");
        if (headerEnd >= 0 && Buffer.byteLength(data.slice(headerEnd + 4)) >= length) resolve(data);
      });
      socket.on("end", () => resolve(data));
      socket.on("error", reject);
    });
  }

  function refusesConnections(port: number): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(false);
      });
      socket.once("error", () => resolve(true));
    });
  }

  /** Makes a member owner of a new organization (internal route) and creates a key `name` with their JWT. */
  async function ownerWithKey(baseUrl: string, prefix: string, name: string) {
    const org = uniqueId(`${prefix}-org`);
    const owner = uniqueId(`${prefix}-owner`);
    const member = await fetch(`${baseUrl}/internal/organizations/${org}/members/${owner}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ role: "owner", permissions: [] }),
    });
    expect(member.status).toBe(204);
    const jwt = await issuer.token({ sub: owner });
    const created = await fetch(`${baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { authorization: `Bearer ${jwt}`, "x-daytona-organization-id": org, "content-type": "application/json" },
      body: JSON.stringify({ name, permissions: [] }),
    });
    expect(created.status).toBe(201);
    const { value } = (await created.json()) as { value: string };
    return { org, jwt, value };
  }

  it("stops accepting, finishes the request in flight, flushes KeyUsed, exits 0", async () => {
    const { baseUrl, port } = await startService();
    const { org, jwt, value } = await ownerWithKey(baseUrl, "sigterm", "used-at-shutdown");

    // A create whose body is still arriving when SIGTERM comes: headers sent, half the body held back.
    const body = JSON.stringify({ name: "in-flight", permissions: [] });
    const inFlight = connect(port, "127.0.0.1");
    await new Promise<void>((resolve) => inFlight.once("connect", () => resolve()));
    const inFlightResponse = responseOf(inFlight);
    inFlight.write(
      `POST /api/api-keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${jwt}\r\n` +
        `X-Daytona-Organization-ID: ${org}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body.slice(0, 10)}`,
    );
    await sleep(200);

    // A use of the key just before SIGTERM: its KeyUsed append runs after the response.
    const used = await fetch(`${baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${value}`, connection: "close" },
    });
    expect(used.status).toBe(200);

    const proc = child as ChildProcess;
    const exit = exited(proc);
    const signalledAt = Date.now();
    proc.kill("SIGTERM");

    // Stops accepting: new connections are refused while the in-flight request is still open.
    let refused = false;
    for (let i = 0; i < 100 && !refused; i++) {
      refused = await refusesConnections(port);
      if (!refused) await sleep(50);
    }
    expect(refused).toBe(true);
    expect(proc.exitCode).toBeNull(); // still finishing the request in flight

    inFlight.write(body.slice(10));
    const raw = await inFlightResponse;
    expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 201 Created");
    const createdInFlight = JSON.parse(raw.slice(raw.indexOf("\r\n\r\n") + 4)) as { name: string; value: string };
    expect(createdInFlight.name).toBe("in-flight");

    const { code, signal } = await exit;
    console.log(`SIGTERM to exit: ${Date.now() - signalledAt} ms (in-flight request held open for part of it)`);
    expect({ code, signal }, output.join("").slice(-2000)).toEqual({ code: 0, signal: null });

    // The in-flight create and the KeyUsed of the last use are in the log.
    const events = await sql<{ event_type: string; name: string }>`
      SELECT event_type, data->>'name' AS name FROM events
       WHERE data->>'organizationId' = ${org} ORDER BY global_position`.execute(db);
    expect(events.rows).toContainEqual({ event_type: "KeyCreated", name: "in-flight" });
    expect(events.rows).toContainEqual({ event_type: "KeyUsed", name: "used-at-shutdown" });
    expect(output.join("")).toContain("shutting down");
  });
  it("exits 0 within a few seconds when the NATS server hangs, with the last KeyUsed flushed", async () => {
    const nats = await startNatsServer();
    const stream = testEventStream(nats.url);
    try {
      const { baseUrl } = await startService({
        NATS_URL: nats.url,
        NATS_STREAM: stream.streamName,
        NATS_SUBJECT_PREFIX: stream.subjectPrefix,
      });
      const { org, value } = await ownerWithKey(baseUrl, "sigterm-nats", "used-before-the-hang");
      await sleep(500); // the relay has published the creation and the connection is idle

      // The server hangs (SIGSTOP): connections stay open, nothing answers; the client notices only after its
      // ping timeout (20 s), longer than the 10 s the process is given to stop.
      nats.pause();
      const used = await fetch(`${baseUrl}/api/api-keys/current`, {
        headers: { authorization: `Bearer ${value}`, connection: "close" },
      });
      expect(used.status).toBe(200);

      const proc = child as ChildProcess;
      const exit = exited(proc);
      const signalledAt = Date.now();
      proc.kill("SIGTERM");
      const { code, signal } = await exit;
      const tookMs = Date.now() - signalledAt;
      console.log(`SIGTERM to exit with NATS hung: ${tookMs} ms`);
      expect({ code, signal }, output.join("").slice(-2000)).toEqual({ code: 0, signal: null });
      expect(tookMs).toBeLessThan(8_000);
      const events = await sql<{ event_type: string; name: string }>`
        SELECT event_type, data->>'name' AS name FROM events
         WHERE data->>'organizationId' = ${org} ORDER BY global_position`.execute(db);
      expect(events.rows).toContainEqual({ event_type: "KeyUsed", name: "used-before-the-hang" });
    } finally {
      await nats.close();
    }
  }, 30_000);
  it("does not wait for the in-process projector's unit of work: stops accepting, flushes KeyUsed, exits 0", async () => {
    // A database of its own: the test holds a lock the projector waits for, which must not hold up other files.
    const scratch = await createScratchDatabase(2);
    const blocker = new pg.Client({ connectionString: scratch.url });
    try {
      const { baseUrl, port } = await startService({ DATABASE_URL: scratch.url });
      const { org, value } = await ownerWithKey(baseUrl, "sigterm-projector", "used-while-the-projector-works");

      // The projector's unit of work takes long (here: it waits for a row lock on its own state, as it would wait
      // for a rebuild's batch or swap on a large log).
      await sleep(1_500); // the projector has recorded its state rows
      await blocker.connect();
      await blocker.query("BEGIN");
      await blocker.query("SELECT * FROM projection_state FOR UPDATE");
      await sleep(1_500); // its next pass (one a second) waits for the lock

      const used = await fetch(`${baseUrl}/api/api-keys/current`, {
        headers: { authorization: `Bearer ${value}`, connection: "close" },
      });
      expect(used.status).toBe(200);
      const proc = child as ChildProcess;
      const exit = exited(proc);
      const signalledAt = Date.now();
      proc.kill("SIGTERM");

      let refused = false;
      for (let i = 0; i < 20 && !refused; i++) {
        refused = await refusesConnections(port);
        if (!refused) await sleep(50);
      }
      expect(refused, "new connections refused within a second of SIGTERM").toBe(true);
      const { code, signal } = await exit;
      const tookMs = Date.now() - signalledAt;
      console.log(`SIGTERM to exit with the projector busy: ${tookMs} ms`);
      expect({ code, signal }, output.join("").slice(-2000)).toEqual({ code: 0, signal: null });
      expect(tookMs).toBeLessThan(8_000);
      const events = await sql<{ event_type: string; name: string }>`
        SELECT event_type, data->>'name' AS name FROM events
         WHERE data->>'organizationId' = ${org} ORDER BY global_position`.execute(scratch.db);
      expect(events.rows).toContainEqual({ event_type: "KeyUsed", name: "used-while-the-projector-works" });
    } finally {
      await blocker.end().catch(() => {});
      await scratch.drop();
    }
  }, 30_000);
});
