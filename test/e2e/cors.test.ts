import { parseApiConfig } from "@keyledger/api";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, testEventStream } from "../support/nats";

const APP = "https://app.example.com";

describe("CORS, any origin (the default, as Daytona's enableCors({ origin: true, credentials: true }))", () => {
  const stream = testEventStream();
  let api: RunningApi;
  let org: string;
  let jwt: Record<string, string>;
  beforeAll(async () => {
    api = await startApi({
      nats: apiNatsOptions(stream),
      rateLimits: { failedAuth: null, authenticated: { limit: 1000, ttlSeconds: 60 } },
    });
    await api.app.apiKeyVerifier.whenSubscribed();
    org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    jwt = await api.jwtHeaders(user, org);
  });
  afterAll(async () => {
    await api.close();
    await stream.cleanup();
  });

  it("answers a browser's preflight for every method and header the official client sends", async () => {
    for (const method of ["GET", "POST", "DELETE"]) {
      const preflight = await fetch(`${api.baseUrl}/api/api-keys/some-name`, {
        method: "OPTIONS",
        headers: {
          origin: APP,
          "access-control-request-method": method,
          "access-control-request-headers": "authorization,content-type,x-daytona-organization-id",
        },
      });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get("access-control-allow-origin")).toBe(APP);
      expect(preflight.headers.get("access-control-allow-credentials")).toBe("true");
      expect(preflight.headers.get("access-control-allow-methods")).toContain(method);
      expect(preflight.headers.get("access-control-allow-headers")).toBe(
        "authorization,content-type,x-daytona-organization-id",
      );
    }
  });

  it("answers an OPTIONS that is not a preflight as a route that does not exist, in the error body", async () => {
    const variants: Record<string, string>[] = [{}, { origin: APP }, { "access-control-request-method": "GET" }];
    for (const headers of variants) {
      const res = await fetch(`${api.baseUrl}/api/api-keys`, { method: "OPTIONS", headers });
      expect(res.status).toBe(404);
      const body = (await res.json()) as Record<string, unknown>;
      expect(Object.keys(body).sort()).toEqual(["error", "message", "path", "statusCode", "timestamp"]);
      expect(body).toMatchObject({ statusCode: 404, path: "/api/api-keys" });
    }
  });

  it("puts the headers on answers and errors, and lets the client read the request id and rate-limit headers", async () => {
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...jwt, origin: APP, "content-type": "application/json" },
      body: JSON.stringify({ name: "browser", permissions: [] }),
    });
    expect(created.status).toBe(201);
    expect(created.headers.get("access-control-allow-origin")).toBe(APP);
    const exposed = created.headers.get("access-control-expose-headers") ?? "";
    expect(exposed).toContain("x-request-id");
    expect(exposed).toContain("x-ratelimit-remaining-authenticated");
    const { value } = (await created.json()) as { value: string };

    const refused = await fetch(`${api.baseUrl}/api/api-keys`, { headers: { origin: APP } });
    expect(refused.status).toBe(401);
    expect(refused.headers.get("access-control-allow-origin")).toBe(APP);

    // A cached key's /current: answered by fastify (with the headers) for a browser, ahead of it otherwise.
    for (let i = 0; i < 3; i++) {
      const fromBrowser = await fetch(`${api.baseUrl}/api/api-keys/current`, {
        headers: { authorization: `Bearer ${value}`, origin: APP },
      });
      expect(fromBrowser.status).toBe(200);
      expect(fromBrowser.headers.get("access-control-allow-origin")).toBe(APP);
      expect(fromBrowser.headers.get("access-control-allow-credentials")).toBe("true");
      const fromServer = await fetch(`${api.baseUrl}/api/api-keys/current`, {
        headers: { authorization: `Bearer ${value}` },
      });
      expect(fromServer.status).toBe(200);
      expect(fromServer.headers.get("access-control-allow-origin")).toBeNull();
    }
  });
});

describe("CORS limited to configured origins, or off", () => {
  let limited: RunningApi;
  let off: RunningApi;
  beforeAll(async () => {
    limited = await startApi({ corsOrigins: [APP] });
    off = await startApi({ corsOrigins: "none" });
  });
  afterAll(async () => {
    await limited.close();
    await off.close();
  });

  it("gives the headers to the configured origins only; with none, to nobody", async () => {
    const ask = (api: RunningApi, origin: string) =>
      fetch(`${api.baseUrl}/api/api-keys`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST" },
      });
    expect((await ask(limited, APP)).headers.get("access-control-allow-origin")).toBe(APP);
    expect((await ask(limited, "https://evil.example")).headers.get("access-control-allow-origin")).toBeNull();
    const get = await fetch(`${limited.baseUrl}/health/live`, { headers: { origin: "https://evil.example" } });
    expect(get.status).toBe(200);
    expect(get.headers.get("access-control-allow-origin")).toBeNull();
    const offPreflight = await ask(off, APP);
    expect(offPreflight.status).toBe(404);
    expect(offPreflight.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("reads CORS_ORIGINS: unset or * any, none, a list of origins; anything else stops the start", () => {
    expect(parseApiConfig({}).corsOrigins).toBe("any");
    expect(parseApiConfig({ CORS_ORIGINS: "*" }).corsOrigins).toBe("any");
    expect(parseApiConfig({ CORS_ORIGINS: "none" }).corsOrigins).toBe("none");
    expect(parseApiConfig({ CORS_ORIGINS: `${APP}, http://localhost:5173` }).corsOrigins).toEqual([
      APP,
      "http://localhost:5173",
    ]);
    for (const bad of ["app.example.com", `${APP}/`, `${APP}/path`, "ftp://x.example", "https://a.example,"]) {
      expect(() => parseApiConfig({ CORS_ORIGINS: bad }), bad).toThrow(/CORS_ORIGINS/);
    }
  });
});
