import { Writable } from "node:stream";
import { keyStreamId } from "@keyledger/domain";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

describe("request ids in logs", () => {
  let api: RunningApi;
  const lines: Record<string, unknown>[] = [];
  beforeAll(async () => {
    const stream = new Writable({
      write(chunk, _encoding, done) {
        for (const line of String(chunk).split("\n")) if (line.trim()) lines.push(JSON.parse(line));
        done();
      },
    });
    api = await startApi({ logger: { level: "info", stream } });
  });
  afterAll(async () => {
    await api.close();
  });

  it("puts the caller's x-request-id (or a generated one) on every line a request logs, and echoes it", async () => {
    const requestId = uniqueId("trace");
    const forged = `${"eyJhbGciOiJSUzI1NiJ9"}.${"eyJzdWIiOiJ4In0"}.c2lnbmF0dXJl`;
    const response = await fetch(`${api.baseUrl}/api/api-keys`, {
      headers: { "x-request-id": requestId, authorization: `Bearer ${forged}`, "x-daytona-organization-id": "o" },
    });
    expect(response.status).toBe(401);
    expect(response.headers.get("x-request-id")).toBe(requestId);
    const mine = lines.filter((line) => line.reqId === requestId);
    expect(mine.map((line) => line.msg)).toEqual(
      expect.arrayContaining(["incoming request", "JWT rejected", "request completed"]),
    );
    expect(JSON.stringify(lines)).not.toContain(forged);

    // Also on answers no route produced: an unknown path's 404, and a body that is not JSON (400).
    const unknown = await fetch(`${api.baseUrl}/api/no-such-route`, {
      headers: { "x-request-id": `${requestId}-404` },
    });
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get("x-request-id")).toBe(`${requestId}-404`);
    const org = uniqueId("org");
    await api.setMember(org, "user-1", "owner");
    const malformed = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: {
        ...(await api.jwtHeaders("user-1", org)),
        "content-type": "application/json",
        "x-request-id": `${requestId}-400`,
      },
      body: "{not json",
    });
    expect(malformed.status).toBe(400);
    expect(malformed.headers.get("x-request-id")).toBe(`${requestId}-400`);

    const generated = await fetch(`${api.baseUrl}/health/live`);
    const id = generated.headers.get("x-request-id");
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(lines.filter((line) => line.reqId === id).length).toBeGreaterThanOrEqual(2);
    const requestLines = lines.filter((line) => line.req !== undefined || line.res !== undefined);
    expect(requestLines.every((line) => typeof line.reqId === "string")).toBe(true);
  });

  it("replaces an X-Request-Id that is not a plain token of at most 128 characters, in answers, logs and events", async () => {
    const org = uniqueId("org");
    await api.setMember(org, "user-2", "owner");
    const headers = { ...(await api.jwtHeaders("user-2", org)), "content-type": "application/json" };
    for (const [i, given] of ["has space <img src=x>", "x".repeat(129), 'quote"d', "tab\tid"].entries()) {
      const response = await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers: { ...headers, "x-request-id": given },
        body: JSON.stringify({ name: `odd-request-id-${i}`, permissions: [] }),
      });
      expect(response.status).toBe(201);
      const id = response.headers.get("x-request-id");
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(lines.some((line) => line.reqId === id)).toBe(true);
      expect(lines.some((line) => line.reqId === given)).toBe(false);
      const events = await sql<{ metadata: { requestId?: string } }>`
        SELECT metadata FROM events WHERE stream_id = ${keyStreamId(org, "user-2", `odd-request-id-${i}`)}`.execute(
        api.db,
      );
      expect(events.rows.map((event) => event.metadata.requestId)).toEqual([id]);
    }
    const plain = "trace.id:42-A_b";
    const kept = await fetch(`${api.baseUrl}/health/live`, { headers: { "x-request-id": plain } });
    expect(kept.headers.get("x-request-id")).toBe(plain);
  });
});
