import type { IncomingHttpHeaders } from "node:http";
import type { MemberRole, Permission } from "@keyledger/domain";
import { KEY_STATUS_HEADER, VALID_UNTIL_HEADER, type VerifyResult } from "@keyledger/verifier";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { createLocalJWKSet, createRemoteJWKSet, type JSONWebKeySet, type JWTVerifyGetKey, jwtVerify } from "jose";
import type { Kysely } from "kysely";
import type { ApiKeyVerifier, ApiVerifiedKey } from "../../api-key-verifier";
import { ApiError, invalidAuthContext, invalidCredentials } from "../../http-errors";
import { isStorableIdentifier } from "../../identifiers";
import type { MemberCache } from "../../member-cache";
import { type ApiKeyVerificationOutcome, recordApiKeyVerification } from "../../metrics";
import type { ApiKeyRow } from "../../read-model-queries";
import { withRouteHook } from "../../route-hooks";

export type JwtAuthContext = {
  method: "jwt";
  userId: string;
  organizationId: string;
  role: MemberRole;
  memberPermissions: Permission[];
};

export type ApiKeyAuthContext = {
  method: "api_key";
  userId: string;
  organizationId: string;
  key: ApiKeyRow;
  /** SHA-256 of the presented value: the key's current value, or its previous one during a rotation grace. */
  keyHash: string;
  /** When the presented value stops working (null: never). */
  validUntil: Date | null;
};

export type AuthContext = JwtAuthContext | ApiKeyAuthContext;

/** Which credential a route takes (`jwt_or_api_key`: either). Routes without it are public (health, docs). */
export type RouteAuth = "jwt" | "api_key" | "jwt_or_api_key";

declare module "fastify" {
  interface FastifyRequest {
    auth: AuthContext | null;
  }
  interface FastifyContextConfig {
    auth?: RouteAuth;
  }
}

export type AuthenticationOptions = {
  db: Kysely<unknown>;
  /** `jwks`, when given, is the key set itself (the development issuer's): nothing is fetched from `jwksUrl`. */
  oidc: { issuer: string; jwksUrl: string; audience: string | undefined; jwks?: JSONWebKeySet };
  /** Called after a successful API-key authentication (records `KeyUsed`, throttled). */
  onApiKeyUsed: (key: ApiKeyRow, requestId: string) => void;
  /**
   * Decides API keys: the same verifier as the gateways, with a database lookup. With NATS its cache is invalidated
   * by every replica's events; `Cache-Control: no-cache` (sent by gateways on their misses) reads the database.
   */
  verifier: ApiKeyVerifier;
  /** Memberships (cached while the event feed is live). */
  members: Pick<MemberCache, "find">;
};

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const BEARER = /^Bearer\s+(\S+)\s*$/i;
export const ORGANIZATION_HEADER = "x-daytona-organization-id";

/** How many `Authorization` lines the request had: node keeps only the first of several, silently. */
function authorizationHeaderCount(rawHeaders: readonly string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]?.toLowerCase() === "authorization") count++;
  return count;
}

/**
 * The token of the request's `Authorization: Bearer <token>`, or undefined when there is none, when the header is
 * not a bearer credential, or when the request has two (ambiguous: a proxy may have read the other one).
 */
export function presentedBearerToken(headers: IncomingHttpHeaders, rawHeaders: readonly string[]): string | undefined {
  const header = headers.authorization;
  if (typeof header !== "string") return undefined;
  if (authorizationHeaderCount(rawHeaders) > 1) return undefined;
  return BEARER.exec(header)?.[1] || undefined;
}

/**
 * A JWT's shape (three base64url parts); anything else presented as a bearer token is taken for an API key. An API
 * key has no dot, so it is told apart without the expression, which scans the whole token and backtracks over it
 * (1.6 % of the API's CPU on cached `/current` requests, profiled; the dot check is not visible).
 */
