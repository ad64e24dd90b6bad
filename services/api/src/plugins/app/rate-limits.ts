import { normalizeIP } from "@fastify/rate-limit";
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

type Counted = { limit: number; remaining: number; resetSeconds: number; exceeded: boolean };

/**
 * Fixed windows counted per key, in memory: a key's first hit starts its window of `ttlMs`, and hits within it are
 * counted (`@fastify/rate-limit`'s local store behaves the same way). A request costs one map lookup. Bounded:
 * once the map holds `maxKeys`, windows that have ended are swept, and if none had, the oldest are dropped (a key
 * dropped early only gets a fresh budget).
 */
export class FixedWindowCounter {
  private readonly windows = new Map<string, { count: number; resetAt: number }>();

  constructor(
    readonly limit: number,
    private readonly ttlMs: number,
    private readonly maxKeys = 100_000,
  ) {}

  /** Counts a hit of `key` (unless `increment` is false) and says where its window stands. */
  hit(key: string, now: number, increment = true): Counted {
    let window = this.windows.get(key);
    if (window === undefined || window.resetAt <= now) {
      if (!increment)
        return {
          limit: this.limit,
          remaining: this.limit,
          resetSeconds: Math.ceil(this.ttlMs / 1000),
          exceeded: false,
        };
      if (window !== undefined) this.windows.delete(key);
      else if (this.windows.size >= this.maxKeys) this.sweep(now);
      window = { count: 0, resetAt: now + this.ttlMs };
      this.windows.set(key, window);
    }
    if (increment) window.count += 1;
    return {
      limit: this.limit,
      remaining: Math.max(0, this.limit - window.count),
      resetSeconds: Math.max(0, Math.ceil((window.resetAt - now) / 1000)),
      exceeded: window.count > this.limit,
    };
  }

  /** Whether `key`'s window is live and used up (what `hit(key, now, false).remaining === 0` says, without the object). */
  isExhausted(key: string, now: number): boolean {
    const window = this.windows.get(key);
    return window !== undefined && window.resetAt > now && window.count >= this.limit;
  }

  get size(): number {
    return this.windows.size;
  }

  private sweep(now: number): void {
    for (const [key, window] of this.windows) if (window.resetAt <= now) this.windows.delete(key);
    for (const key of this.windows.keys()) {
      if (this.windows.size < this.maxKeys) break;
      this.windows.delete(key);
    }
  }
}

type Throttler = "failed-auth" | "authenticated";

/** Header names per throttler, built once (every authenticated request sets three). */
const HEADER_NAMES: Record<Throttler, { limit: string; remaining: string; reset: string }> = {
  "failed-auth": {
    limit: "x-ratelimit-limit-failed-auth",
    remaining: "x-ratelimit-remaining-failed-auth",
    reset: "x-ratelimit-reset-failed-auth",
  },
  authenticated: {
    limit: "x-ratelimit-limit-authenticated",
    remaining: "x-ratelimit-remaining-authenticated",
    reset: "x-ratelimit-reset-authenticated",
  },
};

/** Daytona's headers: `X-RateLimit-{Limit,Remaining,Reset}-<throttler>`, plus `Retry-After` on a 429. */
function setHeaders(reply: FastifyReply, throttler: Throttler, counted: Counted) {
  const names = HEADER_NAMES[throttler];
  reply.header(names.limit, `${counted.limit}`);
  reply.header(names.remaining, `${counted.remaining}`);
  reply.header(names.reset, `${counted.resetSeconds}`);
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
    let recordFailure: OnAuthenticationFailed = async () => {};
    const failedAuth = settings.failedAuth;
    if (failedAuth !== null && failedAuth.limit > 0) {
      const failures = new FixedWindowCounter(failedAuth.limit, failedAuth.ttlSeconds * 1000);
      // IPv6 clients are counted per /64 (normalizeIP); an IPv4 address is its own key.
      const clientOf = (request: FastifyRequest) => (request.ip.includes(":") ? normalizeIP(request.ip) : request.ip);
      app.addHook("onRequest", (request, reply, done) => {
        // Every request passes here: one map lookup, and nothing else unless the client IP is blocked.
        const client = clientOf(request);
        const now = Date.now();
        if (!failures.isExhausted(client, now) || UNTHROTTLED_PATH.test(request.url)) return done();
        const counted = failures.hit(client, now, false);
        setHeaders(reply, "failed-auth", counted);
        done(tooManyRequests(counted));
      });
      recordFailure = async (request, reply) => {
        const counted = failures.hit(clientOf(request), Date.now());
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
      const requests = new FixedWindowCounter(authenticated.limit, authenticated.ttlSeconds * 1000);
      app.addHook("preParsing", (request, reply, _payload, done) => {
        if (request.auth === null) return done();
        const counted = requests.hit(request.auth.organizationId, Date.now());
        setHeaders(reply, "authenticated", counted);
        done(counted.exceeded ? tooManyRequests(counted) : undefined);
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
