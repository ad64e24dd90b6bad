import { createServer, type IncomingMessage, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { VerifiedKey, Verifier, VerifyResult } from "@keyledger/verifier";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGateway, type Gateway, GatewayConfigError, parseGatewayConfig } from "../src/index";

const GOOD = "good-key";
const KEY: VerifiedKey = {
  name: "k",
  userId: "user-1",
  organizationId: "org-1",
  permissions: ["write:sandboxes", "read:volumes"],
  expiresAt: null,
};

/** A verifier that knows one key; `failing` makes lookups reject (the API unreachable). */
function fakeVerifier(options: { failing?: boolean } = {}): Verifier {
  return {
    verify: (bearer: string): Promise<VerifyResult> => {
      if (options.failing) return Promise.reject(new Error("API unreachable"));
      return Promise.resolve(bearer === GOOD ? { valid: true, key: KEY } : { valid: false, code: "NOT_FOUND" });
    },
    peek: () => undefined, // no cache: every request goes through verify()
    subscribed: true,
    invalidation: "nats",
    whenSubscribed: () => Promise.resolve(true),
    applyEvent: () => {},
    stats: { hits: 0, misses: 0, lookups: 0, invalidations: 0, flushes: 0 },
    cacheSize: 0,
    close: () => Promise.resolve(),
  };
}

type Echo = { method: string; url: string; headers: Record<string, string>; body: string };

/** Answers with what it received; `/big/<n>` answers n bytes in 64 KiB writes; `/slow…` waits 50 ms. */
async function startUpstream(): Promise<{ server: Server; url: string }> {
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const big = /^\/big\/(\d+)$/.exec(req.url ?? "");
      if (big) {
        const total = Number(big[1]);
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(total) });
        const chunk = Buffer.alloc(65_536, 0x61);
        let sent = 0;
        const more = () => {
          while (sent < total) {
            const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
            sent += part.length;
            if (!res.write(part)) return void res.once("drain", more);
          }
          res.end();
        };
        more();
        return;
      }
      const answer = () => {
        const echo: Echo = {
          method: req.method ?? "",
          url: req.url ?? "",
          headers: req.headers as Record<string, string>,
          body: Buffer.concat(chunks).toString(),
        };
        res.writeHead(201, { "content-type": "application/json", connection: "x-upstream-hop", "x-upstream-hop": "1" });
        res.end(JSON.stringify(echo));
      };
      if (req.url?.startsWith("/slow")) setTimeout(answer, 50);
      else answer();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** A raw request (fetch cannot send a Connection header), resolving with status, headers and body. */
