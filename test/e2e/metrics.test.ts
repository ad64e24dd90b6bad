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

  it("reports verification outcomes, cache counters and process metrics", async () => {
    const text = await scrape();
    for (const outcome of ["valid", "malformed", "not_found", "expired", "revoked"]) {
      expect(sample(text, "keyledger_api_key_verifications_total", { outcome }), outcome).toBeGreaterThanOrEqual(0);
    }
    expect(text).toMatch(/^keyledger_api_key_cache_hits_total \d+/m);
    expect(text).toMatch(/^keyledger_api_key_cache_misses_total \d+/m);
    expect(text).toMatch(/^keyledger_process_cpu_seconds_total /m);
  });
});
