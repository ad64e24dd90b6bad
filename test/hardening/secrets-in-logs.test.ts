import { Writable } from "node:stream";
import { LOG_REDACTIONS } from "@keyledger/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTERNAL_TOKEN, type RunningApi, startApi, uniqueId } from "../support/api-harness";

/**
 * Secrets never reach a log line: a full run through every route, logged at trace level into a stream the test
 * reads, with the API's production redaction; no issued key value, JWT or internal token may appear in any line.
 * Error messages never carry key material either, not even the caller's own.
 */
describe("secrets in logs and error messages", () => {
  let api: RunningApi;
  const lines: string[] = [];
  const secrets = new Set<string>();
  const org = uniqueId("secret-org");
  const owner = uniqueId("secret-owner");
  const member = uniqueId("secret-member");
  let ownerHeaders: Record<string, string>;

  beforeAll(async () => {
    const stream = new Writable({
      write(chunk, _encoding, done) {
        lines.push(...chunk.toString().split("\n").filter(Boolean));
        done();
      },
    });
    api = await startApi({
      keyUsedThrottleMs: 0,
      logger: { level: "trace", stream, redact: { paths: LOG_REDACTIONS, censor: "[redacted]" } },
    });
    secrets.add(INTERNAL_TOKEN);
    await api.setMember(org, owner, "owner");
    await api.setMember(org, member, "member", ["write:sandboxes"]);
    ownerHeaders = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
    secrets.add(ownerHeaders.authorization?.slice("Bearer ".length) as string);
  });
  afterAll(() => api?.close());

  const request = async (method: string, path: string, headers: Record<string, string>, body?: unknown) => {
    const res = await fetch(`${api.baseUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, text, json: text ? (JSON.parse(text) as Record<string, unknown>) : null };
  };
  const withKey = (value: string) => ({ authorization: `Bearer ${value}`, "content-type": "application/json" });

  it("a full run leaves no key value, JWT or internal token in any log line or error message", async () => {
    const errorMessages: string[] = [];
    const expectError = (res: { status: number; json: Record<string, unknown> | null }, status: number) => {
      expect(res.status).toBe(status);
      errorMessages.push(JSON.stringify(res.json));
    };

    // Create, use, list, get, rotate, delete: every route, owner and member.
    const created = await request("POST", "/api/api-keys", ownerHeaders, {
      name: "ci",
      permissions: ["write:sandboxes"],
    });
    expect(created.status).toBe(201);
    const value = created.json?.value as string;
    secrets.add(value);
    const memberHeaders: Record<string, string> = {
      ...(await api.jwtHeaders(member, org)),
      "content-type": "application/json",
    };
    secrets.add(memberHeaders.authorization?.slice("Bearer ".length) as string);
    const memberKey = await request("POST", "/api/api-keys", memberHeaders, { name: "mine", permissions: [] });
    secrets.add(memberKey.json?.value as string);

    expect((await request("GET", "/api/api-keys/current", withKey(value))).status).toBe(200);
    expect((await request("GET", "/api/api-keys", ownerHeaders)).status).toBe(200);
    expect((await request("GET", "/api/api-keys/ci", ownerHeaders)).status).toBe(200);
    const rotated = await request("POST", "/api/api-keys/ci/rotate", ownerHeaders, { gracePeriodSeconds: 60 });
    expect(rotated.status).toBe(201);
    secrets.add(rotated.json?.value as string);
    expect((await request("GET", "/api/api-keys/current", withKey(value))).status).toBe(200); // old value, in grace
    const rotatedCurrent = await request(
      "POST",
      "/api/api-keys/current/rotate",
      withKey(rotated.json?.value as string),
      {},
    );
    expect(rotatedCurrent.status).toBe(201);
    secrets.add(rotatedCurrent.json?.value as string);

    // Failures that carry secrets in every place a client might put them.
    const revokedValue = memberKey.json?.value as string;
    expect((await request("DELETE", `/api/api-keys/${member}/mine`, ownerHeaders)).status).toBe(204);
    expectError(await request("GET", "/api/api-keys/current", withKey(revokedValue)), 401);
    expectError(await request("GET", "/api/api-keys", withKey(value)), 401); // a key on a JWT route
    expectError(await request("GET", "/api/api-keys/current", { authorization: `Bearer ${value.slice(0, -1)}x` }), 401);
    expectError(await request("GET", `/api/api-keys/${value}`, ownerHeaders), 404); // a key in the path
    expectError(await request("GET", `/${value}`, ownerHeaders), 404); // no such route: "Cannot GET /…"
    // Behind percent-encoding: the path decodes to the key.
    expectError(await request("GET", `/api/api-keys/${value.replace("_", "%5F")}`, ownerHeaders), 404);
    expectError(await request("GET", `/api/api-keys/current?key=${value.replace("_", "%5f")}`, {}), 401);
    // As a request id (a plain token otherwise): replaced, as it would be logged, echoed and stored.
    const asRequestId = await fetch(`${api.baseUrl}/health/live`, { headers: { "x-request-id": value } });
    expect(asRequestId.headers.get("x-request-id")).not.toContain(value);
    expectError(
      await request("GET", `/api/api-keys/current?key=${value}&token=${ownerHeaders.authorization}`, {}),
      401,
    );
    expectError(await request("POST", "/api/api-keys", ownerHeaders, `{"name": "${value}", `), 400); // malformed JSON
    expectError(await request("POST", "/api/api-keys", ownerHeaders, `"${value}"`), 400);
    expectError(await request("POST", "/api/api-keys", ownerHeaders, `{"name": ${value}}`), 400); // quoted back by JSON.parse
    expectError(await request("POST", "/api/api-keys", ownerHeaders, { name: value, permissions: [value] }), 400);
    expectError(await request("POST", "/api/api-keys/ci/rotate", ownerHeaders, { gracePeriodSeconds: value }), 400);
    expectError(
      await request("GET", "/api/api-keys", {
        authorization: `Bearer ${await api.issuer.token({ sub: owner }, { foreignKey: true })}`,
        "x-daytona-organization-id": org,
      }),
      401,
    );
    expectError(await request("GET", "/api/api-keys", { authorization: `Bearer ${INTERNAL_TOKEN}` }), 401);
    expectError(
      await request("PUT", `/internal/organizations/${org}/members/${owner}`, { authorization: `Bearer ${value}` }),
      401,
    );
    expectError(await request("GET", "/api/api-keys", { ...ownerHeaders, "x-daytona-organization-id": value }), 403);
    expect((await request("DELETE", "/api/api-keys/ci", ownerHeaders)).status).toBe(204);

    await api.app.close(); // flush pending KeyUsed (logged) before reading the lines

    expect(lines.length).toBeGreaterThan(20); // the run was logged, at trace level
    expect(lines.filter((line) => line.includes("incoming request")).length).toBeGreaterThan(15);
    const leaks = lines.filter((line) => [...secrets].some((secret) => line.includes(secret)));
    expect(leaks.map((line) => line.slice(0, 300))).toEqual([]);
    // Nor a fragment of a key long enough to matter, nor a JWT of any kind.
    expect(lines.filter((line) => /dtn(?:_|%5f)[0-9a-f]{16,}|eyJ[A-Za-z0-9_-]{10,}\./i.test(line))).toEqual([]);

    const echoed = errorMessages.filter(
      (m) => [...secrets].some((s) => m.includes(s)) || /dtn(?:_|%5f)[0-9a-f]{4,}/i.test(m),
    );
    expect(echoed).toEqual([]);
  });
});
