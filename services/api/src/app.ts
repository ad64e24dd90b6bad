import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { RecordedEvent } from "@keyledger/event-store";
import type { NotificationSource } from "@keyledger/projections";
import Fastify, { type FastifyInstance, type FastifyServerOptions } from "fastify";
import type { Kysely } from "kysely";
import { type ApiKeyVerifier, createApiKeyVerifier } from "./api-key-verifier";
import { KeyCommands, type OnCommitted } from "./commands/key-commands";
import type { CorsOrigins } from "./config";
import type { DevIssuer } from "./dev-issuer";
import { ApiEventBus, type EventBusOptions } from "./event-bus";
import { ApiError, errorBody } from "./http-errors";
import { KeyUsageRecorder } from "./key-usage-recorder";
import { recordReportedKeyUses } from "./key-use-reports";
import { measureLogReaderLag } from "./log-reader-lag";
import { MemberCache } from "./member-cache";
import authentication from "./plugins/app/authentication";
import rateLimitsPlugin, { type RateLimitSettings, RateLimits } from "./plugins/app/rate-limits";
import corsPlugin from "./plugins/external/cors";
import errorHandler, { clientErrorHandler, frameworkErrorHandler } from "./plugins/external/error-handler";
import metrics from "./plugins/external/metrics";
import openapi from "./plugins/external/openapi";
import type { ApiKeyRow } from "./read-model-queries";
import { requestIdFor } from "./request-id";
import { lazyChildLoggerFactory } from "./request-logger";
import apiKeyEventRoutes from "./routes/api-key-events/index";
import { answerBeforeFastify, cachedCurrentKeyAnswerer } from "./routes/api-keys/current-key-fast-path";
import apiKeyRoutes from "./routes/api-keys/index";
import apiKeyRotationRoutes from "./routes/api-keys/rotation";
import { ErrorSchema, PermissionSchema } from "./routes/api-keys/schemas";
import devIssuerRoutes from "./routes/dev/index";
import healthRoutes from "./routes/health/index";
import internalMemberRoutes from "./routes/internal/members";
import { withSecretSafeSerializers } from "./secrets";

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
  /** NATS: publish events (fast path + relay), invalidate the API-key cache, take gateways' key uses. */
  nats?: EventBusOptions;
  /** Daytona's failed-auth and authenticated rate limits; omitted, the app applies none (tests). */
  rateLimits?: RateLimitSettings;
  /** Whose `X-Forwarded-For` decides the client IP (fastify's `trustProxy`); default: nobody's. */
  trustProxy?: boolean | number | string;
  /** Postgres notifications (LISTEN): wake the audit event streams when the hash chain grows; else they poll. */
  notifications?: NotificationSource;
  /** Which browser origins may call the API; default: any (as Daytona). */
  corsOrigins?: CorsOrigins;
};

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
    logger: withSecretSafeSerializers(options.logger),
    childLoggerFactory: lazyChildLoggerFactory,
    bodyLimit: options.bodyLimitBytes,
    trustProxy: typeof options.trustProxy === "number" ? trustHops(options.trustProxy) : (options.trustProxy ?? false),
    frameworkErrors: frameworkErrorHandler,
    clientErrorHandler,
    // fastify would take any \`X-Request-Id\` as given (and call genReqId only without one): the header is read by
    // genReqId instead, so a caller's id is kept only when it is a plain token (as on the cached /current path).
    requestIdHeader: false,
    genReqId: (req) => requestIdFor(req.headers["x-request-id"]),
    // `/api/api-keys/` is the list, as in Daytona (Express routes ignore a trailing slash), not `/:name` with an empty name.
    http: { requireHostHeader: false },
    routerOptions: { maxParamLength: 1024, ignoreDuplicateSlashes: false, ignoreTrailingSlash: true },
    // `x-error-message` on a schema (an OpenAPI extension) is what a 400 says when a value fails it
    // (`validationMessage` in the error handler); `verbose` lets the handler see the failing schema.
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        allErrors: false,
        verbose: true,
        keywords: ["x-error-message"],
      },
    },
    // fastify's own 503 for a request arriving while it closes (on a keep-alive connection still busy) is not
    // Daytona's body: the first onRequest hook answers it instead (`closing`, below).
    return503OnClosing: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  /** Set as `app.close()` starts (fastify also marks the response `Connection: close` from then on). */
  let closing = false;
  app.addHook("preClose", (done) => {
    closing = true;
    done();
  });

  const eventBus = options.nats ? new ApiEventBus(options.nats, options.db, app.log, options.notifications) : undefined;
  let members: MemberCache | undefined;
  const verifier: ApiKeyVerifier = createApiKeyVerifier(options.db, {
    natsLink: eventBus?.link,
    subjectPrefix: options.nats?.subjectPrefix,
    cache: options.nats?.verifierCache,
    log: app.log,
    onEvent: (event) => members?.applyEvent(event),
  });
  members = new MemberCache(options.db, verifier);
  /** This process's events: the event bus's connection does not echo them, so they are applied here. */
  const applyHere = (events: RecordedEvent[]) => {
    for (const event of events) {
      verifier.applyEvent(event);
      members?.applyEvent(event);
    }
  };
  eventBus?.onRelayPublishing(applyHere);
  eventBus?.onRelayHeartbeat(() => verifier.applyRelayHeartbeat());
  app.decorate("apiKeyVerifier", verifier);
  app.decorate("eventBus", eventBus);
  const commands = new KeyCommands(
    options.db,
    (events) => {
      // First the other processes (the gateways): this process's caches are updated in the same turn of the event
      // loop, before any request of this process is handled, so they lose nothing by going second.
      eventBus?.publishCommitted(events);
      applyHere(events);
      options.onCommitted?.(events);
    },
    {
      // The projector and relay start work when notified; 5 ms lets the fast path's NATS delivery (revocations to
      // the gateways) go first instead of competing with them for the CPU (docs/architecture.md, BENCHMARKS.md).
      delayMs: 5,
      onError: (error) => app.log.warn({ err: error }, "could not notify the log's readers; they will poll"),
    },
    (events) => eventBus?.prepareCommitting(events),
  );
  const usage = new KeyUsageRecorder(commands, options.keyUsedThrottleMs, app.log);
  const recordKeyUse = (key: ApiKeyRow, requestId: string) => usage.record(key, requestId);
  if (options.nats?.membership) eventBus?.consumeMembership(options.nats.membership, commands, app.log);
  /** Reports being read (their keys' rows): shutdown waits for them before the last flush of the uses. */
  const reportsInProgress = new Set<Promise<void>>();
  eventBus?.onKeyUseReports(options.nats?.subjectPrefix ?? "", (report) => {
    const recording = recordReportedKeyUses(options.db, usage, report)
      .catch((error: unknown) => app.log.warn({ err: error }, "could not record reported key uses"))
      .finally(() => reportsInProgress.delete(recording));
    reportsInProgress.add(recording);
  });

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
  // Set when the request arrives (it stays through errors and 404s): with no onSend hook, fastify sends the
  // payload without running an onSend stage on every response.
  app.addHook("onRequest", (request, reply, done) => {
    reply.header("x-request-id", request.id);
    if (closing) {
      request.log.info("refused a request: the server is closing");
      reply.code(503).send(errorBody(request.url, 503, "Service temporarily unavailable"));
      return;
    }
    // RFC 9112 3.2 (node's own check answers without a body, so it is off: `http.requireHostHeader`).
    if (request.headers.host === undefined && request.raw.httpVersion === "1.1") {
      reply.header("connection", "close");
      return done(new ApiError(400, "Missing Host header"));
    }
    done();
  });
  app.addHook("onClose", async () => {
    // Requests are done (fastify closed the server first); then the reports this replica was sent, which no other
    // replica of the queue group will get, are read into the recorder before its last flush.
    await eventBus?.stopReceiving();
    await Promise.all(reportsInProgress);
    await usage.flush();
    await commands.close();
    await eventBus?.close();
    await verifier.close();
  });

  await app.register(metrics, { cache: verifier, logReaderLag: () => measureLogReaderLag(options.db) });
  await app.register(corsPlugin, { origins: options.corsOrigins ?? "any" });
  const rateLimits = new RateLimits(options.rateLimits ?? { failedAuth: null, authenticated: null });
  await app.register(rateLimitsPlugin, { limits: rateLimits });
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
    onApiKeyUsed: recordKeyUse,
    verifier,
    members,
  });
  await app.register(healthRoutes, {
    db: options.db,
    natsSubscription: options.nats ? () => (verifier.subscribed ? "subscribed" : "disconnected") : undefined,
  });
  await app.register(apiKeyRoutes, { prefix: "/api", db: options.db, commands });
  await app.register(apiKeyRotationRoutes, { prefix: "/api", commands });
  await app.register(apiKeyEventRoutes, { prefix: "/api", db: options.db, notifications: options.notifications });
  if (options.internalApiToken !== undefined) {
    await app.register(internalMemberRoutes, { commands, internalApiToken: options.internalApiToken });
  }
  if (devIssuer) await app.register(devIssuerRoutes, { issuer: devIssuer, commands });

  // The cached `/current` answer, ahead of fastify (routes/api-keys/current-key-fast-path.ts says when it applies).
  const log = app.log as { isLevelEnabled?: (level: string) => boolean };
  const cachedCurrentKey = cachedCurrentKeyAnswerer({
    verifier,
    rateLimits,
    trustsProxy: options.trustProxy !== undefined && options.trustProxy !== false,
    onApiKeyUsed: recordKeyUse,
    logsRequests: () => log.isLevelEnabled?.("info") ?? false,
    onError: (error) => app.log.error({ err: error }, "the cached /current answer failed; fastify answers"),
  });
  answerBeforeFastify(app.server, cachedCurrentKey);
  app.addHook("preClose", (done) => {
    cachedCurrentKey.close();
    done();
  });
  return app;
}