export function looksLikeJwt(token: string): boolean {
  return token.includes(".") && JWT_SHAPE.test(token);
}

/** `Cache-Control: no-cache` (gateways send it on their misses): the key is read from the database. */
export function bypassesKeyCache(headers: IncomingHttpHeaders): boolean {
  const cacheControl = headers["cache-control"];
  return typeof cacheControl === "string" && cacheControl.includes("no-cache");
}

/**
 * `X-Keyledger-Valid-Until` for a rotated-out value in its grace period (gateways must not cache it past that
 * instant); undefined for a key's current value.
 */
export function gracePeriodHeader(key: Pick<ApiVerifiedKey, "row" | "keyHash" | "validUntil">): string | undefined {
  return key.validUntil !== null && key.row.key_hash !== key.keyHash ? key.validUntil.toISOString() : undefined;
}

function bearerToken(request: FastifyRequest): string {
  const token = presentedBearerToken(request.headers, request.raw.rawHeaders);
  if (token === undefined) throw invalidCredentials();
  return token;
}

/** How long a verified JWT is taken on trust before its signature is checked again (never past its `exp`). */
const JWT_CACHE_MS = 60_000;
const JWT_CACHE_ENTRIES = 1_000;

/**
 * Tokens whose signature, issuer and audience were verified, with their subject: a dashboard sends the same token
 * with every request, and an RSA verification costs more than the rest of a request. An entry ends at the token's
 * `exp` or `ttlMs` after verification, whichever is first; a key removed from the issuer's JWKS is therefore still
 * honoured for at most `ttlMs` for tokens verified before. Bounded: the oldest entries go first.
 */
export class VerifiedTokenCache {
  private readonly entries = new Map<string, { subject: string; until: number }>();

  constructor(
    private readonly maxEntries: number,
    private readonly ttlMs: number,
  ) {}

  get(token: string, now: number): string | undefined {
    const entry = this.entries.get(token);
    if (entry === undefined) return undefined;
    if (entry.until <= now) {
      this.entries.delete(token);
      return undefined;
    }
    return entry.subject;
  }

  set(token: string, subject: string, expiresAtMs: number | undefined, now: number): void {
    const until = Math.min(now + this.ttlMs, expiresAtMs ?? Number.POSITIVE_INFINITY);
    if (until <= now) return;
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(token, { subject, until });
  }
}

/**
 * Authenticates `Authorization: Bearer` for routes that declare `config.auth`. A JWT-shaped token is verified
 * against the issuer's JWKS and its organization comes from `X-Daytona-Organization-ID`; anything else is an API
 * key, looked up by its hash, whose organization is its own. A credential of the other kind is rejected with 401.
 */
