import { randomUUID } from "node:crypto";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, { type FastifyInstance, type FastifyServerOptions } from "fastify";
import type { Kysely } from "kysely";
import { KeyCommands, type OnCommitted } from "./commands/key-commands";
import type { DevIssuer } from "./dev-issuer";
import { KeyUsageRecorder } from "./key-usage-recorder";
import authentication from "./plugins/app/authentication";
import rateLimits, { type RateLimitSettings } from "./plugins/app/rate-limits";
import metrics from "./plugins/external/metrics";
import errorHandler, { clientErrorHandler, frameworkErrorHandler } from "./plugins/external/error-handler";
import openapi from "./plugins/external/openapi";
import apiKeyRoutes from "./routes/api-keys/index";
import apiKeyRotationRoutes from "./routes/api-keys/rotation";
import { ErrorSchema, PermissionSchema } from "./routes/api-keys/schemas";
import devIssuerRoutes from "./routes/dev/index";
import healthRoutes from "./routes/health/index";
import internalMemberRoutes from "./routes/internal/members";

export type AppOptions = {
  db: Kysely<unknown>;
  /** The OIDC provider whose JWTs the API accepts; required unless `devIssuer` is given. */
  oidc?: { issuer: string; jwksUrl: string; audience: string | undefined };
  /** Development only: the API is its own issuer (keys at `/.well-known/jwks.json`, tokens from `POST /dev/tokens`). */
  devIssuer?: DevIssuer;
  internalApiToken: string | undefined;
  keyUsedThrottleMs: number;
  bodyLimitBytes: number;
  logger: FastifyServerOptions["logger"];
  onCommitted?: OnCommitted;
  /** Daytona's failed-auth and authenticated rate limits; omitted, the app applies none (tests). */
  rateLimits?: RateLimitSettings;
  /** Whose `X-Forwarded-For` decides the client IP (fastify's `trustProxy`); default: nobody's. */
  trustProxy?: boolean | number | string;
};

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Paths that never appear in logs with their secrets: tokens and key values. */
export const LOG_REDACTIONS = [
  "req.headers.authorization",
  "headers.authorization",
  "authorization",
  "value",
  "*.value",
  "token",
  "*.token",
];

/** Trusts the nearest `hops` proxies (fastify takes a hop count at run time, but its types do not say so). */
function trustHops(hops: number) {
  return (_address: string, hop: number) => hop < hops;
}

export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger,
    bodyLimit: options.bodyLimitBytes,
    trustProxy: typeof options.trustProxy === "number" ? trustHops(options.trustProxy) : (options.trustProxy ?? false),
    frameworkErrors: frameworkErrorHandler,
    clientErrorHandler,
    requestIdHeader: "x-request-id",
    genReqId: (req) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
    },
    routerOptions: { maxParamLength: 1024, ignoreDuplicateSlashes: false },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  const commands = new KeyCommands(options.db, options.onCommitted);
  const usage = new KeyUsageRecorder(commands, options.keyUsedThrottleMs, app.log);

  // JSON with prototype-poisoning protection, and an empty body (a DELETE with a JSON content type) as no body.
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, body, done) => {
    const text = body.toString();
    if (text.trim() === "") return done(null, undefined);
    parseJson(request, text, done);
  });
  app.addSchema(PermissionSchema);
  app.addSchema(ErrorSchema);
  app.addHook("onSend", async (request, reply) => {
    reply.header("x-request-id", request.id);
  });
  app.addHook("onClose", async () => {
    await usage.flush();
  });

  await app.register(metrics, {});
  await app.register(rateLimits, options.rateLimits ?? { failedAuth: null, authenticated: null });
  await app.register(errorHandler, { onUnauthorized: app.failedAuthentication });
  await app.register(openapi);
  const devIssuer = options.devIssuer;
  const oidc = devIssuer
    ? { issuer: devIssuer.issuer, jwksUrl: devIssuer.jwksUrl, audience: devIssuer.audience, jwks: devIssuer.jwks }
    : options.oidc;
  if (oidc === undefined) throw new Error("buildApp needs oidc or devIssuer");
  await app.register(authentication, {
    db: options.db,
    oidc,
    onApiKeyUsed: (key, request) => usage.record(key, request.id),
  });
  await app.register(healthRoutes, { db: options.db });
  await app.register(apiKeyRoutes, { prefix: "/api", db: options.db, commands });
  await app.register(apiKeyRotationRoutes, { prefix: "/api", commands });
  if (options.internalApiToken !== undefined) {
    await app.register(internalMemberRoutes, { commands, internalApiToken: options.internalApiToken });
  }
  if (devIssuer) await app.register(devIssuerRoutes, { issuer: devIssuer, commands });
  return app;
}
