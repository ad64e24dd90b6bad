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

export type Counted = { limit: number; remaining: number; resetSeconds: number; exceeded: boolean };

/**
 * Fixed windows counted per key, in memory: a key's first hit starts its window of `ttlMs`, and hits within it are
 * counted (`@fastify/rate-limit`'s local store behaves the same way). A request costs one map lookup. Bounded:
 * once the map holds `maxKeys`, windows that have ended are swept, and if none had, the oldest are dropped (a key
 * dropped early only gets a fresh budget).
 */
export class FixedWindowCounter {
  private readonly windows = new Map<string, { count: number; resetAt: number }>();
  /** When the last window started so far ends: until then some window may be live. */
  private lastResetAt = Number.NEGATIVE_INFINITY;

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
      this.lastResetAt = Math.max(this.lastResetAt, window.resetAt);
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

  /** Whether any key may have a live window at `now` (false once every window started so far has ended). */
  hasLiveWindows(now: number): boolean {
    return this.lastResetAt > now;
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

/**
 * Daytona's headers for a count, `X-RateLimit-{Limit,Remaining,Reset}-<throttler>`, appended to `headers` as
 * name, value, name, value (node's raw header list).
 */
export function pushRateLimitHeaders(headers: string[], throttler: Throttler, counted: Counted): void {
  const names = HEADER_NAMES[throttler];
  headers.push(
    names.limit,
    `${counted.limit}`,
    names.remaining,
    `${counted.remaining}`,
    names.reset,
    `${counted.resetSeconds}`,
  );
}

function setHeaders(reply: FastifyReply, throttler: Throttler, counted: Counted) {
  const names = HEADER_NAMES[throttler];
  reply.header(names.limit, `${counted.limit}`);
  reply.header(names.remaining, `${counted.remaining}`);
  reply.header(names.reset, `${counted.resetSeconds}`);
}

function tooManyRequests(counted: Counted): ApiError {
  return new ApiError(429, TOO_MANY_REQUESTS, { "retry-after": String(Math.max(1, counted.resetSeconds)) });
}

/** The client a failed-auth window belongs to: IPv6 clients per /64 (normalizeIP), an IPv4 address itself. */
export function failedAuthClient(ip: string): string {
  return ip.includes(":") ? normalizeIP(ip) : ip;
}

/**
 * Daytona's two limits, in memory on each replica (see docs/reliability.md for why not shared): the counters and
 * the questions asked of them. The plugin below applies them to fastify's requests; the cached `/current` answer
 * (routes/api-keys/current-key-fast-path.ts) asks the same questions of the same counters.
 *
 * - failed-auth, per client IP (`request.ip`, which honours `X-Forwarded-For` only when the app trusts a proxy;
 *   IPv6 counted per /64): every 401 counts; the failure that reaches the limit and every later request from that
 *   IP are answered 429 until the window (started by the first failure) ends.
 * - authenticated, per organization: every request that authenticated counts, after authentication, before the
 *   body is parsed; past the limit the answer is 429 until the window ends.
 */
export class RateLimits {
  private readonly failures: FixedWindowCounter | null;
  private readonly requests: FixedWindowCounter | null;

  constructor(settings: RateLimitSettings) {
    const { failedAuth, authenticated } = settings;
    this.failures =
      failedAuth !== null && failedAuth.limit > 0
        ? new FixedWindowCounter(failedAuth.limit, failedAuth.ttlSeconds * 1000)
        : null;
    this.requests =
      authenticated !== null && authenticated.limit > 0
        ? new FixedWindowCounter(authenticated.limit, authenticated.ttlSeconds * 1000)
        : null;
  }

  get countsFailedAuth(): boolean {
    return this.failures !== null;
  }

  get countsAuthenticated(): boolean {
    return this.requests !== null;
  }

  /** False when no client has a live failed-auth window (then no client can be blocked, whatever its IP). */
  anyClientHasFailures(now: number): boolean {
    return this.failures?.hasLiveWindows(now) === true;
  }

  /** Whether `client` (see `failedAuthClient`) has used up its failed-auth window. */
  isClientBlocked(client: string, now: number): boolean {
    return this.failures?.isExhausted(client, now) === true;
  }

  /** Where a blocked client's window stands (for the 429's headers), without counting. */
  blockedWindow(client: string, now: number): Counted | null {
    return this.failures === null ? null : this.failures.hit(client, now, false);
  }

  /** Counts a failed authentication of `client`; null when the limit is off. */
  countFailure(client: string, now: number): Counted | null {
    return this.failures === null ? null : this.failures.hit(client, now);
  }

  /** Whether the organization's next authenticated request would be over its limit (nothing is counted). */
  isOrganizationExhausted(organizationId: string, now: number): boolean {
    return this.requests?.isExhausted(organizationId, now) === true;
  }

  /** Counts an authenticated request of the organization; null when the limit is off. */
  countAuthenticated(organizationId: string, now: number): Counted | null {
    return this.requests === null ? null : this.requests.hit(organizationId, now);
  }
}

/**
 * Applies `RateLimits` to fastify's requests: a blocked IP is refused (429) when its request arrives, a 401 counts
 * a failure (`app.failedAuthentication`, called by the error handler), and an authenticated request counts for
 * its organization before its body is parsed.
 *
 * Register before the authentication plugin, so a blocked IP is refused before any token is checked.
 */
export default fp(
  async (app: FastifyInstance, { limits }: { limits: RateLimits }) => {
    let recordFailure: OnAuthenticationFailed = async () => {};
    if (limits.countsFailedAuth) {
      app.addHook("onRequest", (request, reply, done) => {
        // Every request passes here: one map lookup, and nothing else unless the client IP is blocked.
        const client = failedAuthClient(request.ip);
        const now = Date.now();
        if (!limits.isClientBlocked(client, now) || UNTHROTTLED_PATH.test(request.url)) return done();
        const counted = limits.blockedWindow(client, now) as Counted;
        setHeaders(reply, "failed-auth", counted);
        done(tooManyRequests(counted));
      });
      recordFailure = async (request, reply) => {
        const counted = limits.countFailure(failedAuthClient(request.ip), Date.now()) as Counted;
        setHeaders(reply, "failed-auth", counted);
        if (counted.remaining === 0) {
          request.log.warn({ ip: request.ip }, "failed-auth limit reached: client IP blocked until the window ends");
          throw tooManyRequests(counted);
        }
      };
    }
    app.decorate("failedAuthentication", recordFailure);

    if (limits.countsAuthenticated) {
      app.addHook("preParsing", (request, reply, _payload, done) => {
        // Not authenticated: no \`auth\`. Routes registered before the authentication plugin (the OpenAPI UI) do not
        // even carry its \`null\` decoration, so both count as "no caller".
        if (request.auth == null) return done();
        const counted = limits.countAuthenticated(request.auth.organizationId, Date.now()) as Counted;
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
