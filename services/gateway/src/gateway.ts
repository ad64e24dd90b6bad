import { createServer, type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { redactSecrets } from "@keyledger/domain";
import type { VerifiedKey, Verifier, VerifyResult } from "@keyledger/verifier";
import { buildConnector, type Dispatcher, Pool } from "undici";

/** The subset of a pino logger the gateway uses; never given secrets. */
export type GatewayLogger = {
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
};

/**
 * - `proxy`: a reverse proxy; requests with a valid key go upstream with identity headers.
 * - `forward-auth`: an authorization service for a proxy in front (Envoy `ext_authz`, nginx `auth_request`, Traefik
 *   `ForwardAuth`): every request is answered here, 200 with the identity headers or 401/503 with the error body.
 */
export type GatewayMode = "proxy" | "forward-auth";

export type GatewayOptions = {
  mode?: GatewayMode;
  /** Where authenticated requests go (required in `proxy` mode). */
  upstreamUrl?: string;
  verifier: Verifier;
  log?: GatewayLogger;
  /** Upstream connections kept open (default 128). */
  upstreamConnections?: number;
  /** Requests sent on one upstream connection before the first answer (HTTP/1.1 pipelining, default 1: none). */
  upstreamPipelining?: number;
  /**
   * Longest wait for upstream's answer headers (from the last request bytes sent), and between two reads of its body
   * (default 60 s, as nginx's `proxy_read_timeout`): a 504 before any of the answer, a cut connection after.
   */
  upstreamTimeoutMs?: number;
  /**
   * Whether the client's `Authorization` (its API key) goes upstream too (default false: the key stays at the
   * gateway, upstream learns whose key it was from the identity headers). For an upstream that must itself present
   * the caller's key onwards.
   */
  forwardAuthorization?: boolean;
};

export interface Gateway {
  readonly server: Server;
  readonly mode: GatewayMode;
  /** Listens; resolves with the base URL. */
  listen(options: { port: number; host?: string }): Promise<string>;
  /** Stops accepting, ends idle connections, waits for requests under way, closes upstream connections. */
  close(): Promise<void>;
}

/** Headers the gateway sets for upstream; any the client sent under this prefix are removed first. */
export const IDENTITY_HEADER_PREFIX = "x-keyledger-";
export const USER_ID_HEADER = "x-keyledger-user-id";
export const ORGANIZATION_ID_HEADER = "x-keyledger-organization-id";
export const PERMISSIONS_HEADER = "x-keyledger-permissions";

/** Text that is an identity header value as it is: visible ASCII (0x21-0x7E) except `%`. */
const HEADER_VALUE_AS_IS = /^[\x21-\x24\x26-\x7e]*$/;

/**
 * `value` as an identity header value: visible ASCII (0x21-0x7E) stays as it is, except `%`; `%`, space, control
 * characters and everything beyond ASCII are percent-encoded (UTF-8 bytes, uppercase hex). Any id is then a valid
 * header value, `decodeURIComponent` gives it back exactly, and the usual ids (UUIDs, `auth0|abc`, emails) are
 * unchanged. A lone UTF-16 surrogate (no UTF-8 form) is encoded as U+FFFD.
 */
export function encodeIdentityHeaderValue(value: string): string {
  if (HEADER_VALUE_AS_IS.test(value)) return value;
  let encoded = "";
  for (const char of value) {
    const code = char.charCodeAt(0);
    if (code >= 0x21 && code <= 0x7e && code !== 0x25) {
      encoded += char;
      continue;
    }
    for (const byte of Buffer.from(char, "utf8"))
      encoded += `%${byte < 16 ? "0" : ""}${byte.toString(16).toUpperCase()}`;
  }
  return encoded;
}

/** The verified key's identity as raw header pairs (name, value, ...), upstream or in a forward-auth answer. */
function pushIdentityHeaders(headers: string[], key: VerifiedKey): void {
  headers.push(
    USER_ID_HEADER,
    encodeIdentityHeaderValue(key.userId),
    ORGANIZATION_ID_HEADER,
    encodeIdentityHeaderValue(key.organizationId),
    PERMISSIONS_HEADER,
    encodeIdentityHeaderValue(key.permissions.join(",")),
  );
}

/**
 * A client header the gateway never forwards: `X-Keyledger-*`, also spelled with `_` for `-` (`X_Keyledger_User_Id`),
 * which CGI, WSGI, PHP and Rack upstreams read as the same variable as the gateway's own header.
 */
function isIdentityHeader(lower: string): boolean {
  if (lower.length < IDENTITY_HEADER_PREFIX.length || lower.charCodeAt(0) !== 120 /* "x" */) return false;
  if (lower.startsWith(IDENTITY_HEADER_PREFIX)) return true;
  return lower.slice(0, IDENTITY_HEADER_PREFIX.length).replaceAll("_", "-") === IDENTITY_HEADER_PREFIX;
}

/** Paths that never appear in logs with their secrets. */
export const GATEWAY_LOG_REDACTIONS = ["req.headers.authorization", "headers.authorization", "authorization"];

const BEARER = /^Bearer\s+(\S+)\s*$/i;

const WEBSOCKET = /websocket/i;

const silentLog: GatewayLogger = { warn() {}, debug() {} };

/**
 * Hop-by-hop headers (RFC 9110 7.6.1), never forwarded in either direction; `host` is set for upstream. `expect` too:
 * the gateway answers `Expect: 100-continue` itself, as nginx does (undici refuses to send it).
 */
const HOP_BY_HOP = new Set([
  "connection",
  "expect",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Daytona's error body: `{ path, timestamp, statusCode, error, message }`; never echoes a key or a JWT in `path`. */
function errorBody(path: string, statusCode: number, message: string): string {
  return JSON.stringify({
    path: redactSecrets(path),
    timestamp: new Date().toISOString(),
    statusCode,
    error: STATUS_CODES[statusCode] ?? "Error",
    message,
  });
}

/** Answers with the error body; `close`: and closes the connection. */
function sendError(res: ServerResponse, path: string, statusCode: number, message: string, close = false): void {
  sendBody(res, statusCode, errorBody(path, statusCode, message), close);
}

function sendJson(res: ServerResponse, statusCode: number, value: unknown): void {
  sendBody(res, statusCode, JSON.stringify(value), false);
}

function sendBody(res: ServerResponse, statusCode: number, body: string, close: boolean): void {
  const headers = [
    "content-type",
    "application/json; charset=utf-8",
    // Answers about keys and health: never from a cache (a 501 is cacheable by default, RFC 9110 15.1).
    "cache-control",
    "no-store",
    "content-length",
    String(Buffer.byteLength(body)),
  ];
  if (close) headers.push("connection", "close");
  res.writeHead(statusCode, headers);
  res.end(body);
}

/**
 * Requests node's HTTP parser refuses (an unknown method, bad framing, headers too large, a timeout): the error body
 * and `Connection: close` when nothing of an answer is on the connection yet, else the connection is cut.
 */
function onClientError(error: Error & { code?: string }, socket: Socket): void {
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (error.code !== "ECONNRESET" && socket.writable && !inFlight?.headersSent) {
    const status =
      error.code === "HPE_HEADER_OVERFLOW"
        ? 431
        : error.code === "HPE_CHUNK_EXTENSIONS_OVERFLOW"
          ? 413
          : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
            ? 408
            : 400;
    const message = status === 400 ? "Malformed HTTP request" : (STATUS_CODES[status] ?? "Error");
    writeErrorAndClose(socket, "", status, message);
  }
  socket.destroy();
}

/** The error body and `Connection: close` straight on a socket node's HTTP server has handed over. */
function writeErrorAndClose(socket: Socket, path: string, status: number, message: string): void {
  const body = errorBody(path, status, message);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Cache-Control: no-store\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** CONNECT (a tunnel): neither mode opens one. Node would close the connection without an answer. */
function refuseConnect(req: IncomingMessage, socket: Socket): void {
  socket.on("error", () => {});
  writeErrorAndClose(socket, req.url ?? "", 501, "CONNECT is not supported");
  // Whatever the client sends next is not read; the answer is written, then the connection closed.
  socket.destroySoon();
}

/** Whether the client's raw headers have a Host header. */
function hasHost(rawHeaders: string[]): boolean {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length === 4 && name.toLowerCase() === "host") return true;
  }
  return false;
}

/** Names listed in a Connection header (besides keep-alive/close): hop-by-hop for this message only. */
function connectionTokens(value: string): Set<string> | undefined {
  // The usual values, without splitting: nothing else to remove.
  if (value.length <= 10) {
    const lower = value.toLowerCase();
    if (lower === "keep-alive" || lower === "close") return undefined;
  }
  let tokens: Set<string> | undefined;
  for (const raw of value.split(",")) {
    const token = raw.trim().toLowerCase();
    if (token === "" || token === "close" || token === "keep-alive") continue;
    tokens ??= new Set();
    tokens.add(token);
  }
  return tokens;
}

/** What one pass over the client's raw headers finds. */
type Inbound = {
  bearer: string | undefined;
  /** Whether the client sent a Host header. */
  host: boolean;
  /**
   * The headers to send upstream (flat name/value list), without the hop-by-hop and identity ones, `Authorization`
   * (the key stays at the gateway) and `X-Forwarded-For` (sent folded into `forwardedFor`).
   */
  forward: string[];
  hasBody: boolean;
  /** The client's `X-Forwarded-For` values, comma-joined; the client's own address is appended upstream. */
  forwardedFor: string | undefined;
  /** The client sent `Expect` (node passes on only `100-continue`): it waits for 100 Continue to send its body. */
  expectsContinue: boolean;
  /** The client's `Upgrade` header (never forwarded). */
  upgrade: string | undefined;
};

function readInbound(rawHeaders: string[], forwardAuthorization: boolean): Inbound {
  const forward: string[] = [];
  let authorization: string | undefined;
  let hasBody = false;
  let connection: string | undefined;
  let forwardedFor: string | undefined;
  let expectsContinue = false;
  let upgrade: string | undefined;
  let host = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const value = rawHeaders[i + 1] as string;
    const lower = name.toLowerCase();
    if (lower === "authorization") {
      // Two Authorization headers: ambiguous, treated as none. Forwarded only when configured (the identity headers
      // say whose key it was); a refused request goes nowhere anyway.
      authorization = authorization === undefined ? value : "";
      if (!forwardAuthorization) continue;
    } else if (lower === "x-forwarded-for") {
      forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      continue;
    } else if (lower === "content-length") {
      if (value !== "0") hasBody = true;
    } else if (HOP_BY_HOP.has(lower)) {
      if (lower === "transfer-encoding") hasBody = true;
      else if (lower === "connection") connection = value;
      else if (lower === "expect") expectsContinue = true;
      else if (lower === "upgrade") upgrade = value;
      continue;
    } else if (lower === "host") {
      host = true;
      continue;
    } else if (isIdentityHeader(lower)) {
      continue;
    }
    forward.push(name, value);
  }
  if (connection !== undefined) {
    const tokens = connectionTokens(connection);
    if (tokens !== undefined) {
      for (let i = forward.length - 2; i >= 0; i -= 2) {
        const lower = (forward[i] as string).toLowerCase();
        // A forwarded key stays, whatever the client names in Connection.
        if (tokens.has(lower) && lower !== "authorization") forward.splice(i, 2);
      }
      if (tokens.has("x-forwarded-for")) forwardedFor = undefined;
    }
  }
  const bearer = authorization === undefined ? undefined : BEARER.exec(authorization)?.[1];
  return { bearer, host, forward, hasBody, forwardedFor, expectsContinue, upgrade };
}

/**
 * Upstream sockets whose writes are held (corked) until the end of this turn of the event loop: every request
 * dispatched on one connection while handling a batch of readable client sockets goes out in one `writev`.
 */
const corked = new Set<Socket>();
let uncorkScheduled = false;

function uncorkAll(): void {
  uncorkScheduled = false;
  for (const socket of corked) if (!socket.destroyed) socket.uncork();
  corked.clear();
}

function coalesceWrites(socket: Socket): void {
  const write = socket.write;
  socket.write = function (this: Socket, ...args: unknown[]) {
    if (!corked.has(socket)) {
      corked.add(socket);
      socket.cork();
      if (!uncorkScheduled) {
        uncorkScheduled = true;
        setImmediate(uncorkAll);
      }
    }
    return (write as (...a: unknown[]) => boolean).apply(this, args);
  } as Socket["write"];
}

/** Streams one upstream answer to the client; undici's own handler interface, so nothing is buffered or copied. */
class ProxyHandler implements Dispatcher.DispatchHandler {
  private abort: ((error?: Error) => void) | undefined;
  private resume: (() => void) | undefined;
  private done = false;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly path: string,
    private readonly log: GatewayLogger,
  ) {
    // `close` is emitted once per response; `on` spares the wrapper `once` allocates.
    res.on("close", this.onClientClose);
  }

  private readonly onClientClose = () => {
    // The client went away before the upstream answer ended: stop the upstream request too.
    if (!this.done) this.abort?.(new Error("client closed the connection"));
  };

  private readonly onDrain = () => this.resume?.();

  onConnect(abort: (error?: Error) => void): void {
    this.abort = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true; // 1xx (e.g. 100 Continue): not forwarded
    const headers: string[] = [];
    let connection: Set<string> | undefined;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = (rawHeaders[i] as Buffer).toString("latin1");
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower)) {
        if (lower === "connection") connection = connectionTokens((rawHeaders[i + 1] as Buffer).toString("latin1"));
        continue;
      }
      headers.push(name, (rawHeaders[i + 1] as Buffer).toString("latin1"));
    }
    if (connection !== undefined) {
      for (let i = headers.length - 2; i >= 0; i -= 2) {
        if (connection.has((headers[i] as string).toLowerCase())) headers.splice(i, 2);
      }
    }
    this.resume = resume;
    this.res.writeHead(statusCode, statusText || undefined, headers);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.res.write(chunk)) return true;
    this.res.once("drain", this.onDrain);
    return false;
  }

  onComplete(): void {
    this.done = true;
    this.res.end();
  }

  onError(error: Error): void {
    this.done = true;
    if (this.res.destroyed) return;
    if (this.res.headersSent) {
      // Part of the answer is out: all the client can be told is that it is cut short.
      this.res.destroy(error);
      return;
    }
    this.log.warn({ err: error, path: redactSecrets(this.path) }, "upstream request failed");
    this.req.resume();
    const code = (error as Error & { code?: string }).code;
    if (code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
      sendError(this.res, this.path, 504, "Upstream timed out");
    } else sendError(this.res, this.path, 502, "Upstream unavailable");
  }
}

