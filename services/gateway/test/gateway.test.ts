import { createServer, type IncomingMessage, request, type Server, STATUS_CODES } from "node:http";
import { type AddressInfo, connect, createServer as createTcpServer, type Socket } from "node:net";
import { Writable } from "node:stream";
import type { VerifiedKey, Verifier, VerifyResult } from "@keyledger/verifier";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildGateway,
  encodeIdentityHeaderValue,
  GATEWAY_LOG_REDACTIONS,
  type Gateway,
  GatewayConfigError,
  parseGatewayConfig,
} from "../src/index";

const GOOD = "good-key";
const KEY: VerifiedKey = {
  name: "k",
  userId: "user-1",
  organizationId: "org-1",
  permissions: ["write:sandboxes", "read:volumes"],
  expiresAt: null,
};

/**
 * A verifier that knows one key (`key`, KEY by default); `failing` makes lookups reject (the API unreachable);
 * `cached`: answers from `peek` (a cache hit, decided in the request handler) instead of `verify`.
 */
function fakeVerifier(options: { failing?: boolean; key?: VerifiedKey; cached?: boolean } = {}): Verifier {
  const answer = (bearer: string): VerifyResult =>
    bearer === GOOD ? { valid: true, key: options.key ?? KEY } : { valid: false, code: "NOT_FOUND" };
  return {
    verify: (bearer: string): Promise<VerifyResult> => {
      if (options.failing) return Promise.reject(new Error("API unreachable"));
      return Promise.resolve(answer(bearer));
    },
    // Without `cached`, no cache: every request goes through verify().
    peek: (bearer: string) => (options.cached ? answer(bearer) : undefined),
    subscribed: true,
    cacheOn: options.cached ?? false,
    invalidation: "nats",
    whenSubscribed: () => Promise.resolve(true),
    applyEvent: () => {},
    applyRelayHeartbeat: () => {},
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
    // A request the gateway never answers fails the test here rather than at the test's timeout.
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${url} in 10 s`)));
    req.end(options.body);
  });
}

/** Sends `raw` on a TCP connection of its own; resolves with all the gateway wrote before closing it. */
function rawExchange(url: string, raw: string): Promise<{ head: string; body: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("close", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const end = text.indexOf("\r\n\r\n");
      resolve(end === -1 ? { head: text, body: "" } : { head: text.slice(0, end), body: text.slice(end + 4) });
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error("the gateway did not close the connection")));
    socket.write(raw);
  });
}

/** The content of a chunked body as read off the wire (the echo upstream answers chunked). */
function dechunk(wire: string): string {
  let content = "";
  let at = 0;
  for (;;) {
    const lineEnd = wire.indexOf("\r\n", at);
    const size = Number.parseInt(wire.slice(at, lineEnd), 16);
    if (!(size > 0)) return content;
    content += wire.slice(lineEnd + 2, lineEnd + 2 + size);
    at = lineEnd + 2 + size + 2;
  }
}

/** A pino logger (as main.ts builds it) writing to memory; `text()` is everything logged so far. */
function capturedLog() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString());
      callback();
    },
  });
  const log = pino({ level: "debug", redact: { paths: GATEWAY_LOG_REDACTIONS, censor: "[redacted]" } }, stream);
  return { log, text: () => lines.join("") };
}

/** A port where nothing listens. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
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
      // A cache in front must not answer for the key once it is revoked.
      "cache-control": "no-store",
    });
    const denied = await send(`${forwardAuthUrl}/verify`, {
      headers: { authorization: "Bearer nope", "x-forwarded-uri": "/sandbox/1" },
    });
    expect(denied.status).toBe(401);
    expect(denied.headers["cache-control"]).toBe("no-store");
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

describe("gateway: hostile identities, headers, URLs and requests", () => {
  let upstream: { server: Server; url: string };
  const gateways: Gateway[] = [];
  const start = async (options: Parameters<typeof buildGateway>[0]) => {
    const gateway = await buildGateway(options);
    gateways.push(gateway);
    return gateway.listen({ port: 0, host: "127.0.0.1" });
  };

  beforeAll(async () => {
    upstream = await startUpstream();
  });
  afterAll(async () => {
    for (const gateway of gateways) await gateway.close();
    await new Promise((resolve) => upstream?.server.close(resolve));
  });

  it("encodes identity header values: visible ASCII but % as is, the rest percent-encoded UTF-8", () => {
    for (const common of ["550e8400-e29b-41d4-a716-446655440000", "auth0|abc", "jane.doe+x@example.com", "a,b:c"]) {
      expect(encodeIdentityHeaderValue(common)).toBe(common);
    }
    expect(encodeIdentityHeaderValue("u😀")).toBe("u%F0%9F%98%80");
    expect(encodeIdentityHeaderValue("a b%c")).toBe("a%20b%25c");
    expect(encodeIdentityHeaderValue("\u0001\t\r\n\u007f\u00e9\u4e16")).toBe("%01%09%0D%0A%7F%C3%A9%E4%B8%96");
    for (const id of ["u😀", "a b%c", "%41", "\u0000x\u00ff", "ünïcødé 世界 %25", "auth0|abc"]) {
      expect(decodeURIComponent(encodeIdentityHeaderValue(id))).toBe(id);
    }
  });

  it("carries ids that are no valid header value, percent-encoded, in both modes", async () => {
    const key: VerifiedKey = { ...KEY, userId: "u😀 ü%\u0001", organizationId: "org 世界\u007f" };
    const encoded = { user: "u%F0%9F%98%80%20%C3%BC%25%01", org: "org%20%E4%B8%96%E7%95%8C%7F" };
    for (const cached of [false, true]) {
      const forwardAuth = await start({ mode: "forward-auth", verifier: fakeVerifier({ key, cached }) });
      const allowed = await send(`${forwardAuth}/verify`, { headers: { authorization: `Bearer ${GOOD}` } });
      expect(allowed.status).toBe(200);
      expect(allowed.headers).toMatchObject({
        "x-keyledger-user-id": encoded.user,
        "x-keyledger-organization-id": encoded.org,
        "x-keyledger-permissions": "write:sandboxes,read:volumes",
      });
      expect(decodeURIComponent(allowed.headers["x-keyledger-user-id"] as string)).toBe(key.userId);

      const proxy = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier({ key, cached }) });
      const res = await send(`${proxy}/sandbox/1`, { headers: { authorization: `Bearer ${GOOD}` } });
      expect(res.status).toBe(201);
      const echo = JSON.parse(res.body.toString()) as Echo;
      expect(echo.headers["x-keyledger-user-id"]).toBe(encoded.user);
      expect(decodeURIComponent(echo.headers["x-keyledger-organization-id"] as string)).toBe(key.organizationId);
    }
  });

  it("answers 503 and logs a warning when deciding a request throws, and goes on serving", async () => {
    // A key the answer cannot be built from (no permissions list): deciding throws.
    const broken = { ...KEY, permissions: null } as unknown as VerifiedKey;
    for (const mode of ["forward-auth", "proxy"] as const) {
      for (const cached of [false, true]) {
        const { log, text } = capturedLog();
        const url = await start({
          mode,
          upstreamUrl: upstream.url,
          verifier: fakeVerifier({ key: broken, cached }),
          log,
        });
        const res = await send(`${url}/sandbox/1`, { headers: { authorization: `Bearer ${GOOD}` } });
        expect(res.status).toBe(503);
        expect(JSON.parse(res.body.toString())).toMatchObject({
          path: "/sandbox/1",
          statusCode: 503,
          error: "Service Unavailable",
          message: "Service temporarily unavailable",
        });
        expect(text()).toContain("request handling failed");
        expect((await send(`${url}/other`, { headers: { authorization: "Bearer nope" } })).status).toBe(401);
      }
    }
  });

  it("keeps the client's key at the gateway and appends the client's address to X-Forwarded-For", async () => {
    const proxy = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier() });
    const echoed = async (headers: Record<string, string | string[]>) => {
      const res = await send(`${proxy}/x`, { headers: { authorization: `Bearer ${GOOD}`, ...headers } as never });
      expect(res.status).toBe(201);
      return (JSON.parse(res.body.toString()) as Echo).headers;
    };
    const plain = await echoed({});
    expect(plain.authorization).toBeUndefined();
    expect(plain["x-forwarded-for"]).toBe("127.0.0.1");
    // Naming Authorization in Connection changes nothing; the client's list is kept, folded, and the address added.
    const listed = await echoed({ connection: "authorization", "x-forwarded-for": ["10.0.0.1, 10.0.0.2", "10.0.0.3"] });
    expect(listed.authorization).toBeUndefined();
    expect(listed["x-forwarded-for"]).toBe("10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1");
    // A client naming X-Forwarded-For in Connection drops its own list, not the gateway's entry.
    const dropped = await echoed({ connection: "x-forwarded-for", "x-forwarded-for": "6.6.6.6" });
    expect(dropped["x-forwarded-for"]).toBe("127.0.0.1");
  });

  it("forwards the client's key too when configured to (UPSTREAM_AUTHORIZATION=forward), whatever Connection says", async () => {
    const proxy = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier(), forwardAuthorization: true });
    for (const extra of [{}, { connection: "authorization" }]) {
      const res = await send(`${proxy}/x`, { headers: { authorization: `Bearer ${GOOD}`, ...extra } as never });
      expect(res.status).toBe(201);
      const headers = (JSON.parse(res.body.toString()) as Echo).headers;
      expect(headers.authorization).toBe(`Bearer ${GOOD}`);
      expect(headers["x-keyledger-user-id"]).toBeDefined();
    }
    // A refused key goes nowhere, forwarding or not.
    const refused = await send(`${proxy}/x`, { headers: { authorization: "Bearer nope" } as never });
    expect(refused.status).toBe(401);
  });

  it("answers Expect: 100-continue itself: 100 Continue only for a good key, then the body goes upstream", async () => {
    const url = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier() });
    const { hostname, port } = new URL(url);
    const upload = (authorization: string) =>
      new Promise<{ text: string; continued: boolean }>((resolve, reject) => {
        const socket = connect(Number(port), hostname);
        const chunks: Buffer[] = [];
        let continued = false;
        socket.on("data", (chunk: Buffer) => {
          chunks.push(chunk);
          // The body follows 100 Continue, as curl sends it.
          if (!continued && Buffer.concat(chunks).toString().startsWith("HTTP/1.1 100 Continue\r\n\r\n")) {
            continued = true;
            socket.write("hello");
          }
        });
        socket.on("error", reject);
        socket.on("close", () => resolve({ text: Buffer.concat(chunks).toString(), continued }));
        socket.setTimeout(10_000, () => socket.destroy(new Error("no answer in 10 s")));
        socket.write(
          `POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: ${authorization}\r\nExpect: 100-continue\r\n` +
            "Content-Length: 5\r\n\r\n",
        );
      });
    const good = await upload(`Bearer ${GOOD}`);
    expect(good.continued).toBe(true);
    const answer = good.text.slice("HTTP/1.1 100 Continue\r\n\r\n".length);
    expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 201 Created");
    const echo = JSON.parse(dechunk(answer.slice(answer.indexOf("\r\n\r\n") + 4))) as Echo;
    expect(echo).toMatchObject({ method: "POST", url: "/upload", body: "hello" });
    expect(echo.headers.expect).toBeUndefined();
    // A bad key is refused before the body is invited, and the connection closed (its body was never read).
    const bad = await upload("Bearer nope");
    expect(bad.continued).toBe(false);
    expect(bad.text.split("\r\n")[0]).toBe("HTTP/1.1 401 Unauthorized");
    expect(bad.text.toLowerCase()).toContain("connection: close");
  });

  it("answers 504 when upstream does not answer in time, cuts an answer that stalls, and goes on serving", async () => {
    // `/hang`: never answered; `/stall`: headers and part of the body, then nothing; anything else: 200 "ok".
    const sockets = new Set<Socket>();
    const slow = createTcpServer((socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("data", (data: Buffer) => {
        const target = data.toString("latin1").split(" ")[1] ?? "";
        if (target.startsWith("/hang")) return;
        if (target.startsWith("/stall")) return void socket.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      });
    });
    await new Promise<void>((resolve) => slow.listen(0, "127.0.0.1", resolve));
    const { log, text } = capturedLog();
    const url = await start({
      upstreamUrl: `http://127.0.0.1:${(slow.address() as AddressInfo).port}`,
      verifier: fakeVerifier(),
      upstreamTimeoutMs: 300,
      log,
    });
    try {
      const started = Date.now();
      const hung = await send(`${url}/hang?x=1`, { headers: { authorization: `Bearer ${GOOD}` } });
      expect(hung.status).toBe(504);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(JSON.parse(hung.body.toString())).toMatchObject({
        path: "/hang?x=1",
        statusCode: 504,
        error: "Gateway Timeout",
        message: "Upstream timed out",
      });
      await expect(send(`${url}/stall`, { headers: { authorization: `Bearer ${GOOD}` } })).rejects.toThrow();
      const ok = await send(`${url}/ok`, { headers: { authorization: `Bearer ${GOOD}` } });
      expect(ok.status).toBe(200);
      expect(ok.body.toString()).toBe("ok");
      expect(text()).toContain("upstream request failed");
      expect(text()).not.toContain(GOOD);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => slow.close(resolve));
    }
  });

  it("refuses CONNECT and WebSocket upgrades with the error body (501); forward-auth answers upgrades as usual", async () => {
    const proxy = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier() });
    const forwardAuth = await start({ mode: "forward-auth", verifier: fakeVerifier() });
    for (const url of [proxy, forwardAuth]) {
      const { head, body } = await rawExchange(
        url,
        `CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nAuthorization: Bearer ${GOOD}\r\n\r\n`,
      );
      expect(head.split("\r\n")[0]).toBe("HTTP/1.1 501 Not Implemented");
      expect(head.toLowerCase()).toContain("connection: close");
      expect(JSON.parse(body)).toMatchObject({
        path: "example.com:443",
        statusCode: 501,
        error: "Not Implemented",
        message: "CONNECT is not supported",
      });
    }
    const handshake = (authorization: string) => ({
      authorization,
      connection: "Upgrade",
      upgrade: "websocket",
      "sec-websocket-version": "13",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    });
    const refused = await send(`${proxy}/socket`, { headers: handshake(`Bearer ${GOOD}`) });
    expect(refused.status).toBe(501);
    expect(JSON.parse(refused.body.toString())).toMatchObject({
      path: "/socket",
      statusCode: 501,
      message: "WebSocket is not supported by the gateway",
    });
    expect((await send(`${proxy}/socket`, { headers: handshake("Bearer nope") })).status).toBe(401);
    // Traefik's ForwardAuth sends the handshake's headers along: the answer is the usual one.
    const allowed = await send(`${forwardAuth}/verify`, { headers: handshake(`Bearer ${GOOD}`) });
    expect(allowed.status).toBe(200);
    expect(allowed.headers["x-keyledger-user-id"]).toBe("user-1");
    // An Upgrade the gateway may ignore (RFC 9110 7.8), as h2c: sent on as a plain request.
    const h2c = await send(`${proxy}/x`, {
      headers: { authorization: `Bearer ${GOOD}`, connection: "Upgrade, HTTP2-Settings", upgrade: "h2c" },
    });
    expect(h2c.status).toBe(201);
    expect((JSON.parse(h2c.body.toString()) as Echo).headers.upgrade).toBeUndefined();
  });

  it("drops client headers spelling X-Keyledger-* with underscores", async () => {
    const proxy = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier() });
    const res = await send(`${proxy}/x`, {
      headers: {
        authorization: `Bearer ${GOOD}`,
        "X-Keyledger_User_Id": "admin",
        X_Keyledger_Permissions: "x",
        "x_keyledger-organization_id": "other-org",
        X_KEYLEDGER_EXTRA: "spoof",
        x_other: "kept",
      },
    });
    expect(res.status).toBe(201);
    const { headers } = JSON.parse(res.body.toString()) as Echo;
    const identity = Object.entries(headers).filter(([name]) => name.replaceAll("_", "-").startsWith("x-keyledger-"));
    expect(Object.fromEntries(identity)).toEqual({
      "x-keyledger-user-id": "user-1",
      "x-keyledger-organization-id": "org-1",
      "x-keyledger-permissions": "write:sandboxes,read:volumes",
    });
    expect(headers.x_other).toBe("kept");
  });

  it("never writes a key or a JWT from the URL to its logs or error bodies", async () => {
    const apiKey = `dtn_${"0a1b2c3d".repeat(8)}`;
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
    const secrets = [apiKey, apiKey.slice(4), jwt, jwt.split(".")[1] as string];
    const paths = [
      `/x?api_key=${apiKey}`,
      `/x?access_token=${jwt}`,
      `/keys/dtn%5F${apiKey.slice(4)}`,
      `/keys/dtn%5f${apiKey.slice(4)}?a=1`,
    ];
    const { log, text } = capturedLog();
    const down = `http://127.0.0.1:${await closedPort()}`;
    const proxy = await start({ upstreamUrl: down, verifier: fakeVerifier(), log });
    const forwardAuth = await start({ mode: "forward-auth", verifier: fakeVerifier(), log });
    const bodies: string[] = [];
    for (const path of paths) {
      const failed = await send(`${proxy}${path}`, { headers: { authorization: `Bearer ${GOOD}` } });
      expect(failed.status).toBe(502);
      const denied = await send(`${proxy}${path}`);
      expect(denied.status).toBe(401);
      const deniedAtEdge = await send(`${forwardAuth}/verify`, { headers: { "x-forwarded-uri": path } });
      expect(deniedAtEdge.status).toBe(401);
      for (const res of [failed, denied, deniedAtEdge]) {
        const body = res.body.toString();
        expect(JSON.parse(body).path).toContain("[redacted]");
        bodies.push(body);
      }
    }
    expect(text().match(/upstream request failed/g)).toHaveLength(paths.length);
    expect(text()).toContain("[redacted]");
    for (const secret of secrets) {
      expect(text()).not.toContain(secret);
      for (const body of bodies) expect(body).not.toContain(secret);
    }
  });

  it("answers requests node's parser refuses with the JSON error body and Connection: close", async () => {
    const url = await start({ upstreamUrl: upstream.url, verifier: fakeVerifier() });
    const expectError = async (raw: string, status: number, message: string) => {
      const { head, body } = await rawExchange(url, raw);
      expect(head.split("\r\n")[0]).toBe(`HTTP/1.1 ${status} ${STATUS_CODES[status]}`);
      expect(head.toLowerCase()).toContain("connection: close");
      expect(head.toLowerCase()).toContain("content-type: application/json");
      expect(head.toLowerCase()).toContain("cache-control: no-store");
      expect(JSON.parse(body)).toMatchObject({ statusCode: status, error: STATUS_CODES[status], message });
      expect(typeof JSON.parse(body).path).toBe("string");
      expect(typeof JSON.parse(body).timestamp).toBe("string");
    };
    // HTTP/1.1 without Host (RFC 9112 3.2), on any path.
    await expectError(`GET /x HTTP/1.1\r\nAuthorization: Bearer ${GOOD}\r\n\r\n`, 400, "Missing Host header");
    await expectError("GET /health/live HTTP/1.1\r\n\r\n", 400, "Missing Host header");
    // Refused by the parser: an unknown method, a bad header line, conflicting framing, headers too large.
    await expectError("FOO /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "Malformed HTTP request");
    await expectError("GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400, "Malformed HTTP request");
    await expectError(
      "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      400,
      "Malformed HTTP request",
    );
    await expectError(
      `GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`,
      431,
      "Request Header Fields Too Large",
    );
    // HTTP/1.0 needs no Host.
    const old = await rawExchange(url, "GET /health/live HTTP/1.0\r\n\r\n");
    expect(old.head.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(JSON.parse(old.body)).toEqual({ status: "ok" });
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
      upstreamTimeoutMs: 60_000,
    });
    expect(parseGatewayConfig({ ...base, UPSTREAM_URL: "http://up:80", UPSTREAM_TIMEOUT_MS: "5000" })).toMatchObject({
      upstreamTimeoutMs: 5_000,
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
