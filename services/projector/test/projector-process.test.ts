import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { verifyLog } from "@keyledger/audit-log";
import { API_KEYS_PROJECTION, loadProjectionStatus, requestRebuild } from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../../../test/support/database";
import { readModelRows, writeKeyHistory } from "../../../test/support/key-history";
import { until } from "../../../test/support/until";

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** Starts `tsx services/projector/src/main.ts` against `url`, one event per batch so that work spans many commits. */
function startProjector(url: string): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: url,
      PORT: "0",
      PROJECTOR_REBUILD_BATCH_SIZE: "1",
      PROJECTOR_SEAL_BATCH_SIZE: "1",
      PROJECTOR_POLL_INTERVAL_MS: "50",
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr?.on("data", (chunk) => process.stderr.write(`[projector ${child.pid}] ${chunk}`));
  return child;
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once("exit", (code) => resolve(code));
  });
}

async function counts(db: Kysely<unknown>): Promise<{ events: number; seals: number }> {
  const result = await sql<{ events: string; seals: string }>`
    SELECT (SELECT count(*) FROM events)::text AS events, (SELECT count(*) FROM event_seals)::text AS seals`.execute(
    db,
  );
  return { events: Number(result.rows[0]?.events), seals: Number(result.rows[0]?.seals) };
}

describe("the projector process", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    scratch = await createScratchDatabase(16);
    db = scratch.db;
    await writeKeyHistory(db, {
      organizations: ["org-p", "org-q", "org-r"],
      usersPerOrganization: 3,
      writers: 8,
      operationsPerWriter: 60,
      seed: 11,
    });
  });
  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await scratch?.drop();
  });

  it("converges after SIGKILL in the middle of sealing and of a rebuild", async () => {
    const live = await readModelRows(db);
    const total = (await counts(db)).events;
    expect(total).toBeGreaterThan(100);

    // 1. Killed while catching up on the hash chain.
    const first = startProjector(scratch.url);
    children.push(first);
    await until("some seals", async () => ((await counts(db)).seals > 0 ? true : undefined));
    first.kill("SIGKILL");
    await exited(first);
    const sealsAfterKill = (await counts(db)).seals;
    expect(sealsAfterKill).toBeLessThan(total);
    expect(await verifyLog(db)).toMatchObject({ ok: true, eventsVerified: sealsAfterKill });

    // 2. Killed in the middle of a rebuild (after finishing the chain).
    await requestRebuild(db, API_KEYS_PROJECTION);
    const second = startProjector(scratch.url);
    children.push(second);
    const atKill = await until("rebuild batches", async () => {
      const status = await loadProjectionStatus(db, "api_keys");
      return status && status.eventsApplied > 0 ? status : undefined;
    });
    second.kill("SIGKILL");
    await exited(second);
    const afterKill = await loadProjectionStatus(db, "api_keys");
    expect(afterKill?.status).toBe("rebuilding");
    expect(afterKill?.eventsApplied).toBeGreaterThanOrEqual(atKill.eventsApplied);
    expect(afterKill?.eventsApplied).toBeLessThan(total);
    // The live tables are untouched by the unfinished rebuild.
    expect(await readModelRows(db)).toEqual(live);

    // 3. A new projector continues from the committed progress and finishes both.
    const third = startProjector(scratch.url);
    children.push(third);
    await until("the rebuild to be swapped in and the log sealed", async () => {
      const status = await loadProjectionStatus(db, "api_keys");
      const { seals } = await counts(db);
      return status?.status === "live" && seals === total ? true : undefined;
    });
    third.kill("SIGTERM");
    expect(await exited(third)).toBe(0);

    expect(await readModelRows(db)).toEqual(live);
    const status = await loadProjectionStatus(db, "api_keys");
    expect(status?.eventsApplied).toBe(total);
    expect(await verifyLog(db)).toMatchObject({ ok: true, eventsVerified: total, unsealed: 0 });
  });
});
