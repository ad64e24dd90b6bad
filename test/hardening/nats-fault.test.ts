import type { Verifier } from "@keyledger/verifier";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningApi } from "../support/api-harness";
import { type GatewayStack, startGatewayStack } from "../support/gateway-stack";
import { type OwnNatsServer, readStreamEvents, startNatsServer, testEventStream } from "../support/nats";

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * NATS unreachable (a private nats-server the test stops and starts; the shared one is never touched): commands
 * keep succeeding, the gateway fails safe (no cached "valid" for a key revoked meanwhile: it asks the API), and
 * once NATS is back every event committed during the outage is published, each exactly once.
 */
describe("NATS faults", () => {
  let nats: OwnNatsServer;
  let stream: ReturnType<typeof testEventStream>;
  let stack: GatewayStack;
  let api: RunningApi;
  let verifier: Verifier;
  let gatewayUrl: string;
  let org: string;
  let create: GatewayStack["create"];
  let revoke: GatewayStack["revoke"];
  let viaGateway: GatewayStack["viaGateway"];

  beforeAll(async () => {
    nats = await startNatsServer();
    stream = testEventStream(nats.url);
    stack = await startGatewayStack(stream, { name: "nats-fault" });
    ({ api, verifier, gatewayUrl, org, create, revoke, viaGateway } = stack);
    await until(async () => ((await fetch(`${gatewayUrl}/health/ready`)).status === 200 ? true : undefined), "ready");
  });
  afterAll(async () => {
    await stack?.close();
    await nats?.start().catch(() => {});
    await stream?.cleanup();
    await nats?.close();
  });

  async function eventIdsInLog(): Promise<string[]> {
    const { rows } = await sql<{ event_id: string }>`
      SELECT event_id::text FROM events WHERE data->>'organizationId' = ${org}`.execute(api.db);
    return rows.map((r) => r.event_id);
  }
  async function eventIdsInStream(): Promise<string[]> {
    const messages = await readStreamEvents(nats.url, stream.streamName, `${stream.subjectPrefix}.${org}.*`);
    return messages.map((m) => m.event?.eventId ?? "undecodable");
  }

  it("commands succeed while NATS is down, the gateway fails safe, and the outage's events are published once", async () => {
    const before = await create("before-outage");
    expect(await viaGateway(before)).toBe(200); // now cached in the gateway
    await until(async () => ((await eventIdsInStream()).length >= 1 ? true : undefined), "the first event in NATS");

    await nats.stop();
    await until(async () => (verifier.subscribed ? undefined : true), "the gateway to notice");
    expect((await fetch(`${gatewayUrl}/health/ready`)).status).toBe(503);

    // Commands keep working: the log is in Postgres; NATS only carries copies.
    const during = await create("during-outage");
    await revoke("before-outage");
    await create("revoked-during-outage");
    await revoke("revoked-during-outage");
    const used = await fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${during}` } });
    expect(used.status).toBe(200);

    // Fail safe: the revocation event cannot reach the gateway, so it must not answer from its cache.
    expect(await viaGateway(before)).toBe(401);
    expect(await viaGateway(during)).toBe(200);
    const apiCheck = await fetch(`${api.baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${before}` },
    });
    expect(apiCheck.status).toBe(401); // the API's own verifier cache is bypassed too

    await nats.start();
    await until(async () => (verifier.subscribed ? true : undefined), "the gateway to resubscribe");

    // Every event of the organization in the log reaches the stream, exactly once.
    const inLog = await eventIdsInLog();
    const published = await until(async () => {
      const ids = await eventIdsInStream();
      return inLog.every((id) => ids.includes(id)) ? ids : undefined;
    }, "the relay to publish the outage's events");
    const lost = inLog.filter((id) => !published.includes(id));
    const duplicated = published.length - new Set(published).size;
    console.log(
      `nats fault figures: ${JSON.stringify({ eventsInLog: inLog.length, published: published.length, lost: lost.length, duplicated })}`,
    );
    expect(lost).toEqual([]);
    expect(duplicated).toBe(0);
    expect(published.filter((id) => !inLog.includes(id))).toEqual([]);

    // Back to normal: a revocation now reaches the gateway as an event.
    expect(await viaGateway(during)).toBe(200);
    await revoke("during-outage");
    await until(async () => ((await viaGateway(during)) === 401 ? true : undefined), "the revocation at the gateway");
  });
});
