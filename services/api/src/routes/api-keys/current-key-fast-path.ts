import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { VALID_UNTIL_HEADER } from "@keyledger/verifier";
import type { ApiKeyVerifier } from "../../api-key-verifier";
import { recordApiKeyVerification, requestDurationSeries } from "../../metrics";
import {
  bypassesKeyCache,
  gracePeriodHeader,
  looksLikeJwt,
  presentedBearerToken,
} from "../../plugins/app/authentication";
import { failedAuthClient, pushRateLimitHeaders, type RateLimits } from "../../plugins/app/rate-limits";
import type { ApiKeyRow } from "../../read-model-queries";
import { requestIdFor } from "../../request-id";
import { currentKeyBody } from "./list-item";

/** The route's full path (registered as `/api-keys/current` under the `/api` prefix); also its metrics label. */
export const CURRENT_KEY_PATH = "/api/api-keys/current";

export type CachedCurrentKeyOptions = {
  verifier: Pick<ApiKeyVerifier, "peek">;
  rateLimits: RateLimits;
  /** Whether fastify takes the client IP from `X-Forwarded-For` (then only fastify knows the IP to check). */
  trustsProxy: boolean;
  /** Records the use (`KeyUsed`, throttled), as the authentication plugin does. */
  onApiKeyUsed: (key: ApiKeyRow, requestId: string) => void;
  /** Whether fastify logs every request now (`LOG_LEVEL` info or below): then fastify answers, and logs. */
  logsRequests: () => boolean;
  /** Where an unexpected failure is reported (the request then goes to fastify, unless bytes were sent). */
  onError: (error: unknown) => void;
};

export type CachedCurrentKeyAnswerer = {
  /** Answers the request and returns true, or returns false having changed nothing (fastify answers it). */
  answer(request: IncomingMessage, response: ServerResponse): boolean;
  /** From now on every request goes to fastify (which answers 503 while the app closes). */
  close(): void;
};

/**
 * `GET /api/api-keys/current` with an API key the verifier holds as valid: the one request gateways and SDKs send
 * over and over, answered before fastify sees it. fastify's request lifecycle (routing, three hook stages, reply
 * objects) cost more CPU than everything this answer does (BENCHMARKS.md, docs/architecture.md), and this answer is
 * the same as the route's: the same authentication checks and verifier, rate-limit windows and headers, request
 * id, `KeyUsed` recording, verification and latency metrics, and body. Anything else, and every case that could
 * end in something other than a 200, is declined before anything is counted or recorded, and fastify answers it:
 * another method or URL (a query string included), a request body, no Host header, an `Origin` header (a browser's
 * request, which needs the CORS headers), `Cache-Control: no-cache`, a missing, repeated
 * or JWT-shaped credential, a key the cache does not hold as valid, a client IP with failed authentications when
 * only fastify knows the IP (a trusted proxy: while any client's failed-auth window is live), an organization at
 * its request limit, and every request while request logging is on or the app is closing. (One count is taken
 * before a decline: the verifier's cache hit, so a request declined at its organization's limit counts two hits.)
 */
export function cachedCurrentKeyAnswerer(options: CachedCurrentKeyOptions): CachedCurrentKeyAnswerer {
  const { verifier, rateLimits } = options;
  const durations = requestDurationSeries("GET", CURRENT_KEY_PATH, 200);
  let open = true;

  function clientMayBeBlocked(request: IncomingMessage, now: number): boolean {
    if (!rateLimits.anyClientHasFailures(now)) return false;
    const ip = request.socket.remoteAddress;
    if (options.trustsProxy || ip === undefined) return true;
    return rateLimits.isClientBlocked(failedAuthClient(ip), now);
  }

  function answer(request: IncomingMessage, response: ServerResponse): boolean {
    if (!open || request.method !== "GET" || request.url !== CURRENT_KEY_PATH) return false;
    const started = performance.now();
    const headers = request.headers;
    if (headers["content-length"] !== undefined || headers["transfer-encoding"] !== undefined) return false;
    if (headers.host === undefined) return false; // fastify answers 400 for HTTP/1.1 (and serves HTTP/1.0)
    if (headers.origin !== undefined) return false; // a browser's request: fastify adds the CORS headers
    if (bypassesKeyCache(headers) || options.logsRequests()) return false;
    const token = presentedBearerToken(headers, request.rawHeaders);
    if (token === undefined || looksLikeJwt(token)) return false;
    const now = Date.now();
    if (clientMayBeBlocked(request, now)) return false;
    const result = verifier.peek(token);
    if (result === undefined || !result.valid) return false;
    const key = result.key;
    if (rateLimits.isOrganizationExhausted(key.organizationId, now)) return false;
    try {
      const requestId = requestIdFor(headers["x-request-id"]);
      const body = currentKeyBody(key.row, key.keyHash, key.validUntil, token);
      const responseHeaders = [
        "content-type",
        "application/json; charset=utf-8",
        "content-length",
        String(Buffer.byteLength(body)),
        "x-request-id",
        requestId,
      ];
      const validUntil = gracePeriodHeader(key);
      if (validUntil !== undefined) responseHeaders.push(VALID_UNTIL_HEADER, validUntil);
      const counted = rateLimits.countAuthenticated(key.organizationId, now);
      if (counted !== null) pushRateLimitHeaders(responseHeaders, "authenticated", counted);
      recordApiKeyVerification("valid");
      options.onApiKeyUsed(key.row, requestId);
      response.writeHead(200, responseHeaders);
      response.end(body);
      durations.observe((performance.now() - started) / 1000);
      return true;
    } catch (error) {
      options.onError(error);
      if (!response.headersSent) return false;
      response.destroy();
      return true;
    }
  }

  return {
    answer,
    close() {
      open = false;
    },
  };
}

/**
 * Puts `answerer` in front of fastify's request listener on its server: fastify handles what it declines. fastify
 * keeps the server (its timeouts, `listen`, `close`); `inject` calls fastify directly and never reaches the answerer.
 */
export function answerBeforeFastify(server: Server, answerer: CachedCurrentKeyAnswerer): void {
  const listeners = server.listeners("request") as ((request: IncomingMessage, response: ServerResponse) => void)[];
  const [fastifyListener] = listeners;
  if (listeners.length !== 1 || fastifyListener === undefined) {
    throw new Error(`expected fastify's one request listener on the server, found ${listeners.length}`);
  }
  server.removeListener("request", fastifyListener);
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    if (!answerer.answer(request, response)) fastifyListener(request, response);
  });
}
