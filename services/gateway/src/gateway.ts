import { STATUS_CODES } from "node:http";
import replyFrom from "@fastify/reply-from";
import type { Verifier } from "@keyledger/verifier";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyServerOptions,
  LogController,
} from "fastify";

export type GatewayOptions = {
  upstreamUrl: string;
  verifier: Verifier;
  /** A logger configuration (false: none), or `loggerInstance` to share a pino logger. */
  logger?: FastifyServerOptions["logger"];
  loggerInstance?: FastifyBaseLogger;
  /** Upstream connections kept open (default 128). */
  upstreamConnections?: number;
};

/** Headers the gateway sets for upstream; any the client sent under this prefix are removed first. */
export const IDENTITY_HEADER_PREFIX = "x-keyledger-";
export const USER_ID_HEADER = "x-keyledger-user-id";
export const ORGANIZATION_ID_HEADER = "x-keyledger-organization-id";
export const PERMISSIONS_HEADER = "x-keyledger-permissions";

/** Paths that never appear in logs with their secrets. */
export const GATEWAY_LOG_REDACTIONS = ["req.headers.authorization", "headers.authorization", "authorization"];

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/** Daytona's error body: `{ path, timestamp, statusCode, error, message }`. */
function sendError(reply: FastifyReply, url: string, statusCode: number, message: string) {
  return reply.code(statusCode).send({
    path: url,
    timestamp: new Date().toISOString(),
    statusCode,
    error: STATUS_CODES[statusCode] ?? "Error",
    message,
  });
}

declare module "fastify" {
  interface FastifyRequest {
    verifiedKey: { userId: string; organizationId: string; permissions: string[] } | null;
  }
}

/**
 * A reverse proxy that lets through only requests bearing a valid API key, and tells upstream whose key it was:
 * `X-Keyledger-User-Id`, `X-Keyledger-Organization-Id`, `X-Keyledger-Permissions` (comma-separated).
 */
export async function buildGateway(options: GatewayOptions): Promise<FastifyInstance> {
  const app = Fastify({
    ...(options.loggerInstance ? { loggerInstance: options.loggerInstance } : { logger: options.logger ?? false }),
    // No per-request log lines: the gateway sits on every request's path.
    logController: new LogController({ disableRequestLogging: true }),
  });
  // Bodies are streamed upstream untouched.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", (_request, payload, done) => done(null, payload));
  await app.register(replyFrom, {
    base: options.upstreamUrl,
    undici: { connections: options.upstreamConnections ?? 128, pipelining: 1, keepAliveTimeout: 30_000 },
  });
  app.decorateRequest("verifiedKey", null);

  app.get("/health/live", async () => ({ status: "ok" }));
  app.get("/health/ready", async (request, reply) => {
    // Without NATS the gateway asks the API every time: ready at once. With it: once subscribed to the events.
    if (options.verifier.invalidation === "none") return { status: "ok", checks: { nats: "off" } };
    if (!options.verifier.subscribed) {
      return sendError(reply, request.url, 503, "Not subscribed to key events yet");
    }
    return { status: "ok", checks: { nats: "subscribed" } };
  });

  app.addHook("onRequest", async (request, reply) => {
    if (request.routeOptions.url === "/health/live" || request.routeOptions.url === "/health/ready") return;
    const header = request.headers.authorization;
    const bearer = typeof header === "string" ? BEARER.exec(header)?.[1] : undefined;
    if (bearer === undefined) return sendError(reply, request.url, 401, "Invalid credentials");
    let result: Awaited<ReturnType<Verifier["verify"]>>;
    try {
      result = await options.verifier.verify(bearer, { clientIp: request.ip });
    } catch (error) {
      request.log.warn({ err: error }, "key lookup failed");
      return sendError(reply, request.url, 503, "Service temporarily unavailable");
    }
    if (!result.valid) {
      request.log.debug({ code: result.code }, "API key rejected");
      return sendError(reply, request.url, 401, "Invalid credentials");
    }
    const { userId, organizationId, permissions } = result.key;
    request.verifiedKey = { userId, organizationId, permissions };
  });

  const proxy = async (request: import("fastify").FastifyRequest, reply: FastifyReply) => {
    const key = request.verifiedKey;
    if (key === null) return sendError(reply, request.url, 401, "Invalid credentials");
    return reply.from(request.url, {
      rewriteRequestHeaders: (_req, headers) => {
        const forwarded: Record<string, unknown> = {};
        for (const [name, value] of Object.entries(headers)) {
          if (!name.toLowerCase().startsWith(IDENTITY_HEADER_PREFIX)) forwarded[name] = value;
        }
        forwarded[USER_ID_HEADER] = key.userId;
        forwarded[ORGANIZATION_ID_HEADER] = key.organizationId;
        forwarded[PERMISSIONS_HEADER] = key.permissions.join(",");
        return forwarded as typeof headers;
      },
      onError: (errorReply, { error }) => {
        request.log.warn({ err: error }, "upstream request failed");
        sendError(errorReply as FastifyReply, request.url, 502, "Upstream unavailable");
      },
    });
  };
  app.all("/", proxy);
  app.all("/*", proxy);
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, request.url, 404, `Cannot ${request.method} ${request.url}`),
  );
  return app;
}
