import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { verifyLog } from "@keyledger/audit-log";
import { type Kysely, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";
import { writeKeyHistory } from "../support/key-history";
import { TcpProxy } from "../support/tcp-proxy";
import { until } from "../support/until";

const MAIN = fileURLToPath(new URL("../../services/projector/src/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../", import.meta.url));

async function sealed(db: Kysely<unknown>): Promise<{ events: number; seals: number }> {
  const { rows } = await sql<{ events: string; seals: string }>`
    SELECT (SELECT count(*) FROM events)::text AS events, (SELECT count(*) FROM event_seals)::text AS seals`.execute(
    db,
  );
  return { events: Number(rows[0]?.events), seals: Number(rows[0]?.seals) };
}

/**
 * The standalone projector with Postgres going away under it (a TCP proxy the test cuts and restores, the shared
 * server untouched): the process rides out the outage without crashing or restarting and finishes its work once
 * the database is back, with the hash chain intact.
 */
describe("projector: Postgres faults", () => {
  let scratch: ScratchDatabase;
  let proxy: TcpProxy;
  let proxiedUrl: string;
  let child: ChildProcess | undefined;
  const stderr: string[] = [];

  beforeAll(async () => {
    scratch = await createScratchDatabase(8);
    await writeKeyHistory(scratch.db, {
      organizations: ["org-f", "org-g"],
      usersPerOrganization: 2,
      writers: 4,
      operationsPerWriter: 50,
      seed: 8,
    });
    ({ proxy, url: proxiedUrl } = await TcpProxy.inFrontOfDatabase(scratch.url));
  });
  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await proxy?.close();
    await scratch?.drop();
  });

  it("survives the database being cut twice mid-work, then seals the whole log", async () => {
    const { events: total } = await sealed(scratch.db);
    expect(total).toBeGreaterThan(50);

    child = spawn(process.execPath, ["--import", "tsx", MAIN], {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: proxiedUrl,
        PORT: "0", // health endpoints on a free port: other projectors may run beside this one
        PROJECTOR_SEAL_BATCH_SIZE: "1", // many small commits: a cut lands mid-query
        PROJECTOR_POLL_INTERVAL_MS: "50",
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.stderr?.on("data", (chunk) => stderr.push(chunk.toString()));
    const proc = child;
    let exitCode: number | null | undefined;
    proc.once("exit", (code) => {
      exitCode = code;
    });

    for (let outage = 0; outage < 2; outage++) {
      const before = (await sealed(scratch.db)).seals;
      await until("progress", async () => ((await sealed(scratch.db)).seals > before ? true : undefined));
      proxy.cut();
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      expect(exitCode, stderr.join("").slice(-1500)).toBeUndefined(); // still running through the outage
      proxy.restore();
    }

    await until("the whole log sealed", async () => {
      if (exitCode !== undefined) throw new Error(`projector exited ${exitCode}: ${stderr.join("").slice(-1500)}`);
      return (await sealed(scratch.db)).seals === total ? true : undefined;
    });
    expect(await verifyLog(scratch.db)).toMatchObject({ ok: true, eventsVerified: total, unsealed: 0 });

    proc.kill("SIGTERM");
    await until("exit", async () => (exitCode !== undefined ? true : undefined), 15_000);
    expect(exitCode).toBe(0);
  });
  it("on SIGTERM, leaves a unit of work that does not finish to roll back, and exits 0 within seconds", async () => {
    const blocker = new pg.Client({ connectionString: scratch.url });
    const output: string[] = [];
    const proc = spawn(process.execPath, ["--import", "tsx", MAIN], {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: scratch.url,
        PORT: "0",
        PROJECTOR_POLL_INTERVAL_MS: "50",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child = proc;
    proc.stdout?.on("data", (chunk) => output.push(chunk.toString()));
    proc.stderr?.on("data", (chunk) => output.push(chunk.toString()));
    const exit = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
    try {
      await until("the projector started", async () =>
        output.join("").includes("projector started") ? true : undefined,
      );
      // Its unit of work takes long: here it waits for a row lock on its own state (as a rebuild's batch or swap
      // can run for long on a large log).
      await new Promise((resolve) => setTimeout(resolve, 500));
      await blocker.connect();
      await blocker.query("BEGIN");
      await blocker.query("SELECT * FROM projection_state FOR UPDATE");
      await new Promise((resolve) => setTimeout(resolve, 500));
      const signalledAt = Date.now();
      proc.kill("SIGTERM");
      const code = await exit;
      const tookMs = Date.now() - signalledAt;
      expect(code, output.join("").slice(-1500)).toBe(0);
      expect(tookMs).toBeLessThan(8_000);
      expect(output.join("")).toContain("did not finish: left to roll back");
    } finally {
      await blocker.end().catch(() => {});
    }
  });
});
