import { randomBytes } from "node:crypto";
import { KEY_RANDOM_BYTES, keyValueFromRandomBytes } from "@keyledger/domain";
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
});
