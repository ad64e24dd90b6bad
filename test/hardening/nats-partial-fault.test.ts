import type { Verifier } from "@keyledger/verifier";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type GatewayStack, startGatewayStack } from "../support/gateway-stack";
import { type OwnNatsServer, startNatsServer, testEventStream } from "../support/nats";
import { TcpProxy } from "../support/tcp-proxy";

/** How long a gateway may take to stop trusting its cache once the relay's heartbeats stop (default 2 s), plus slack. */
const LEASE_DEADLINE_MS = 6_000;

/**
 * Faults that only part of the system sees: the API cut off from NATS while the gateway is not, and a NATS server
 * that hangs (connections open, nothing answers). Either way a revocation cannot reach the gateway over NATS; the
 * relay's heartbeats stop with it, and the gateway stops trusting its cache and asks the API: the revoked key is
 * refused within the heartbeat timeout, not after the cache TTL (10 minutes here).
 */
describe("partial NATS faults", () => {
  let nats: OwnNatsServer;
  let apiSide: TcpProxy;
  let stream: ReturnType<typeof testEventStream>;
  let stack: GatewayStack;
  let verifier: Verifier;
  let create: GatewayStack["create"];
  let revoke: GatewayStack["revoke"];
  let viaGateway: GatewayStack["viaGateway"];

  beforeAll(async () => {
    nats = await startNatsServer();
    apiSide = new TcpProxy("127.0.0.1", nats.port);
    const apiSidePort = await apiSide.start();
    stream = testEventStream(nats.url);
    stack = await startGatewayStack(stream, {
      name: "partial-fault",
      apiNatsUrl: `nats://127.0.0.1:${apiSidePort}`,
      keyUsedThrottleMs: 3_600_000,
    });
    ({ verifier, create, revoke, viaGateway } = stack);
    expect(await verifier.whenSubscribed()).toBe(true);
  });
  afterEach(async () => {
    nats.resume();
    apiSide.restore();
    // Recovered: the relay has published what was held up and beats steadily again (the cache stays on for 3 s).
    const restoredAt = Date.now();
    let onSince: number | undefined;
    while (onSince === undefined || Date.now() - onSince < 3_000) {
      expect(Date.now() - restoredAt, "the cache to stay on after the fault").toBeLessThan(30_000);
      if (!verifier.cacheOn) onSince = undefined;
      else onSince ??= Date.now();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    console.log(`cache on for good ${onSince - restoredAt} ms after the fault ended`);
  });
  afterAll(async () => {
    await stack?.close();
    await apiSide?.close();
    await stream?.cleanup();
    await nats?.close();
  });

  /** A key the gateway holds as valid in its cache (the second request is a cache hit). */
  async function cachedAtGateway(name: string): Promise<string> {
    const value = await create(name);
    // The first answer is cached unless the key's creation event overtakes the lookup (then it is asked again).
    for (let attempt = 0; attempt < 20; attempt++) {
      const hits = verifier.stats.hits;
      expect(await viaGateway(value)).toBe(200);
      if (verifier.stats.hits === hits + 1) return value;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error("the gateway never answered the key from its cache");
  }

  /** Revokes `name`, then the time until the gateway refuses `value` (it must within the deadline). */
  async function refusedWithin(name: string, value: string): Promise<number> {
    await revoke(name);
    const revokedAt = Date.now();
    for (;;) {
      const status = await viaGateway(value);
      const elapsed = Date.now() - revokedAt;
      if (status === 401) return elapsed;
      expect(status).toBe(200);
      expect(elapsed, "the gateway still accepts the revoked key").toBeLessThan(LEASE_DEADLINE_MS);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  it("the API cut off from NATS (a stalled link) while the gateway is not: the revoked key is refused in seconds", async () => {
    const value = await cachedAtGateway("api-side-stalled");
    apiSide.stall();
    const elapsed = await refusedWithin("api-side-stalled", value);
    expect(verifier.subscribed).toBe(true); // the gateway's own link is fine: it stays ready and asks the API
    expect(verifier.cacheOn).toBe(false);
    // Every later request is refused too, and nothing valid is cached for it meanwhile.
    for (let i = 0; i < 5; i++) expect(await viaGateway(value)).toBe(401);
    console.log(`refused ${elapsed} ms after the revoke, with the API's link to NATS stalled`);
  });

  it("a hung NATS server (SIGSTOP): the gateway stops trusting its cache and the revoked key is refused", async () => {
    const value = await cachedAtGateway("server-hung");
    nats.pause();
    const elapsed = await refusedWithin("server-hung", value);
    expect(verifier.cacheOn).toBe(false);
    for (let i = 0; i < 5; i++) expect(await viaGateway(value)).toBe(401);
    console.log(`refused ${elapsed} ms after the revoke, with the NATS server frozen`);
  });

  it("once heartbeats are back, the cache is on again and answers", async () => {
    const value = await cachedAtGateway("after-recovery");
    expect(verifier.cacheOn).toBe(true);
    expect(await viaGateway(value)).toBe(200);
  });
});
