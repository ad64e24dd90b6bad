import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { sealPending } from "@keyledger/audit-log";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi } from "../support/api-harness";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";

const CLI = fileURLToPath(new URL("../../services/cli/src/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../", import.meta.url));

type Item = { position: string; type: string; data: unknown; actor: unknown; damaged?: string };

/**
 * A log whose rows were changed in the database so that an event's data or metadata is JSON `null` or not an
 * object: the auditors' event API and `events tail` serve every event, the damaged ones as stored and flagged.
 */
describe("reading a log whose events' data or metadata were changed to non-objects", () => {
  let scratch: ScratchDatabase;
  let api: RunningApi;
  const org = "damaged-org";
  let positions: string[];

  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    api = await startApi({ databaseUrl: scratch.url });
    for (const user of ["u1", "u2", "u3", "u4", "u5", "u6"])
      await api.setMember(org, user, "member", ["read:audit_logs"]);
    // Sealing waits for transactions older than the events (of any database of the cluster) to end.
    for (let sealed = 0; sealed < 6; ) {
      sealed += (await sealPending(scratch.db, { wait: true })).sealed;
      if (sealed < 6) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const rows = await sql<{ p: string }>`
      SELECT global_position::text AS p FROM events ORDER BY global_position`.execute(scratch.db);
    positions = rows.rows.map((row) => row.p);
    expect(positions).toHaveLength(6);
    // Changed after sealing, as an intruder would: organization scoping then falls back to the metadata's.
    await sql`UPDATE events SET data = 'null'::jsonb WHERE global_position = ${positions[1]}::bigint`.execute(
      scratch.db,
    );
    await sql`UPDATE events SET data = '[1, {"keyHash": "x"}]'::jsonb WHERE global_position = ${positions[2]}::bigint`.execute(
      scratch.db,
    );
    await sql`UPDATE events SET metadata = 'null'::jsonb WHERE global_position = ${positions[3]}::bigint`.execute(
      scratch.db,
    );
    await sql`UPDATE events SET metadata = '"nobody"'::jsonb WHERE global_position = ${positions[4]}::bigint`.execute(
      scratch.db,
    );
  });
  afterAll(async () => {
    await api?.close();
    await scratch?.drop();
  });

  const expectDamaged = (items: Item[]) => {
    const byPosition = new Map(items.map((item) => [item.position, item]));
    expect(byPosition.get(positions[0] as string)?.damaged).toBeUndefined();
    expect(byPosition.get(positions[1] as string)).toMatchObject({
      data: null,
      damaged: expect.stringMatching(/^data is null, not a JSON object: .*pnpm keyledger verify-log/),
    });
    expect(byPosition.get(positions[2] as string)).toMatchObject({
      data: [1, {}],
      damaged: expect.stringMatching(/^data is an array, not a JSON object/),
    });
    expect(byPosition.get(positions[3] as string)?.damaged).toMatch(/^metadata is null, not a JSON object/);
    expect(byPosition.get(positions[4] as string)?.damaged).toMatch(/^metadata is a string, not a JSON object/);
    expect(byPosition.get(positions[5] as string)?.damaged).toBeUndefined();
  };

  it("the API serves every event, the damaged ones as stored and flagged, on pages and on a stream", async () => {
    const headers = await api.jwtHeaders("u1", org);
    const res = await fetch(`${api.baseUrl}/api/api-key-events?limit=10`, { headers });
    const text = await res.text();
    expect(res.status, text).toBe(200);
    const page = JSON.parse(text) as { items: Item[]; hasMore: boolean };
    // Each damaged event still names the organization in its data or its metadata.
    expect(page.items.map((item) => item.position)).toEqual(positions);
    expectDamaged(page.items);
    expect(page.items.find((item) => item.position === positions[3])?.actor).toEqual({
      userId: null,
      authMethod: null,
      requestId: null,
    });

    const stream = await fetch(`${api.baseUrl}/api/api-key-events`, {
      headers: { ...headers, accept: "text/event-stream" },
      signal: AbortSignal.timeout(5000),
    });
    expect(stream.status).toBe(200);
    const reader = (stream.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const streamed: Item[] = [];
    while (streamed.length < page.items.length) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const data = buffer
          .slice(0, end)
          .split("\n")
          .find((line) => line.startsWith("data: "));
        buffer = buffer.slice(end + 2);
        if (data) streamed.push(JSON.parse(data.slice(6)) as Item);
      }
    }
    await reader.cancel();
    expect(streamed).toEqual(page.items);
  });

  it("the API serves events whose data and metadata both lost the organization to nobody, and still answers", async () => {
    // Neither the data nor the metadata of the second event names an organization now: served to no one.
    await sql`UPDATE events SET metadata = 'null'::jsonb WHERE global_position = ${positions[1]}::bigint`.execute(
      scratch.db,
    );
    const res = await fetch(`${api.baseUrl}/api/api-key-events`, { headers: await api.jwtHeaders("u1", org) });
    expect(res.status).toBe(200);
    const page = (await res.json()) as { items: Item[] };
    expect(page.items.map((item) => item.position)).toEqual(positions.filter((_, i) => i !== 1));
    await sql`UPDATE events SET metadata = jsonb_build_object('organizationId', ${org}::text, 'authMethod', 'internal')
               WHERE global_position = ${positions[1]}::bigint`.execute(scratch.db);
  });

  it("events tail --from-start prints every event, the damaged ones as stored and flagged", async () => {
    const child: ChildProcess = spawn(
      process.execPath,
      ["--import", "tsx", CLI, "events", "tail", "--from-start", "--json"],
      {
        cwd: ROOT,
        env: { ...process.env, DATABASE_URL: scratch.url },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      for (const deadline = Date.now() + 60_000; stdout.trim().split("\n").length < 6; ) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`events tail: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    } finally {
      child.kill("SIGINT");
    }
    expect(await exited, stderr).toBe(0);
    const lines = stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Item);
    expect(lines.map((line) => line.position)).toEqual(positions);
    expectDamaged(lines);
  });
});