function send(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", headers: options.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

describe("gateway (proxy and forward-auth modes, fake verifier)", () => {
  let upstream: { server: Server; url: string };
  const gateways: Gateway[] = [];
  let proxyUrl: string;
  let pipelinedUrl: string;
  let forwardAuthUrl: string;
  let failingUrl: string;

  beforeAll(async () => {
    upstream = await startUpstream();
    const start = async (gateway: Gateway) => {
      gateways.push(gateway);
      return gateway.listen({ port: 0, host: "127.0.0.1" });
    };
    proxyUrl = await start(await buildGateway({ upstreamUrl: upstream.url, verifier: fakeVerifier() }));
    pipelinedUrl = await start(
      await buildGateway({ upstreamUrl: upstream.url, verifier: fakeVerifier(), upstreamPipelining: 8 }),
    );
    forwardAuthUrl = await start(await buildGateway({ mode: "forward-auth", verifier: fakeVerifier() }));
    failingUrl = await start(await buildGateway({ mode: "forward-auth", verifier: fakeVerifier({ failing: true }) }));
  });
  afterAll(async () => {
    for (const gateway of gateways) await gateway.close();
    await new Promise((resolve) => upstream?.server.close(resolve));
  });

  it("forwards method, target, body and headers; drops hop-by-hop and client identity headers both ways", async () => {
    const res = await send(`${proxyUrl}/sandbox/1?x=y`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${GOOD}`,
        "content-type": "application/json",
        connection: "keep-alive, x-drop-me",
        "x-drop-me": "1",
        "X-Keyledger-User-Id": "someone-else",
        "x-keyledger-extra": "spoof",
        "x-kept": "yes",
      },
      body: '{"hello":"world"}',
    });
    expect(res.status).toBe(201);
    expect(res.headers["x-upstream-hop"]).toBeUndefined();
    const echo = JSON.parse(res.body.toString()) as Echo;
    expect(echo).toMatchObject({ method: "POST", url: "/sandbox/1?x=y", body: '{"hello":"world"}' });
    expect(echo.headers).toMatchObject({
      "x-keyledger-user-id": "user-1",
      "x-keyledger-organization-id": "org-1",
      "x-keyledger-permissions": "write:sandboxes,read:volumes",
      "x-kept": "yes",
      host: new URL(upstream.url).host,
    });
    expect(echo.headers["x-keyledger-extra"]).toBeUndefined();
    expect(echo.headers["x-drop-me"]).toBeUndefined();
  });

  it("answers 401 with the error body without a valid key, and never asks upstream", async () => {
    const cases: Record<string, string>[] = [{}, { authorization: "Bearer nope" }, { authorization: "Basic abc" }];
    for (const headers of cases) {
      const res = await send(`${proxyUrl}/anything?q=1`, { headers });
      expect(res.status).toBe(401);
      expect(JSON.parse(res.body.toString())).toMatchObject({
        path: "/anything?q=1",
        statusCode: 401,
        error: "Unauthorized",
        message: "Invalid credentials",
      });
    }
  });

  it("streams a large upstream answer intact", async () => {
    const size = 8 * 1024 * 1024 + 7;
    const res = await send(`${proxyUrl}/big/${size}`, { headers: { authorization: `Bearer ${GOOD}` } });
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(size);
    expect(res.body.every((byte) => byte === 0x61)).toBe(true);
  });

  it("with upstream pipelining, every concurrent request gets its own answer", async () => {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        send(`${pipelinedUrl}/${i % 10 === 0 ? "slow" : `n/${i}`}`, { headers: { authorization: `Bearer ${GOOD}` } }),
      ),
    );
    for (const [i, res] of results.entries()) {
      expect(res.status).toBe(201);
      expect((JSON.parse(res.body.toString()) as Echo).url).toBe(i % 10 === 0 ? "/slow" : `/n/${i}`);
    }
  });

  it("with upstream pipelining, concurrent requests share upstream connections", async () => {
    const counted = await startUpstream();
    let connections = 0;
    counted.server.on("connection", () => {
      connections += 1;
    });
    const gateway = await buildGateway({ upstreamUrl: counted.url, verifier: fakeVerifier(), upstreamPipelining: 8 });
    const url = await gateway.listen({ port: 0, host: "127.0.0.1" });
    try {
      const results = await Promise.all(
        Array.from({ length: 64 }, (_, i) =>
          send(`${url}/slow/${i}`, { headers: { authorization: `Bearer ${GOOD}` } }),
        ),
      );
      expect(results.map((r) => (JSON.parse(r.body.toString()) as Echo).url)).toEqual(
        Array.from({ length: 64 }, (_, i) => `/slow/${i}`),
      );
      // Each answer takes 50 ms: without pipelining each of the 64 would need a connection of its own.
      expect(connections).toBeLessThanOrEqual(32);
    } finally {
      await gateway.close();
      await new Promise((resolve) => counted.server.close(resolve));
    }
  });

  it("forward-auth: 200 with identity headers and no body, or 401 naming the original URI", async () => {
    const allowed = await send(`${forwardAuthUrl}/verify`, {
      headers: { authorization: `Bearer ${GOOD}`, "x-forwarded-uri": "/sandbox/1" },
    });
    expect(allowed.status).toBe(200);
    expect(allowed.body.length).toBe(0);
    expect(allowed.headers).toMatchObject({
      "x-keyledger-user-id": "user-1",
      "x-keyledger-organization-id": "org-1",
      "x-keyledger-permissions": "write:sandboxes,read:volumes",
    });
    const denied = await send(`${forwardAuthUrl}/verify`, {
      headers: { authorization: "Bearer nope", "x-forwarded-uri": "/sandbox/1" },
    });
    expect(denied.status).toBe(401);
    expect(denied.headers["x-keyledger-user-id"]).toBeUndefined();
    expect(JSON.parse(denied.body.toString())).toMatchObject({ path: "/sandbox/1", statusCode: 401 });
    const unavailable = await send(`${failingUrl}/auth`, { headers: { authorization: `Bearer ${GOOD}` } });
    expect(unavailable.status).toBe(503);
    expect(JSON.parse(unavailable.body.toString())).toMatchObject({ path: "/auth", statusCode: 503 });
  });

  it("serves health on every mode", async () => {
    for (const url of [proxyUrl, forwardAuthUrl]) {
      expect((await send(`${url}/health/live`)).status).toBe(200);
      expect(JSON.parse((await send(`${url}/health/ready?probe=1`)).body.toString())).toEqual({
        status: "ok",
        checks: { nats: "subscribed" },
      });
    }
  });
});

describe("gateway configuration", () => {
  const base = { API_URL: "http://api:3000" };

  it("needs UPSTREAM_URL in proxy mode only", () => {
    expect(() => parseGatewayConfig(base)).toThrow(GatewayConfigError);
    expect(parseGatewayConfig({ ...base, UPSTREAM_URL: "http://up:80" })).toMatchObject({
      mode: "proxy",
      upstreamUrl: "http://up:80",
      upstreamConnections: 128,
      upstreamPipelining: 1,
    });
    expect(parseGatewayConfig({ ...base, GATEWAY_MODE: "forward-auth" })).toMatchObject({
      mode: "forward-auth",
      upstreamUrl: undefined,
    });
  });

  it("rejects unknown modes and out-of-range pipelining", () => {
    expect(() => parseGatewayConfig({ ...base, GATEWAY_MODE: "sidecar" })).toThrow(/GATEWAY_MODE/);
    expect(() => parseGatewayConfig({ ...base, UPSTREAM_URL: "http://up:80", UPSTREAM_PIPELINING: "0" })).toThrow(
      /UPSTREAM_PIPELINING/,
    );
  });
});
