import { randomBytes } from "node:crypto";
import { KEY_RANDOM_BYTES, keyValueFromRandomBytes } from "@keyledger/domain";
import { storeCheckpoint } from "@keyledger/event-store";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

/** The value of one sample line (`name{labels} value`) in Prometheus text, or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && line !== name && !line.startsWith(`${name} `)) continue;
    const labelText = line.slice(line.indexOf("{") + 1, line.lastIndexOf("}"));
    const have = labelText.split(",");
    if (wanted.every((w) => have.includes(w))) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

describe("Prometheus metrics at /metrics", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  const scrape = async () => {
    const response = await fetch(`${api.baseUrl}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toContain("text/plain");
    return response.text();
  };

  it("times requests per route pattern, never per raw URL", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = await api.jwtHeaders(user, org);
    const secretName = uniqueId("never-a-label");
    const before = await scrape();
    const listLabels = { method: "GET", route: "/api/api-keys", status_code: "200" };
    const deleteLabels = { method: "DELETE", route: "/api/api-keys/:name", status_code: "404" };
    const listed = sample(before, "keyledger_http_request_duration_seconds_count", listLabels) ?? 0;
    const deleted = sample(before, "keyledger_http_request_duration_seconds_count", deleteLabels) ?? 0;

    expect((await fetch(`${api.baseUrl}/api/api-keys`, { headers })).status).toBe(200);
    expect((await fetch(`${api.baseUrl}/api/api-keys/${secretName}`, { method: "DELETE", headers })).status).toBe(404);
    expect((await fetch(`${api.baseUrl}/no/such/${secretName}`)).status).toBe(404);

    const after = await scrape();
    expect(sample(after, "keyledger_http_request_duration_seconds_count", listLabels)).toBe(listed + 1);
    expect(sample(after, "keyledger_http_request_duration_seconds_count", deleteLabels)).toBe(deleted + 1);
    expect(
      sample(after, "keyledger_http_request_duration_seconds_count", { route: "unmatched", status_code: "404" }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(after, "keyledger_http_request_duration_seconds_bucket", { ...listLabels, le: "+Inf" })).toBe(
      listed + 1,
    );
    expect(after).not.toContain(secretName);
  });

  it("counts API-key verifications by outcome", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "metered", permissions: [] }),
    });
    const { value } = (await created.json()) as { value: string };
    const outcomes = ["valid", "malformed", "not_found", "expired", "revoked"];
    const count = (text: string) =>
      Object.fromEntries(
        outcomes.map((outcome) => [outcome, sample(text, "keyledger_api_key_verifications_total", { outcome }) ?? 0]),
      );
    const useKey = (key: string) =>
      fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${key}` } });
    const before = count(await scrape());

    expect((await useKey(value)).status).toBe(200);
    expect((await useKey("not-a-key")).status).toBe(401);
    expect((await useKey(keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES)))).status).toBe(401);
    expect((await fetch(`${api.baseUrl}/api/api-keys/metered`, { method: "DELETE", headers })).status).toBe(204);
    expect((await useKey(value)).status).toBe(401);

    const after = count(await scrape());
    expect(after).toEqual({
      ...before,
      valid: (before.valid ?? 0) + 1,
      malformed: (before.malformed ?? 0) + 1,
      not_found: (before.not_found ?? 0) + 1,
      revoked: (before.revoked ?? 0) + 1,
    });
  });

  it("reports cache counters and process metrics", async () => {
    const text = await scrape();
    expect(text).toMatch(/^keyledger_api_key_cache_hits_total \d+/m);
    expect(text).toMatch(/^keyledger_api_key_cache_misses_total \d+/m);
    expect(text).toMatch(/^keyledger_process_cpu_seconds_total /m);
  });

  it("reports how far each reader of the log is behind: relay checkpoints, the sealer, projections", async () => {
    const reader = uniqueId("lag-reader");
    // A reader that has handled everything up to an event appended now: everything appended after it is its lag.
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const [head] = (
      await sql<{ transaction_id: string; global_position: string }>`
        SELECT transaction_id, global_position FROM events ORDER BY global_position DESC LIMIT 1`.execute(api.db)
    ).rows;
    await api.db.transaction().execute((trx) =>
      storeCheckpoint(trx, reader, {
        transactionId: String(head?.transaction_id),
        globalPosition: String(head?.global_position),
      }),
    );
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    for (const name of ["one", "two"]) {
      const res = await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers,
        body: JSON.stringify({ name, permissions: [] }),
      });
      expect(res.status).toBe(201);
    }
    const text = await scrape();
    expect(sample(text, "keyledger_log_reader_lag_events", { reader })).toBeGreaterThanOrEqual(2);
    expect(sample(text, "keyledger_log_reader_lag_seconds", { reader })).toBeGreaterThanOrEqual(0);
    expect(sample(text, "keyledger_log_reader_lag_events", { reader: "sealer" })).toBeGreaterThanOrEqual(0);
    await api.db
      .deleteFrom("checkpoints" as never)
      .where("name" as never, "=", reader as never)
      .execute();
    expect(sample(await scrape(), "keyledger_log_reader_lag_events", { reader })).toBeUndefined();
  });
});
