import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, testEventStream } from "../support/nats";
import { until } from "../support/until";

const BAD_KEY = { authorization: "Bearer dtn_not-a-key" };

function expectDaytonaError(body: unknown, statusCode: number) {
  expect(Object.keys(body as object).sort()).toEqual(["error", "message", "path", "statusCode", "timestamp"]);
  expect(body).toMatchObject({ statusCode });
}

describe("failed-auth limit per client IP", () => {
  let api: RunningApi;
  let org: string;
  let user: string;
  beforeAll(async () => {
    api = await startApi({ rateLimits: { failedAuth: { limit: 5, ttlSeconds: 60 }, authenticated: null } });
    org = uniqueId("org");
    user = uniqueId("user");
    await api.setMember(org, user, "owner");
  });
  afterAll(() => api.close());

  it("answers 401 with the remaining budget, then 429 from the failure that reaches the limit, for every route", async () => {
    const ip = "203.0.113.10";
    for (let failure = 1; failure < 5; failure++) {
      const res = await api.app.inject({ url: "/api/api-keys/current", headers: BAD_KEY, remoteAddress: ip });
      expect(res.statusCode).toBe(401);
      expect(res.headers["x-ratelimit-limit-failed-auth"]).toBe("5");
      expect(res.headers["x-ratelimit-remaining-failed-auth"]).toBe(String(5 - failure));
      expect(Number(res.headers["x-ratelimit-reset-failed-auth"])).toBeGreaterThan(0);
      expect(res.headers["retry-after"]).toBeUndefined();
    }
    const fifth = await api.app.inject({ url: "/api/api-keys", headers: BAD_KEY, remoteAddress: ip });
    expect(fifth.statusCode).toBe(429);
    expectDaytonaError(fifth.json(), 429);
    expect(fifth.json()).toMatchObject({
      error: "Too Many Requests",
      message: "ThrottlerException: Too Many Requests",
    });
    expect(fifth.headers["x-ratelimit-remaining-failed-auth"]).toBe("0");
    expect(Number(fifth.headers["retry-after"])).toBeGreaterThan(0);
    expect(Number(fifth.headers["retry-after"])).toBeLessThanOrEqual(60);

    // Blocked: valid credentials from the same IP are refused too, before they are checked.
    const valid = await api.app.inject({
      url: "/api/api-keys",
      headers: await api.jwtHeaders(user, org),
      remoteAddress: ip,
    });
    expect(valid.statusCode).toBe(429);
    expectDaytonaError(valid.json(), 429);
    expect(valid.headers["retry-after"]).toBeDefined();
    expect(valid.headers["x-ratelimit-limit-failed-auth"]).toBe("5");

    // Other IPs are not affected; probes are never throttled.
    const other = await api.app.inject({
      url: "/api/api-keys",
      headers: await api.jwtHeaders(user, org),
      remoteAddress: "203.0.113.11",
    });
    expect(other.statusCode).toBe(200);
    const probe = await api.app.inject({ url: "/health/live", remoteAddress: ip });
    expect(probe.statusCode).toBe(200);
  });

  it("counts forged JWTs and wrong internal tokens as failures", async () => {
    const ip = "203.0.113.20";
    const forged = `Bearer ${await api.issuer.token({ sub: user }, { foreignKey: true })}`;
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await api.app.inject({
        url: "/api/api-keys",
        headers: { authorization: forged, "x-daytona-organization-id": org },
        remoteAddress: ip,
      });
      statuses.push(res.statusCode);
    }
    for (let i = 0; i < 2; i++) {
      const res = await api.app.inject({
        method: "DELETE",
        url: `/internal/organizations/${org}/members/${user}`,
        headers: { authorization: "Bearer not-the-internal-token" },
        remoteAddress: ip,
      });
      statuses.push(res.statusCode);
    }
    expect(statuses).toEqual([401, 401, 401, 401, 429]);
  });

  it("ignores X-Forwarded-For when no proxy is trusted", async () => {
    const proxy = "198.51.100.1";
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await api.app.inject({
        url: "/api/api-keys/current",
        headers: { ...BAD_KEY, "x-forwarded-for": `192.0.2.${i}` },
        remoteAddress: proxy,
      });
      statuses.push(res.statusCode);
    }
    expect(statuses).toEqual([401, 401, 401, 401, 429]);
  });
});

