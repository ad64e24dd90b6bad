import { setTimeout as sleep } from "node:timers/promises";
import { createPostgresDatabase } from "@keyledger/api";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, startRelayAtLogHead, type TestEventStream, testEventStream } from "../support/nats";
import { TcpProxy } from "../support/tcp-proxy";
import { until } from "../support/until";

/**
 * A key used while Postgres is unreachable: the API answers from its verifier cache (NATS keeps it trustworthy),
 * the use's `KeyUsed` cannot be written, and it is written once Postgres is back, with the time of the use.
 */

const THROTTLE_MS = 1_000;

describe("key uses while Postgres is unreachable", () => {
  let proxy: TcpProxy;
  let stream: TestEventStream;
  let api: RunningApi;
  let direct: Kysely<unknown>;
  const org = uniqueId("outage-org");
  const owner = uniqueId("outage-owner");

  beforeAll(async () => {
    let proxied: string;
    ({ proxy, url: proxied } = await TcpProxy.inFrontOfDatabase(inject("databaseUrl")));
    stream = testEventStream();
    await startRelayAtLogHead(stream);
    api = await startApi({
      databaseUrl: proxied,
      database: { maxConnections: 4, statementTimeoutMs: 2_000 },
      keyUsedThrottleMs: THROTTLE_MS,
      nats: apiNatsOptions(stream),
    });
    direct = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
    await api.setMember(org, owner, "owner");
  });
  afterAll(async () => {
    proxy?.restore();
    await api?.close();
    await direct?.destroy();
    await proxy?.close();
    await stream?.cleanup();
  });

  const lastUsedAt = async (name: string): Promise<Date | null> => {
    const { rows } = await sql<{ last_used_at: Date | null }>`
      SELECT last_used_at FROM api_keys WHERE organization_id = ${org} AND name = ${name}`.execute(direct);
    return rows[0]?.last_used_at ?? null;
  };
  const current = (value: string) =>
    fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });

  it("holds the use and records it, at the time it happened, once Postgres is back", async () => {
    const headers = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "used-in-outage", permissions: [] }),
    });
    expect(created.status).toBe(201);
    const { value } = (await created.json()) as { value: string };

    // First use, recorded; then the verifier's cached answer is the row with that use (the KeyUsed event dropped
    // the older answer), so the next requests are answered without Postgres.
    expect((await current(value)).status).toBe(200);
    const firstUse = await until(
      "the first use",
      async () => (await lastUsedAt("used-in-outage")) ?? undefined,
      10_000,
    );
    await until(
      "a cached answer with the first use",
      async () => {
        const res = await current(value);
        const body = (await res.json()) as { lastUsedAt: string | null };
        return res.status === 200 && body.lastUsedAt === firstUse.toISOString() ? true : undefined;
      },
      10_000,
    );
    await sleep(THROTTLE_MS + 100);

    proxy.cut();
    const before = Date.now();
    const res = await current(value);
    const after = Date.now();
    expect(res.status).toBe(200);
    // Several tries fail meanwhile (250 ms, then 500 ms, ...).
    await sleep(1_000);
    expect((await lastUsedAt("used-in-outage"))?.getTime()).toBe(firstUse.getTime());

    proxy.restore();
    const recorded = await until(
      "the held use to be recorded",
      async () => {
        const at = await lastUsedAt("used-in-outage");
        return at !== null && at.getTime() > firstUse.getTime() ? at : undefined;
      },
      10_000,
    );
    expect(recorded.getTime()).toBeGreaterThanOrEqual(before);
    expect(recorded.getTime()).toBeLessThanOrEqual(after);
    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM events
       WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org}`.execute(direct);
    expect(rows[0]?.n).toBe(2);
  });
});