/**
 * The gateway: lets through only requests bearing a valid API key, and tells upstream whose key it was:
 * `X-Keyledger-User-Id`, `X-Keyledger-Organization-Id`, `X-Keyledger-Permissions` (comma-separated). On plain
 * `node:http` with an undici pool upstream: the request path is one pass over the client's headers, a cache
 * lookup and one upstream dispatch.
 */
export async function buildGateway(options: GatewayOptions): Promise<Gateway> {
  const mode = options.mode ?? "proxy";
  const { verifier } = options;
  const log = options.log ?? silentLog;
  let upstream: Pool | undefined;
  if (mode === "proxy") {
    if (options.upstreamUrl === undefined) throw new TypeError("buildGateway: proxy mode needs upstreamUrl");
    const pipelining = options.upstreamPipelining ?? 1;
    const connector = buildConnector({});
    upstream = new Pool(new URL(options.upstreamUrl).origin, {
      connections: options.upstreamConnections ?? 128,
      pipelining,
      keepAliveTimeout: 30_000,
      headersTimeout: options.upstreamTimeoutMs ?? 60_000,
      bodyTimeout: options.upstreamTimeoutMs ?? 60_000,
      // With pipelining, requests queued on one connection in the same turn share a socket write.
      connect:
        pipelining > 1
          ? (connectOptions, callback) =>
              connector(connectOptions, (error, socket) => {
                if (error === null) coalesceWrites(socket as Socket);
                callback(error, socket as never);
              })
          : undefined,
    });
  }
  const pool = upstream;
  const blocking = (options.upstreamPipelining ?? 1) <= 1;
  const forwardAuthorization = options.forwardAuthorization ?? false;

  const health = (path: string, res: ServerResponse): boolean => {
    if (path === "/health/live") {
      sendJson(res, 200, { status: "ok" });
      return true;
    }
    if (path === "/health/ready") {
      // Without NATS the gateway asks the API every time: ready at once. With it: once subscribed to the events.
      if (verifier.invalidation === "none") sendJson(res, 200, { status: "ok", checks: { nats: "off" } });
      else if (!verifier.subscribed) sendError(res, path, 503, "Not subscribed to key events yet");
      else sendJson(res, 200, { status: "ok", checks: { nats: "subscribed" } });
      return true;
    }
    return false;
  };

  const forward = (req: IncomingMessage, res: ServerResponse, url: string, inbound: Inbound, key: VerifiedKey) => {
    if (inbound.upgrade !== undefined && WEBSOCKET.test(inbound.upgrade)) {
      // Sent on without Upgrade, a WebSocket handshake would get some plain answer from upstream: say it here.
      req.resume();
      sendError(res, url, 501, "WebSocket is not supported by the gateway");
      return;
    }
    const headers = inbound.forward;
    pushIdentityHeaders(headers, key);
    // As nginx's `$proxy_add_x_forwarded_for`: the client's list, then the address the gateway saw.
    const clientIp = req.socket.remoteAddress;
    if (clientIp !== undefined) {
      const forwardedFor = inbound.forwardedFor;
      headers.push("x-forwarded-for", forwardedFor === undefined ? clientIp : `${forwardedFor}, ${clientIp}`);
    } else if (inbound.forwardedFor !== undefined) headers.push("x-forwarded-for", inbound.forwardedFor);
    // The client waits for this before sending its body; only now that the key is good (see `checkContinue`).
    if (inbound.expectsContinue && req.httpVersionMinor === 1 && req.httpVersionMajor === 1) res.writeContinue();
    (pool as Pool).dispatch(
      {
        path: url,
        method: req.method as Dispatcher.HttpMethod,
        headers,
        body: inbound.hasBody ? req : null,
        // undici sends nothing behind a "blocking" request until its answer's headers: with pipelining, only GET and
        // HEAD let others queue behind them (and undici sends other methods only on an idle connection).
        blocking: blocking || (req.method !== "GET" && req.method !== "HEAD"),
      },
      new ProxyHandler(req, res, url, log),
    );
  };

  const allow = (res: ServerResponse, key: VerifiedKey) => {
    const headers: string[] = [];
    pushIdentityHeaders(headers, key);
    // Never kept by a cache in front: a revoked key must be refused at its next request.
    headers.push("cache-control", "no-store", "content-length", "0");
    res.writeHead(200, headers);
    res.end();
  };

  /** Where the error body says the request went: in forward-auth mode, the original request's URI when given. */
  const pathFor = (req: IncomingMessage, url: string): string => {
    if (mode === "proxy") return url;
    const original = req.headers["x-forwarded-uri"] ?? req.headers["x-original-uri"];
    return typeof original === "string" ? original : url;
  };

  const decide = (
    req: IncomingMessage,
    res: ServerResponse,
    url: string,
    inbound: Inbound,
    result: VerifyResult<VerifiedKey>,
  ) => {
    if (res.destroyed) return;
    if (!result.valid) {
      log.debug({ code: result.code }, "API key rejected");
      req.resume();
      sendError(res, pathFor(req, url), 401, "Invalid credentials");
    } else if (mode === "forward-auth") {
      req.resume();
      allow(res, result.key);
    } else {
      forward(req, res, url, inbound, result.key);
    }
  };

  const failed = (req: IncomingMessage, res: ServerResponse, url: string, error: unknown) => {
    log.warn({ err: error }, "key lookup failed");
    if (res.destroyed) return;
    req.resume();
    sendError(res, pathFor(req, url), 503, "Service temporarily unavailable");
  };

  /** Handling a request threw (a bug, or a key the answer cannot carry): 503 for the client, never a crash. */
  const crashed = (req: IncomingMessage, res: ServerResponse, url: string, error: unknown) => {
    try {
      log.warn({ err: error, path: redactSecrets(pathFor(req, url)) }, "request handling failed");
      if (res.destroyed) return;
      // Part of an answer is out: all the client can be told is that it is cut short.
      if (res.headersSent) return void res.destroy();
      req.resume();
      sendError(res, pathFor(req, url), 503, "Service temporarily unavailable");
    } catch {
      res.destroy();
    }
  };

  /** RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400 (node's own answer would have no body). */
  const missingHost = (req: IncomingMessage, res: ServerResponse, url: string) => {
    req.resume();
    sendError(res, pathFor(req, url), 400, "Missing Host header", true);
  };

  const handle = (req: IncomingMessage, res: ServerResponse, url: string) => {
    const http11 = req.httpVersionMajor === 1 && req.httpVersionMinor === 1;
    if (url.charCodeAt(0) === 47 /* "/" */ && url.startsWith("/health/")) {
      if (http11 && !hasHost(req.rawHeaders)) return missingHost(req, res, url);
      const query = url.indexOf("?");
      if (health(query === -1 ? url : url.slice(0, query), res)) return;
    }
    const inbound = readInbound(req.rawHeaders, forwardAuthorization);
    if (http11 && !inbound.host) return missingHost(req, res, url);
    if (mode === "proxy" && url.charCodeAt(0) !== 47) {
      // An absolute-form or `*` target: not a request for upstream.
      req.resume();
      sendError(res, url, 400, "Bad request target");
      return;
    }
    if (inbound.bearer === undefined) {
      req.resume();
      sendError(res, pathFor(req, url), 401, "Invalid credentials");
      return;
    }
    // A cached key is decided in this turn of the event loop; a miss waits for the API.
    const cached = verifier.peek(inbound.bearer);
    if (cached !== undefined) {
      decide(req, res, url, inbound, cached);
      return;
    }
    // After a lookup, outside the request handler: nothing `decide` or `failed` throws may go unhandled.
    verifier
      .verify(inbound.bearer, { clientIp: req.socket.remoteAddress })
      .then(
        (result) => decide(req, res, url, inbound, result),
        (error: unknown) => failed(req, res, url, error),
      )
      .catch((error: unknown) => crashed(req, res, url, error));
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? "/";
    try {
      handle(req, res, url);
    } catch (error) {
      crashed(req, res, url, error);
    }
  };
  // Node's check for the Host header answers 400 without a body: the gateway checks it itself (`missingHost`).
  const server = createServer({ requireHostHeader: false }, onRequest);
  // `Expect: 100-continue`: node would send 100 Continue at once, inviting the body of a request about to be refused.
  // The gateway sends it only when forwarding; any other answer leaves the body unsent and unread, so the
  // connection is closed after it (its next bytes could be that body, or the next request).
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
    res.shouldKeepAlive = false;
    onRequest(req, res);
  });
  server.on("clientError", onClientError);
  server.on("connect", refuseConnect);
  // As fastify's defaults: clients' connections outlive a typical load balancer's idle timeout.
  server.keepAliveTimeout = 72_000;

  return {
    server,
    mode,
    listen({ port, host }) {
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          const address = server.address() as AddressInfo;
          const hostname = address.family === "IPv6" ? `[${address.address}]` : address.address;
          resolve(`http://${hostname}:${address.port}`);
        });
      });
    },
    async close() {
      await new Promise<void>((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      await pool?.close();
    },
  };
}