describe("failed-auth limit behind a trusted proxy", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi({
      rateLimits: { failedAuth: { limit: 2, ttlSeconds: 1 }, authenticated: null },
      trustProxy: "198.51.100.0/24",
    });
  });
  afterAll(() => api.close());

  it("counts the client address from X-Forwarded-For, and lifts the block when the window ends", async () => {
    const send = (client: string, remoteAddress = "198.51.100.7") =>
      api.app.inject({
        url: "/api/api-keys/current",
        headers: { ...BAD_KEY, "x-forwarded-for": client },
        remoteAddress,
      });
    expect((await send("192.0.2.1")).statusCode).toBe(401);
    expect((await send("192.0.2.1")).statusCode).toBe(429);
    expect((await send("192.0.2.1")).statusCode).toBe(429);
    // Another client behind the same proxy has its own budget.
    expect((await send("192.0.2.2")).statusCode).toBe(401);
    // A caller that is not a trusted proxy cannot choose its address with the header.
    expect((await send("192.0.2.3", "203.0.113.50")).statusCode).toBe(401);
    expect((await send("192.0.2.4", "203.0.113.50")).statusCode).toBe(429);

    await sleep(1_100);
    const after = await send("192.0.2.1");
    expect(after.statusCode).toBe(401);
    expect(after.headers["x-ratelimit-remaining-failed-auth"]).toBe("1");
  });
});

describe("authenticated limit per organization", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi({ rateLimits: { failedAuth: null, authenticated: { limit: 3, ttlSeconds: 60 } } });
  });
  afterAll(() => api.close());

  it("serves the interactive reference and the OpenAPI document (public routes, registered before authentication)", async () => {
    for (let i = 0; i < 5; i++) {
      const page = await fetch(`${api.baseUrl}/api/docs/static/index.html`);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain("swagger");
      const document = await fetch(`${api.baseUrl}/api/docs-json`);
      expect(document.status).toBe(200);
      expect(((await document.json()) as { paths: object }).paths).toHaveProperty(["/api-keys"]);
    }
    const entry = await fetch(`${api.baseUrl}/api/docs`, { redirect: "manual" });
    expect(entry.status).toBeLessThan(400);
  });

  it("allows the limit per organization, then 429 with Retry-After; other organizations keep their budget", async () => {
    const orgA = uniqueId("org");
    const orgB = uniqueId("org");
    const owner = uniqueId("user");
    await api.setMember(orgA, owner, "owner");
    await api.setMember(orgB, owner, "owner");
    const headersA = await api.jwtHeaders(owner, orgA);

    const created = await api.app.inject({
      method: "POST",
      url: "/api/api-keys",
      headers: headersA,
      payload: { name: "ci", permissions: [] },
    });
    expect(created.statusCode).toBe(201);
    expect(created.headers["x-ratelimit-limit-authenticated"]).toBe("3");
    expect(created.headers["x-ratelimit-remaining-authenticated"]).toBe("2");
    const value = (created.json() as { value: string }).value;

    // An API key counts against its own organization.
    const current = await api.app.inject({
      url: "/api/api-keys/current",
      headers: { authorization: `Bearer ${value}` },
    });
    expect(current.statusCode).toBe(200);
    expect(current.headers["x-ratelimit-remaining-authenticated"]).toBe("1");
    const third = await api.app.inject({ url: "/api/api-keys", headers: headersA });
    expect(third.statusCode).toBe(200);
    expect(third.headers["x-ratelimit-remaining-authenticated"]).toBe("0");

    const fourth = await api.app.inject({ url: "/api/api-keys", headers: headersA });
    expect(fourth.statusCode).toBe(429);
    expectDaytonaError(fourth.json(), 429);
    expect(fourth.headers["x-ratelimit-remaining-authenticated"]).toBe("0");
    expect(Number(fourth.headers["retry-after"])).toBeGreaterThan(0);

    // Refused before the body is read: nothing is written.
    const refusedCreate = await api.app.inject({
      method: "POST",
      url: "/api/api-keys",
      headers: headersA,
      payload: { name: "not-created", permissions: [] },
    });
    expect(refusedCreate.statusCode).toBe(429);
    const written = await sql`SELECT count(*)::int AS n FROM api_keys WHERE organization_id = ${orgA}`.execute(api.db);
    expect(written.rows).toEqual([{ n: 1 }]);
    const list = await api.app.inject({ url: "/api/api-keys", headers: await api.jwtHeaders(owner, orgB) });
    expect(list.statusCode).toBe(200);
    expect(list.headers["x-ratelimit-remaining-authenticated"]).toBe("2");
    expect(list.json()).toEqual([]);

    // Unauthenticated requests do not spend the organization's budget, and failures stay 401.
    const anonymous = await api.app.inject({ url: "/api/api-keys/current", headers: BAD_KEY });
    expect(anonymous.statusCode).toBe(401);
    expect(anonymous.headers["x-ratelimit-limit-authenticated"]).toBeUndefined();
  });
});

