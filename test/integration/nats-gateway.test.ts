import type { AddressInfo } from "node:net";
import { KeyCommands } from "@keyledger/api";
import { hashKeyValue } from "@keyledger/domain";
import { buildGateway, type Gateway } from "@keyledger/gateway";
import { createVerifier, type Verifier } from "@keyledger/verifier";
import Fastify, { type FastifyInstance } from "fastify";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, startRelayAtLogHead, testEventStream } from "../support/nats";

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** An upstream that answers with the headers and body it received. */
async function startEchoUpstream(): Promise<{ app: FastifyInstance; url: string }> {
  const app = Fastify();
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "string" }, (_req, body, done) => done(null, body));
  app.all("/*", async (request) => ({
    method: request.method,
    url: request.url,
    headers: request.headers,
    body: request.body ?? null,
  }));
  await app.listen({ port: 0, host: "127.0.0.1" });
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` };
}

type Echo = { method: string; url: string; headers: Record<string, string>; body: string | null };

describe("gateway: API keys checked at the edge, revocations over NATS", () => {
  const stream = testEventStream();
  let api: RunningApi;
  let upstream: { app: FastifyInstance; url: string };
  let verifier: Verifier;
  let gateway: Gateway;
  let gatewayUrl: string;

  /** When each KeyRevoked committed (performance.now() in this process), by key hash. */
  const revokedCommits = new Map<string, number>();

  beforeAll(async () => {
    await startRelayAtLogHead(stream);
    api = await startApi({
      keyUsedThrottleMs: 300,
      onCommitted: (events) => {
        const now = performance.now();
        for (const event of events) {
          if (event.type === "KeyRevoked") revokedCommits.set(event.data.keyHash, now);
        }
      },
      nats: apiNatsOptions(stream),
    });
    upstream = await startEchoUpstream();
    verifier = createVerifier({
      apiUrl: api.baseUrl,
      natsUrl: stream.natsUrl,
      subjectPrefix: stream.subjectPrefix,
      // Long enough that only an event can make the gateway forget a key during the test.
      cache: { maxEntries: 1000, ttlMs: 600_000 },
      keyUseReports: { intervalMs: 50 },
    });
    gateway = await buildGateway({ upstreamUrl: upstream.url, verifier });
    await gateway.listen({ port: 0, host: "127.0.0.1" });
    gatewayUrl = `http://127.0.0.1:${(gateway.server.address() as AddressInfo).port}`;
    await until(async () => ((await fetch(`${gatewayUrl}/health/ready`)).status === 200 ? true : undefined), "ready");
  });
  afterAll(async () => {
    await gateway?.close();
    await verifier?.close();
    await upstream?.app.close();
    await api?.close();
    await stream.cleanup();
  });

  async function createKey(
    permissions: string[] = ["write:sandboxes", "read:volumes"],
    ids: { org?: string; user?: string } = {},
  ) {
    const org = ids.org ?? uniqueId("org");
    const user = ids.user ?? uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const name = "edge";
    const res = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name, permissions }),
    });
    expect(res.status).toBe(201);
    const { value } = (await res.json()) as { value: string };
    return { org, user, name, value, headers };
  }

  const viaGateway = (value: string | undefined, path = "/sandbox/1?x=y", init: RequestInit = {}) =>
    fetch(`${gatewayUrl}${path}`, {
      ...init,
      headers: { ...(value ? { authorization: `Bearer ${value}` } : {}), ...(init.headers as Record<string, string>) },
    });

  it("is live at once and ready once subscribed", async () => {
    expect((await fetch(`${gatewayUrl}/health/live`)).status).toBe(200);
    expect(await (await fetch(`${gatewayUrl}/health/ready`)).json()).toEqual({
      status: "ok",
      checks: { nats: "subscribed" },
    });
  });

  it("forwards a good key's requests with identity headers, replacing any the client sent", async () => {
    const { org, user, value } = await createKey();
    const res = await viaGateway(value, "/sandbox/1?x=y", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-keyledger-user-id": "someone-else",
        "X-Keyledger-Organization-Id": "other-org",
        "x-keyledger-extra": "spoof",
      },
      body: JSON.stringify({ hello: "world" }),
    });
    expect(res.status).toBe(200);
    const echo = (await res.json()) as Echo;
    expect(echo).toMatchObject({ method: "POST", url: "/sandbox/1?x=y", body: '{"hello":"world"}' });
    expect(echo.headers["x-keyledger-user-id"]).toBe(user);
    expect(echo.headers["x-keyledger-organization-id"]).toBe(org);
    expect(echo.headers["x-keyledger-permissions"]?.split(",").sort()).toEqual(["read:volumes", "write:sandboxes"]);
    expect(echo.headers["x-keyledger-extra"]).toBeUndefined();
  });

  it("carries owners' ids that are no valid header value percent-encoded, in both modes, without crashing", async () => {
    // Outside Latin-1, beyond ASCII, a space and a `%` (the API refuses control characters in ids; the organization
    // id goes to the API in a header itself, so it stays within Latin-1).
    const user = `${uniqueId("u😀")} 世界 ü%|`;
    const org = `${uniqueId("org")} é%`;
    const { value } = await createKey(["write:sandboxes"], { user, org });
    const encodedUser = encodeURIComponent(user).replaceAll("%7C", "|");
    const res = await viaGateway(value, "/sandbox/1");
    expect(res.status).toBe(200);
    const echo = (await res.json()) as Echo;
    expect(echo.headers["x-keyledger-user-id"]).toBe(encodedUser);
    expect(decodeURIComponent(echo.headers["x-keyledger-user-id"] as string)).toBe(user);
    expect(decodeURIComponent(echo.headers["x-keyledger-organization-id"] as string)).toBe(org);
    const edge = await buildGateway({ mode: "forward-auth", verifier });
    try {
      const edgeUrl = await edge.listen({ port: 0, host: "127.0.0.1" });
      // Twice: a lookup at the API (answered in a promise's callback), then most likely a cache hit.
      for (let i = 0; i < 2; i++) {
        const allowed = await fetch(`${edgeUrl}/verify`, {
          headers: { authorization: `Bearer ${value}` },
          signal: AbortSignal.timeout(10_000),
        });
        expect(allowed.status).toBe(200);
        expect(decodeURIComponent(allowed.headers.get("x-keyledger-user-id") as string)).toBe(user);
        expect(decodeURIComponent(allowed.headers.get("x-keyledger-organization-id") as string)).toBe(org);
      }
    } finally {
      await edge.close();
    }
  });

  it("answers 401 with Daytona's error body for missing, malformed, unknown and JWT credentials", async () => {
    const { value } = await createKey();
    const unknown = `${value.slice(0, 4)}${"0".repeat(56)}${value.slice(60)}`;
    for (const bearer of [undefined, "nope", `${value.slice(0, -1)}x`, unknown, "a.b.c"]) {
      const res = await viaGateway(bearer, "/anything");
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({
        path: "/anything",
        statusCode: 401,
        error: "Unauthorized",
        message: "Invalid credentials",
      });
    }
  });

  it("rejects a key revoked through the API (event over NATS, not a cache expiry)", async () => {
    const { name, value, headers } = await createKey();
    expect((await viaGateway(value)).status).toBe(200);
    // Cached: the events of the key's creation (and its owner's grant) may reach the verifier after its first
    // lookup and drop what that lookup brought back; wait until a request is answered without asking the API.
    await until(async () => {
      const lookups = verifier.stats.lookups;
      expect((await viaGateway(value)).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 50));
      return verifier.stats.lookups === lookups ? true : undefined;
    }, "the gateway to hold the key in its cache");
    const lookupsBefore = verifier.stats.lookups;
    // In-process probe of the gateway's verifier on every turn of the event loop, to time the event's arrival.
    let verifierRejectedAt: number | undefined;
    const probe = (async () => {
      while (verifierRejectedAt === undefined) {
        if (!(await verifier.verify(value)).valid) verifierRejectedAt = performance.now();
        else await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    const revokedAt = performance.now();
    const deleted = await fetch(`${api.baseUrl}/api/api-keys/${name}`, { method: "DELETE", headers });
    expect(deleted.status).toBe(204);
    const committedAt = performance.now();
    let attempts = 0;
    const status = await until(async () => {
      attempts += 1;
      const res = await viaGateway(value);
      await res.body?.cancel();
      return res.status === 401 ? res.status : undefined;
    }, "the gateway to reject the revoked key");
    const rejectedAt = performance.now();
    expect(status).toBe(401);
    // Rejected from the event (a tombstone), without asking the API again.
    expect(verifier.stats.lookups).toBe(lookupsBefore);
    await probe;
    const commit = revokedCommits.get(hashKeyValue(value));
    console.log(
      `revocation propagation (gateway): commit → verifier rejects ${
        commit !== undefined && verifierRejectedAt !== undefined ? (verifierRejectedAt - commit).toFixed(3) : "?"
      } ms; DELETE round trip ${(committedAt - revokedAt).toFixed(2)} ms, ` +
        `first rejection ${(rejectedAt - committedAt).toFixed(2)} ms after the 204, ${attempts} request(s) ` +
        "(one test run, not a benchmark)",
    );
  });

  it("rejects a member's keys after the member is removed", async () => {
    const { org, user, value } = await createKey();
    expect((await viaGateway(value)).status).toBe(200);
    await api.removeMember(org, user);
    await until(async () => ((await viaGateway(value)).status === 401 ? true : undefined), "the removal to arrive");
  });

  it("enforces in the API a revocation only its relay published: the API's connection does not echo its own publishes", async () => {
    const { org, user, name, value } = await createKey();
    const current = () =>
      fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
    expect((await current()).status).toBe(200);
    // The API answers this key from its cache, which only an event can invalidate.
    expect(api.app.apiKeyVerifier.subscribed).toBe(true);
    expect(api.app.apiKeyVerifier.peek(value)?.valid).toBe(true);
    const publishedBefore = api.app.eventBus?.relay?.stats.published ?? 0;
    // Revoked by another writer that publishes nothing (as a replica whose fast path never reached NATS): only the
    // relay, in this API, publishes the event.
    const elsewhere = new KeyCommands(api.db);
    try {
      await elsewhere.revokeApiKey({ organizationId: org, userId: user, name }, "deleted", {
        now: new Date(),
        metadata: { actorUserId: user, organizationId: org, authMethod: "jwt", requestId: null },
      });
    } finally {
      await elsewhere.close();
    }
    await until(async () => ((await current()).status === 401 ? true : undefined), "the API to reject the key");
    // The relay applies the event to its own API (onPublishing) before the publish's acknowledgement, which is what
    // it counts: the count may follow the 401 by a moment.
    await until(
      async () => ((api.app.eventBus?.relay?.stats.published ?? 0) > publishedBefore ? true : undefined),
      "the relay to count its publish",
    );
    expect(api.app.apiKeyVerifier.peek(value)).toMatchObject({ valid: false, code: "REVOKED" });
  });

  it("reports verified uses over NATS, so lastUsedAt follows gateway traffic (throttled)", async () => {
    const { org, name, value, headers } = await createKey();
    const usedEvents = async () => {
      const result = await sql<{ n: string }>`
        SELECT count(*) AS n FROM events WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org}`.execute(
        api.db,
      );
      return Number(result.rows[0]?.n ?? 0);
    };
    expect((await viaGateway(value)).status).toBe(200);
    await until(async () => ((await usedEvents()) >= 1 ? true : undefined), "the first KeyUsed");
    // The first answer is not cached when an event about the key or its owner (its KeyCreated, the owner's
    // MemberAccessChanged) reached the gateway while it was being looked up (the lookup may have read before that
    // commit); the next request's is. On a loaded machine that happens.
    await until(async () => {
      const before = verifier.stats.lookups;
      expect((await viaGateway(value)).status).toBe(200);
      return verifier.stats.lookups === before ? true : undefined;
    }, "a cache hit at the gateway");
    const lookups = verifier.stats.lookups;
    await new Promise((resolve) => setTimeout(resolve, 350));
    // A cache hit: the API is not asked, only told through the report.
    expect((await viaGateway(value)).status).toBe(200);
    expect(verifier.stats.lookups).toBe(lookups);
    await until(async () => ((await usedEvents()) >= 2 ? true : undefined), "the reported KeyUsed");
    const item = (await (await fetch(`${api.baseUrl}/api/api-keys/${name}`, { headers })).json()) as {
      lastUsedAt: string | null;
    };
    expect(item.lastUsedAt).not.toBeNull();
  });

  it("answers 502 with the error body when upstream is down, and 503 when the API cannot be asked", async () => {
    const { value } = await createKey();
    const lonely = await buildGateway({ upstreamUrl: "http://127.0.0.1:9", verifier });
    await lonely.listen({ port: 0, host: "127.0.0.1" });
    const blind = createVerifier({ apiUrl: "http://127.0.0.1:9", lookupTimeoutMs: 1_000 });
    const cut = await buildGateway({ upstreamUrl: upstream.url, verifier: blind });
    await cut.listen({ port: 0, host: "127.0.0.1" });
    try {
      const lonelyUrl = `http://127.0.0.1:${(lonely.server.address() as AddressInfo).port}`;
      const res = await fetch(`${lonelyUrl}/x`, { headers: { authorization: `Bearer ${value}` } });
      expect(res.status).toBe(502);
      expect(await res.json()).toMatchObject({ statusCode: 502, error: "Bad Gateway" });
      const cutUrl = `http://127.0.0.1:${(cut.server.address() as AddressInfo).port}`;
      // Without NATS it never caches, so it is ready at once.
      expect(await (await fetch(`${cutUrl}/health/ready`)).json()).toEqual({ status: "ok", checks: { nats: "off" } });
      const unavailable = await fetch(`${cutUrl}/x`, { headers: { authorization: `Bearer ${value}` } });
      expect(unavailable.status).toBe(503);
      expect(await unavailable.json()).toMatchObject({ statusCode: 503, message: "Service temporarily unavailable" });
    } finally {
      await lonely.close();
      await cut.close();
      await blind.close();
    }
  });
});
