import { createServer, request as httpRequest, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metricsRegistry } from "../../services/api/src/metrics";
import { RateLimits } from "../../services/api/src/plugins/app/rate-limits";
import type { ApiKeyRow } from "../../services/api/src/read-model-queries";
import {
  answerBeforeFastify,
  type CachedCurrentKeyAnswerer,
  cachedCurrentKeyAnswerer,
} from "../../services/api/src/routes/api-keys/current-key-fast-path";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, testEventStream } from "../support/nats";
import { until } from "../support/until";

/** The route's 200s in the latency histogram and the valid verifications, from the process's registry. */
async function answersInMetrics(): Promise<{ latencyCount: number; validVerifications: number }> {
  const text = await metricsRegistry.metrics();
  const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? 0);
  return {
    latencyCount: value(
      /^keyledger_http_request_duration_seconds_count\{method="GET",route="\/api\/api-keys\/current",status_code="200"\} (\d+)$/m,
    ),
    validVerifications: value(/^keyledger_api_key_verifications_total\{outcome="valid"\} (\d+)$/m),
  };
}

/** What fastify would have had to answer: the test server's stand-in for fastify. */
const DECLINED = 599;

/** A server where `answerer` goes first and a stand-in for fastify answers 599 to what it declines. */
async function answeringServer(answerer: CachedCurrentKeyAnswerer): Promise<{ url: string; close(): Promise<void> }> {
  // As the API's server: requests without Host reach the answerer (fastify answers them 400).
  const server = createServer({ requireHostHeader: false }, (req, res) => {
    if (answerer.answer(req, res)) return;
    req.resume();
    res.writeHead(DECLINED).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

type Answer = { status: number; headers: IncomingMessage["headers"]; body: string };

/** One request with exactly the header lines given (repeated names stay repeated), over a fresh connection. */
function send(
  url: string,
  options: { method?: string; path?: string; headers?: [string, string][]; body?: string; setHost?: boolean } = {},
): Promise<Answer> {
  const target = new URL(options.path ?? "/api/api-keys/current", url);
  // A name given twice is sent as two header lines.
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of options.headers ?? []) {
    const seen = headers[name];
    headers[name] = seen === undefined ? value : [...(Array.isArray(seen) ? seen : [seen]), value];
  }
  return new Promise((resolve, reject) => {
    const request = { method: options.method ?? "GET", headers, agent: false, setHost: options.setHost ?? true };
    const req = httpRequest(target, request, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

/**
 * `cachedCurrentKeyAnswerer` on a server of its own, in front of a stand-in for fastify that answers 599: which
 * requests it takes is then visible, and what it counts and records is checked against the same verifier and
 * counters the running API uses.
 */
describe("the cached /current answer, ahead of fastify", () => {
  const stream = testEventStream();
  let api: RunningApi;
  let main: { url: string; close(): Promise<void> };
  let url: string;
  let answerer: CachedCurrentKeyAnswerer;
  let rateLimits: RateLimits;
  const uses: { keyId: string; requestId: string }[] = [];
  let logsRequests = false;

  function answererWith(limits: RateLimits, trustsProxy: boolean): CachedCurrentKeyAnswerer {
    return cachedCurrentKeyAnswerer({
      verifier: api.app.apiKeyVerifier,
      rateLimits: limits,
      trustsProxy,
      onApiKeyUsed: (key: ApiKeyRow, requestId: string) => uses.push({ keyId: key.key_id, requestId }),
      logsRequests: () => logsRequests,
      onError: (error) => {
        throw error;
      },
    });
  }
  let owner: Record<string, string>;
  let org: string;

  /** A key created through the API and held valid in the API's verifier (its first use recorded and seen). */
  async function cachedKey(name: string): Promise<string> {
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...owner, "content-type": "application/json" },
      body: JSON.stringify({ name, permissions: [] }),
    });
    expect(created.status).toBe(201);
    const { value } = (await created.json()) as { value: string };
    await until(`${name} cached with its first use`, async () => {
      const res = await fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
      expect(res.status).toBe(200);
      const cached = api.app.apiKeyVerifier.peek(value);
      return cached?.valid && cached.key.row.last_used_at !== null ? true : undefined;
    });
    return value;
  }

  beforeAll(async () => {
    api = await startApi({
      keyUsedThrottleMs: 3_600_000,
      nats: apiNatsOptions(stream),
    });
    await api.app.apiKeyVerifier.whenSubscribed();
    org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    owner = await api.jwtHeaders(user, org);
    rateLimits = new RateLimits({ failedAuth: null, authenticated: { limit: 100, ttlSeconds: 60 } });
    answerer = answererWith(rateLimits, false);
    main = await answeringServer(answerer);
    url = main.url;
  });
  afterAll(async () => {
    await main?.close();
    await api?.close();
    await stream.cleanup();
  });

  it("answers a cached valid key with the route's status, body and headers, and counts and records the use", async () => {
    const value = await cachedKey("fast-path-parity");
    // The route, through fastify (no-cache makes the API read the database): the reference answer.
    const reference = await fetch(`${api.baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${value}`, "cache-control": "no-cache" },
    });
    expect(reference.status).toBe(200);
    const referenceBody = await reference.text();

    const metricsBefore = await answersInMetrics();
    const first = await send(url, { headers: [["authorization", `Bearer ${value}`]] });
    expect(first.status).toBe(200);
    expect(first.body).toBe(referenceBody);
    // Counted where the route's answers are: its latency series and the valid verifications.
    const metricsAfter = await answersInMetrics();
    expect(metricsAfter.latencyCount).toBe(metricsBefore.latencyCount + 1);
    expect(metricsAfter.validVerifications).toBe(metricsBefore.validVerifications + 1);
    expect(JSON.parse(first.body)).toMatchObject({ name: "fast-path-parity", organizationId: org });
    expect(first.headers["content-type"]).toBe(reference.headers.get("content-type"));
    expect(first.headers["content-length"]).toBe(String(Buffer.byteLength(referenceBody)));
    expect(first.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
    expect(first.headers["x-ratelimit-limit-authenticated"]).toBe("100");
    expect(first.headers["x-ratelimit-remaining-authenticated"]).toBe("99");
    expect(Number(first.headers["x-ratelimit-reset-authenticated"])).toBeGreaterThan(0);
    expect(first.headers["x-keyledger-valid-until"]).toBeUndefined();
    const keyId = uses.at(-1)?.keyId;
    expect(uses.at(-1)).toEqual({ keyId, requestId: first.headers["x-request-id"] });

    // A well-formed request id is echoed (and recorded with the use); anything else is replaced.
    const echoed = await send(url, {
      headers: [
        ["authorization", `Bearer ${value}`],
        ["x-request-id", "trace-42.a:b"],
      ],
    });
    expect(echoed.headers["x-request-id"]).toBe("trace-42.a:b");
    expect(echoed.headers["x-ratelimit-remaining-authenticated"]).toBe("98");
    expect(uses.at(-1)).toEqual({ keyId, requestId: "trace-42.a:b" });
    const replaced = await send(url, {
      headers: [
        ["authorization", `bearer   ${value}  `],
        ["x-request-id", "bad id with spaces"],
      ],
    });
    expect(replaced.status).toBe(200);
    expect(replaced.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("declines, counting and recording nothing, every request that is not a cached valid key's plain GET", async () => {
    const value = await cachedKey("fast-path-declines");
    const revoked = await cachedKey("fast-path-revoked");
    const revoke = await fetch(`${api.baseUrl}/api/api-keys/fast-path-revoked`, { method: "DELETE", headers: owner });
    expect(revoke.status).toBe(204);
    // The revocation reached the API's verifier: a database read caches the refusal.
    await until("the revoked key refused", async () => {
      const res = await fetch(`${api.baseUrl}/api/api-keys/current`, {
        headers: { authorization: `Bearer ${revoked}` },
      });
      return res.status === 401 ? true : undefined;
    });
    const bearer: [string, string] = ["authorization", `Bearer ${value}`];
    const remainingBefore = Number(
      (await send(url, { headers: [bearer] })).headers["x-ratelimit-remaining-authenticated"],
    );
    const usesBefore = uses.length;
    const declined: [string, Parameters<typeof send>[1]][] = [
      ["POST", { method: "POST", headers: [bearer] }],
      ["HEAD", { method: "HEAD", headers: [bearer] }],
      ["a query string", { path: "/api/api-keys/current?x=1", headers: [bearer] }],
      ["another path", { path: "/api/api-keys/current/", headers: [bearer] }],
      ["no credential", { headers: [] }],
      ["not a bearer credential", { headers: [["authorization", `Basic ${value}`]] }],
      ["two credentials", { headers: [bearer, bearer] }],
      ["a JWT", { headers: [["authorization", owner.authorization as string]] }],
      ["a key nobody has", { headers: [["authorization", "Bearer dtn_0000000000000000000000000000000000000000"]] }],
      ["a revoked key", { headers: [["authorization", `Bearer ${revoked}`]] }],
      ["Cache-Control: no-cache", { headers: [bearer, ["cache-control", "no-cache"]] }],
      ["a body", { headers: [bearer, ["content-type", "application/json"], ["content-length", "2"]], body: "{}" }],
      ["no Host header", { headers: [bearer], setHost: false }],
    ];
    for (const [what, options] of declined) {
      const answer = await send(url, options);
      expect(answer.status, what).toBe(DECLINED);
    }
    logsRequests = true;
    expect((await send(url, { headers: [bearer] })).status, "while requests are logged").toBe(DECLINED);
    logsRequests = false;
    expect(uses.length).toBe(usesBefore);
    // Nothing was counted against the organization's window: the next answer is the next count.
    const taken = await send(url, { headers: [bearer] });
    expect(taken.status).toBe(200);
    expect(taken.headers["x-ratelimit-remaining-authenticated"]).toBe(String(remainingBefore - 1));
    expect(uses.length).toBe(usesBefore + 1);
  });

  it("leaves to fastify the request that would pass the organization's limit", async () => {
    const value = await cachedKey("fast-path-org-limit");
    const limited = await answeringServer(
      answererWith(new RateLimits({ failedAuth: null, authenticated: { limit: 2, ttlSeconds: 60 } }), false),
    );
    try {
      const bearer: [string, string] = ["authorization", `Bearer ${value}`];
      const remaining = [];
      for (let i = 0; i < 2; i++)
        remaining.push((await send(limited.url, { headers: [bearer] })).headers["x-ratelimit-remaining-authenticated"]);
      expect(remaining).toEqual(["1", "0"]);
      // The 3rd is over the limit: fastify counts it and answers 429.
      expect((await send(limited.url, { headers: [bearer] })).status).toBe(DECLINED);
    } finally {
      await limited.close();
    }
  });

  it("leaves to fastify a client IP with used-up failed authentications, and behind a trusted proxy any client while failures are on record", async () => {
    const value = await cachedKey("fast-path-failed-auth");
    const bearer: [string, string] = ["authorization", `Bearer ${value}`];
    const limits = new RateLimits({ failedAuth: { limit: 2, ttlSeconds: 60 }, authenticated: null });
    const direct = await answeringServer(answererWith(limits, false));
    const proxied = await answeringServer(answererWith(limits, true));
    try {
      expect((await send(direct.url, { headers: [bearer] })).status).toBe(200);
      expect((await send(proxied.url, { headers: [bearer] })).status).toBe(200);
      // Another client's failures block nobody else, but behind a proxy only fastify knows who is asking.
      limits.countFailure("198.51.100.7", Date.now());
      limits.countFailure("198.51.100.7", Date.now());
      expect((await send(direct.url, { headers: [bearer] })).status).toBe(200);
      expect((await send(proxied.url, { headers: [bearer] })).status).toBe(DECLINED);
      // This client's own used-up window: fastify answers 429.
      limits.countFailure("127.0.0.1", Date.now());
      limits.countFailure("127.0.0.1", Date.now());
      expect((await send(direct.url, { headers: [bearer] })).status).toBe(DECLINED);
    } finally {
      await direct.close();
      await proxied.close();
    }
    // Behind a proxy, the answer is back once every failed-auth window has ended.
    const shortWindows = new RateLimits({ failedAuth: { limit: 2, ttlSeconds: 1 }, authenticated: null });
    const proxiedShort = await answeringServer(answererWith(shortWindows, true));
    try {
      shortWindows.countFailure("198.51.100.7", Date.now());
      expect((await send(proxiedShort.url, { headers: [bearer] })).status).toBe(DECLINED);
      await sleep(1_100);
      expect((await send(proxiedShort.url, { headers: [bearer] })).status).toBe(200);
    } finally {
      await proxiedShort.close();
    }
  });

  it("declines everything once closed", async () => {
    const value = await cachedKey("fast-path-closed");
    const answerer = answererWith(new RateLimits({ failedAuth: null, authenticated: null }), false);
    const closing = await answeringServer(answerer);
    try {
      expect((await send(closing.url, { headers: [["authorization", `Bearer ${value}`]] })).status).toBe(200);
      answerer.close();
      expect((await send(closing.url, { headers: [["authorization", `Bearer ${value}`]] })).status).toBe(DECLINED);
    } finally {
      await closing.close();
    }
  });
});

describe("answerBeforeFastify", () => {
  it("sends the server's requests to the answerer first and to the server's own listener when it declines", async () => {
    const server = createServer((_req, res) => res.writeHead(DECLINED).end("fastify"));
    answerBeforeFastify(server, {
      answer(req, res) {
        if (req.url !== "/answered") return false;
        res.end("answerer");
        return true;
      },
      close() {},
    });
    expect(server.listeners("request")).toHaveLength(1);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      expect(await send(url, { path: "/answered" })).toMatchObject({ status: 200, body: "answerer" });
      expect(await send(url, { path: "/other" })).toMatchObject({ status: DECLINED, body: "fastify" });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("refuses a server without exactly one request listener", () => {
    const declineAll = { answer: () => false, close() {} };
    expect(() => answerBeforeFastify(createServer(), declineAll)).toThrow(/found 0/);
    const two = createServer(() => {});
    two.on("request", () => {});
    expect(() => answerBeforeFastify(two, declineAll)).toThrow(/found 2/);
  });
});