/**
 * Over real connections, with NATS (so the API caches keys and answers a cached key's `/current` ahead of fastify):
 * that answer and fastify's routes count against the same windows, and whichever path a request takes, the
 * limits hold.
 */
describe("limits shared by the cached /current answer and fastify", () => {
  const stream = testEventStream();
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi({
      keyUsedThrottleMs: 3_600_000,
      rateLimits: { failedAuth: { limit: 2, ttlSeconds: 60 }, authenticated: { limit: 6, ttlSeconds: 60 } },
      nats: apiNatsOptions(stream),
    });
    await api.app.apiKeyVerifier.whenSubscribed();
  });
  afterAll(async () => {
    await api?.close();
    await stream.cleanup();
  });

  /**
   * Two requests with the key, each answered 200, and back once the key is cached with its use recorded (the first
   * use drops the cached row when its `KeyUsed` commits; the next miss caches it again). Returns their remaining
   * authenticated budgets.
   */
  async function usedUntilCached(value: string): Promise<(string | null)[]> {
    const remaining: (string | null)[] = [];
    const cachedWithUse = () => {
      const cached = api.app.apiKeyVerifier.peek(value);
      return cached?.valid && cached.key.row.last_used_at !== null;
    };
    for (const wait of ["the use recorded", "the key cached again"]) {
      const res = await fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
      expect(res.status).toBe(200);
      remaining.push(res.headers.get("x-ratelimit-remaining-authenticated"));
      await res.arrayBuffer();
      await until(wait, async () =>
        api.app.apiKeyVerifier.peek(value) === undefined || cachedWithUse() ? true : undefined,
      );
    }
    expect(cachedWithUse()).toBe(true);
    return remaining;
  }

  it("counts every authenticated request once, answers 429 past the limit, and refuses a blocked client's cached key", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("user");
    await api.setMember(org, owner, "owner");
    const jwt = await api.jwtHeaders(owner, org);
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...jwt, "content-type": "application/json" },
      body: JSON.stringify({ name: "shared-window", permissions: [] }),
    });
    expect(created.status).toBe(201);
    expect(created.headers.get("x-ratelimit-remaining-authenticated")).toBe("5");
    const { value } = (await created.json()) as { value: string };
    const current = () =>
      fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });

    // The first two go through fastify (a miss; then a miss again, once the recorded use dropped the row), the
    // next ones are answered from the cache ahead of fastify.
    const remaining = await usedUntilCached(value);
    for (let i = 0; i < 2; i++) {
      const res = await current();
      expect(res.status).toBe(200);
      remaining.push(res.headers.get("x-ratelimit-remaining-authenticated"));
      await res.arrayBuffer();
    }
    expect(remaining).toEqual(["4", "3", "2", "1"]);
    const list = await fetch(`${api.baseUrl}/api/api-keys`, { headers: jwt });
    expect(list.status).toBe(200);
    expect(list.headers.get("x-ratelimit-remaining-authenticated")).toBe("0");
    await list.arrayBuffer();
    // The window is used up: the cached key's next request is fastify's 429, with Daytona's body.
    const limited = await current();
    expect(limited.status).toBe(429);
    expect(limited.headers.get("retry-after")).not.toBeNull();
    expectDaytonaError(await limited.json(), 429);

    // A client whose failed authentications used up its window is refused even with a cached valid key.
    const other = uniqueId("org");
    await api.setMember(other, owner, "owner");
    const otherJwt = await api.jwtHeaders(owner, other);
    const second = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...otherJwt, "content-type": "application/json" },
      body: JSON.stringify({ name: "blocked-client", permissions: [] }),
    });
    const otherValue = ((await second.json()) as { value: string }).value;
    expect(await usedUntilCached(otherValue)).toEqual(["4", "3"]);
    for (let i = 0; i < 2; i++) {
      const bad = await fetch(`${api.baseUrl}/api/api-keys/current`, { headers: BAD_KEY });
      await bad.arrayBuffer();
    }
    const blocked = await fetch(`${api.baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${otherValue}` },
    });
    expect(blocked.status).toBe(429);
    expect(blocked.headers.get("x-ratelimit-limit-failed-auth")).toBe("2");
    expectDaytonaError(await blocked.json(), 429);
  });
});
