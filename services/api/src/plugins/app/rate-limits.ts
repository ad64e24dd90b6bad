import fastifyRateLimit, { normalizeIP } from "@fastify/rate-limit";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { ApiError } from "../../http-errors";

/** At most `limit` events per fixed window of `ttlSeconds`, counted per key (client IP or organization). */
export type RateLimitWindow = { limit: number; ttlSeconds: number };

/** Daytona's two limits for this API; `null` turns one off. */
export type RateLimitSettings = {
  /** Failed authentications per client IP; once reached, every request from the IP gets 429 until the window ends. */
  failedAuth: RateLimitWindow | null;
  /** Authenticated requests per organization. */
  authenticated: RateLimitWindow | null;
};

/** What the authentication plugin calls when it answers 401: may throw the 429 that replaces it. */
export type OnAuthenticationFailed = (request: FastifyRequest, reply: FastifyReply) => Promise<void>;

/** Daytona's throttler message (NestJS `ThrottlerException`). */
export const TOO_MANY_REQUESTS = "ThrottlerException: Too Many Requests";

/** Paths a blocked IP may still reach: probes come from the platform, not from the client being throttled. */
const UNTHROTTLED_PATH = /^\/health\//;

type Limiter = ReturnType<FastifyInstance["createRateLimit"]>;
type Counted = { limit: number; remaining: number; resetSeconds: number; exceeded: boolean };

async function count(limiter: Limiter, request: FastifyRequest, increment: boolean): Promise<Counted | null> {
  const result = await limiter(request, { increment });
  if (result.isAllowed) return null;
  return {
    limit: result.max,
    remaining: result.remaining,
    resetSeconds: result.ttlInSeconds,
    exceeded: result.isExceeded,
  };
}

/** Daytona's headers: `X-RateLimit-{Limit,Remaining,Reset}-<throttler>`, plus `Retry-After` on a 429. */
function setHeaders(reply: FastifyReply, throttler: string, counted: Counted) {
  reply.header(`x-ratelimit-limit-${throttler}`, String(counted.limit));
  reply.header(`x-ratelimit-remaining-${throttler}`, String(counted.remaining));
  reply.header(`x-ratelimit-reset-${throttler}`, String(counted.resetSeconds));
}

function tooManyRequests(counted: Counted): ApiError {
  return new ApiError(429, TOO_MANY_REQUESTS, { "retry-after": String(Math.max(1, counted.resetSeconds)) });
}

/**
 * Daytona's rate limits, in memory on each replica (see docs/reliability.md for why not shared).
 *
 * - failed-auth, per client IP (`request.ip`, which honours `X-Forwarded-For` only when the app trusts a proxy;
 *   IPv6 counted per /64): every 401 counts (`app.failedAuthentication`, called by the error handler); the
 *   failure that reaches the limit and every later request from that IP are answered 429 until the window
 *   (started by the first failure) ends.
 * - authenticated, per organization: every request that authenticated counts, after authentication, before the
 *   body is parsed; past the limit the answer is 429 until the window ends.
 *
 * Register before the authentication plugin, so a blocked IP is refused before any token is checked.
 */
export default fp(
  async (app: FastifyInstance, settings: RateLimitSettings) => {
    await app.register(fastifyRateLimit, { global: false });

    let recordFailure: OnAuthenticationFailed = async () => {};
    const failedAuth = settings.failedAuth;
    if (failedAuth !== null && failedAuth.limit > 0) {
      const limiter = app.createRateLimit({
        max: failedAuth.limit,
        timeWindow: failedAuth.ttlSeconds * 1000,
        keyGenerator: (request) => `failed-auth:${normalizeIP(request.ip)}`,
      });
      app.addHook("onRequest", async (request, reply) => {
        if (UNTHROTTLED_PATH.test(request.url)) return;
        const counted = await count(limiter, request, false);
        if (counted === null || counted.remaining > 0) return;
        setHeaders(reply, "failed-auth", counted);
        throw tooManyRequests(counted);
      });
      recordFailure = async (request, reply) => {
        const counted = await count(limiter, request, true);
        if (counted === null) return;
        setHeaders(reply, "failed-auth", counted);
        if (counted.remaining === 0) {
          request.log.warn({ ip: request.ip }, "failed-auth limit reached: client IP blocked until the window ends");
          throw tooManyRequests(counted);
        }
      };
    }
    app.decorate("failedAuthentication", recordFailure);

    const authenticated = settings.authenticated;
    if (authenticated !== null && authenticated.limit > 0) {
      const limiter = app.createRateLimit({
        max: authenticated.limit,
        timeWindow: authenticated.ttlSeconds * 1000,
        keyGenerator: (request) => `authenticated:${request.auth?.organizationId ?? ""}`,
      });
      // preParsing runs after every onRequest hook (so after authentication) and before the body is read.
      app.addHook("preParsing", async (request, reply) => {
        if (request.auth === null) return;
        const counted = await count(limiter, request, true);
        if (counted === null) return;
        setHeaders(reply, "authenticated", counted);
        if (counted.exceeded) throw tooManyRequests(counted);
      });
    }
  },
  { name: "rate-limits" },
);

declare module "fastify" {
  interface FastifyInstance {
    /** Counts a failed authentication of the request's client IP; throws the 429 once the IP is blocked. */
    failedAuthentication: OnAuthenticationFailed;
  }
}