export default fp(
  async (app: FastifyInstance, options: AuthenticationOptions) => {
    const jwks: JWTVerifyGetKey = options.oidc.jwks
      ? createLocalJWKSet(options.oidc.jwks)
      : createRemoteJWKSet(new URL(options.oidc.jwksUrl), { timeoutDuration: 5000, cooldownDuration: 30_000 });

    const verifiedTokens = new VerifiedTokenCache(JWT_CACHE_ENTRIES, JWT_CACHE_MS);

    async function verifiedSubject(request: FastifyRequest, token: string): Promise<string> {
      const now = Date.now();
      const cached = verifiedTokens.get(token, now);
      if (cached !== undefined) return cached;
      try {
        const { payload } = await jwtVerify(token, jwks, {
          issuer: options.oidc.issuer,
          audience: options.oidc.audience,
          algorithms: ["RS256", "ES256"],
          requiredClaims: ["sub"],
        });
        if (typeof payload.sub !== "string" || !isStorableIdentifier(payload.sub)) throw new Error("no usable subject");
        verifiedTokens.set(token, payload.sub, typeof payload.exp === "number" ? payload.exp * 1000 : undefined, now);
        return payload.sub;
      } catch (error) {
        request.log.info({ reason: (error as Error).name }, "JWT rejected");
        throw invalidCredentials();
      }
    }

    async function authenticateJwt(request: FastifyRequest, token: string): Promise<JwtAuthContext> {
      const userId = await verifiedSubject(request, token);
      const organizationId = request.headers[ORGANIZATION_HEADER];
      if (typeof organizationId !== "string" || !isStorableIdentifier(organizationId)) {
        throw invalidAuthContext();
      }
      const member = await options.members.find(organizationId, userId);
      if (!member) throw invalidAuthContext();
      return {
        method: "jwt",
        userId,
        organizationId,
        role: member.role,
        memberPermissions: member.permissions,
      };
    }

    function apiKeyAuthContext(result: VerifyResult<ApiVerifiedKey>): ApiKeyAuthContext {
      recordApiKeyVerification(result.valid ? "valid" : (result.code.toLowerCase() as ApiKeyVerificationOutcome));
      if (!result.valid) {
        // Same body for every reason; the header tells a gateway's verifier which (it holds the value anyway).
        throw new ApiError(401, "Invalid credentials", { [KEY_STATUS_HEADER]: result.code.toLowerCase() });
      }
      const { row, keyHash, validUntil } = result.key;
      return {
        method: "api_key",
        userId: row.user_id,
        organizationId: row.organization_id,
        key: row,
        keyHash,
        validUntil,
      };
    }

    function acceptApiKey(request: FastifyRequest, reply: FastifyReply, auth: ApiKeyAuthContext): void {
      request.auth = auth;
      const validUntil = gracePeriodHeader({ row: auth.key, keyHash: auth.keyHash, validUntil: auth.validUntil });
      if (validUntil !== undefined) reply.header(VALID_UNTIL_HEADER, validUntil);
      options.onApiKeyUsed(auth.key, request.id);
    }

    /**
     * Sets `request.auth` or throws the 401. A cached API key is handled synchronously (returns undefined: no
     * promise on the hot path); anything else returns a promise.
     */
    function authenticate(
      request: FastifyRequest,
      reply: FastifyReply,
      required: RouteAuth,
    ): Promise<void> | undefined {
      const token = bearerToken(request);
      const jwtShaped = looksLikeJwt(token);
      if (required === "jwt" || (required === "jwt_or_api_key" && jwtShaped)) {
        if (!jwtShaped) throw invalidCredentials();
        return authenticateJwt(request, token).then((auth) => {
          request.auth = auth;
        });
      }
      if (jwtShaped) throw invalidCredentials();
      const bypassCache = bypassesKeyCache(request.headers);
      const cached = bypassCache ? undefined : options.verifier.peek(token);
      if (cached !== undefined) {
        acceptApiKey(request, reply, apiKeyAuthContext(cached));
        return undefined;
      }
      return options.verifier.verify(token, { bypassCache }).then((result) => {
        acceptApiKey(request, reply, apiKeyAuthContext(result));
      });
    }

    app.decorateRequest("auth", null);
    // Each route that declares `config.auth` gets its own hook, bound when the route is added: public routes run
    // none, and no request has to look its route's options up.
    app.addHook("onRoute", (route) => {
      const required = route.config?.auth;
      if (required === undefined) return;
      const hook = (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => {
        let pending: Promise<void> | undefined;
        try {
          pending = authenticate(request, reply, required);
        } catch (error) {
          return done(error as Error);
        }
        if (pending === undefined) return done();
        pending.then(() => done(), done);
      };
      route.onRequest = withRouteHook(route.onRequest, hook);
    });
  },
  { name: "authentication" },
);

export function requireJwt(request: FastifyRequest): JwtAuthContext {
  if (request.auth?.method !== "jwt") throw new ApiError(401, "Invalid credentials");
  return request.auth;
}

export function requireApiKey(request: FastifyRequest): ApiKeyAuthContext {
  if (request.auth?.method !== "api_key") throw new ApiError(401, "Invalid credentials");
  return request.auth;
}
