import { STATUS_CODES } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { createPostgresDatabase } from "@keyledger/api";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { TcpProxy } from "../support/tcp-proxy";

/**
 * Postgres unreachable under load, through a TCP proxy the test controls (the shared server is never touched).
 * While it is down, requests answer 503 with Daytona's body, each within the pool's timeouts (connect 5 s,
 * statement 2 s + 2 s client-side here), never hanging; once it is back, the same process serves again; and no
 * command is half-written: every event has its read-model row and every row its event.
 */

const HANG = 30_000; // far above every configured timeout: a request still open by then is a hang

type Result = { op: "create" | "list"; name: string; status: number; body: string; ms: number; phase: string };

describe("Postgres faults", () => {
  let proxy: TcpProxy;
  let api: RunningApi;
  let direct: Kysely<unknown>;
  const org = uniqueId("fault-org");
  const owner = uniqueId("fault-owner");

  beforeAll(async () => {
    let proxied: string;
    ({ proxy, url: proxied } = await TcpProxy.inFrontOfDatabase(inject("databaseUrl")));
    api = await startApi({
      databaseUrl: proxied,
      database: { maxConnections: 5, statementTimeoutMs: 2_000 },
    });
    direct = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
    await api.setMember(org, owner, "owner");
  });
  afterAll(async () => {
    await api?.close();
    await direct?.destroy();
    await proxy?.close();
  });

  /** Load: `workers` loops of create (unique names) and list, until `stop()`; every answer recorded. */
  function load(workers: number, phase: () => string, prefix: string) {
    const results: Result[] = [];
    let running = true;
    let counter = 0;
    const loop = async (worker: number) => {
      const headers = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
      while (running) {
        const op = counter % 4 === 3 ? "list" : "create";
        const name = `${prefix}-${worker}-${counter++}`;
        const started = Date.now();
        const startedIn = phase();
        try {
          const res = await fetch(`${api.baseUrl}/api/api-keys`, {
            method: op === "create" ? "POST" : "GET",
            headers,
            body: op === "create" ? JSON.stringify({ name, permissions: [] }) : undefined,
            signal: AbortSignal.timeout(HANG),
          });
          results.push({
            op,
            name,
            status: res.status,
            body: await res.text(),
            ms: Date.now() - started,
            phase: startedIn,
          });
        } catch (error) {
          results.push({ op, name, status: 0, body: String(error), ms: Date.now() - started, phase: startedIn });
        }
        if (startedIn !== "up") await sleep(50); // do not spin on fast failures
      }
    };
    const done = Promise.all(Array.from({ length: workers }, (_, w) => loop(w)));
    return {
      results,
      async stop() {
        running = false;
        await done;
      },
    };
  }

  async function waitFor(condition: () => boolean, what: string, results: Result[]) {
    for (let i = 0; i < 600 && !condition(); i++) await sleep(50);
    if (!condition()) {
      const seen = results.map((r) => `${r.phase}:${r.op}:${r.status}:${r.ms}ms:${r.body.slice(0, 80)}`);
      throw new Error(`timed out waiting for ${what}; answers so far: ${seen.slice(-30).join(" | ")}`);
    }
  }

  /** Every key event of the organization has its row and every row its events (no partial command). */
  async function consistency() {
    const events = await sql<{ key_id: string; event_type: string }>`
      SELECT data->>'keyId' AS key_id, event_type FROM events
       WHERE data->>'organizationId' = ${org} AND event_type IN ('KeyCreated', 'KeyRevoked')`.execute(direct);
    const rows = await sql<{ key_id: string; name: string; revoked_at: Date | null }>`
      SELECT key_id::text, name, revoked_at FROM api_keys WHERE organization_id = ${org}`.execute(direct);
    const created = events.rows.filter((e) => e.event_type === "KeyCreated").map((e) => e.key_id);
    const revoked = new Set(events.rows.filter((e) => e.event_type === "KeyRevoked").map((e) => e.key_id));
    return {
      createdEvents: created.length,
      rows: rows.rows.length,
      eventsWithoutRow: created.filter((id) => !rows.rows.some((r) => r.key_id === id)).length,
      rowsWithoutEvent: rows.rows.filter((r) => !created.includes(r.key_id)).length,
      revokedMismatch: rows.rows.filter((r) => (r.revoked_at !== null) !== revoked.has(r.key_id)).length,
      names: rows.rows.map((r) => r.name),
    };
  }

  function expectServiceUnavailable(result: Result) {
    const body = JSON.parse(result.body) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(["error", "message", "path", "statusCode", "timestamp"]);
    expect(body).toMatchObject({
      statusCode: 503,
      error: STATUS_CODES[503],
      message: "Service temporarily unavailable",
    });
  }

  async function runFault(fault: "cut" | "stall") {
    let phase = "up";
    const run = load(6, () => phase, fault);
    await waitFor(
      () => run.results.filter((r) => r.status === 201).length >= 10,
      "successes before the fault",
      run.results,
    );

    phase = "down";
    if (fault === "cut") proxy.cut();
    else proxy.stall();
    await waitFor(
      () => run.results.filter((r) => r.phase === "down" && r.status === 503).length >= 6,
      "503s while down",
      run.results,
    );
    const ready = await fetch(`${api.baseUrl}/health/ready`, { signal: AbortSignal.timeout(HANG) });
    expect(ready.status).toBe(503);

    phase = "recovering";
    proxy.restore();
    const restoredAt = run.results.length;
    await waitFor(
      () => run.results.slice(restoredAt).filter((r) => r.phase !== "down" && r.status === 201).length >= 10,
      "successes after restore",
      run.results,
    );
    await run.stop();

    const { results } = run;
    const unexpected = results.filter((r) => ![200, 201, 503].includes(r.status));
    expect(unexpected.map((r) => `${r.phase} ${r.op} ${r.status} ${r.body.slice(0, 200)}`)).toEqual([]);
    for (const r of results.filter((r) => r.status === 503)) expectServiceUnavailable(r);
    expect((await fetch(`${api.baseUrl}/health/ready`)).status).toBe(200);

    // No lost or duplicated write, no half-written command.
    const state = await consistency();
    const acknowledged = results.filter((r) => r.op === "create" && r.status === 201).map((r) => r.name);
    const names = new Set(state.names);
    expect(acknowledged.filter((n) => !names.has(n))).toEqual([]); // acknowledged but lost
    expect(state.names.length).toBe(names.size); // no duplicate
    expect(state.eventsWithoutRow).toBe(0);
    expect(state.rowsWithoutEvent).toBe(0);
    expect(state.revokedMismatch).toBe(0);

    const down = results.filter((r) => r.phase === "down");
    const figures = {
      fault,
      requests: results.length,
      whileDown: down.length,
      answered503: down.filter((r) => r.status === 503).length,
      slowestWhileDownMs: Math.max(...down.map((r) => r.ms)),
      acknowledgedCreates: acknowledged.length,
      ambiguous503Committed: results.filter((r) => r.status === 503 && r.op === "create" && names.has(r.name)).length,
      lost: acknowledged.filter((n) => !names.has(n)).length,
    };
    console.log(`postgres fault figures: ${JSON.stringify(figures)}`);
    return figures;
  }

  it("connections reset and refused: 503 with the error body, then recovery without a restart, no partial writes", async () => {
    const figures = await runFault("cut");
    expect(figures.answered503).toBeGreaterThan(0);
  });

  it("network stalled (nothing answers, nothing fails): 503 within the timeouts instead of a hang, then recovery", async () => {
    const figures = await runFault("stall");
    expect(figures.answered503).toBeGreaterThan(0);
  });
});
