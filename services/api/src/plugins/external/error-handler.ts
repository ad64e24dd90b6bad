import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { isDatabaseUnavailable } from "../../database-errors";
import { ApiError, errorBody } from "../../http-errors";

export type ErrorHandlerOptions = {
  /** Called on every 401 (failed authentication); an error it throws (the failed-auth 429) replaces the 401. */
  onUnauthorized?: (request: FastifyRequest, reply: FastifyReply) => Promise<void>;
};

function statusOf(error: FastifyError): number {
  const status = error.statusCode;
  if (status !== undefined && status >= 400 && status < 600) return status;
  // Postgres unreachable or too slow (connect timeout, statement timeout, lost connection): retryable.
  return isDatabaseUnavailable(error) ? 503 : 500;
}

/**
 * Errors fastify raises before routing (a URL that does not decode, a path parameter over the length limit):
 * pass as the `frameworkErrors` server option so they too answer with Daytona's body.
 */
export function frameworkErrorHandler(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const status =
    error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 400;
  const message = error.code === "FST_ERR_MAX_PARAM_LENGTH" ? "Path parameter too long" : "Malformed URL";
  reply.code(status).send(errorBody(request.url.split("?")[0]?.slice(0, 256) ?? "", status, message));
}

/**
 * Requests node's HTTP parser rejects (bad framing, conflicting Content-Length, oversized headers): pass as the
 * `clientErrorHandler` server option. Answers with Daytona's body, then closes the connection.
 */
export function clientErrorHandler(error: Error & { code?: string }, socket: Socket) {
  if (error.code === "ECONNRESET" || socket.destroyed) return;
  const status = error.code === "HPE_HEADER_OVERFLOW" ? 431 : error.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
  const body = JSON.stringify(
    errorBody("", status, status === 400 ? "Malformed HTTP request" : (STATUS_CODES[status] ?? "")),
  );
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

type ValidationError = NonNullable<FastifyError["validation"]>[number] & {
  parentSchema?: { "x-error-message"?: unknown };
};

/**
 * A schema validation failure in class-validator's style, as Daytona words them: the field, then what it must be.
 * A schema's own `x-error-message` wins (a pattern is no message: `limit must match pattern "^[0-9]{1,4}$"` told the
 * caller nothing); an unknown member is named (`property page should not exist`); a pattern without one says so.
 */
export function validationMessage(v: ValidationError, context: string | undefined): string {
  const field = v.instancePath.replace(/^\//, "").replaceAll("/", ".") || context || "value";
  const own = v.parentSchema?.["x-error-message"];
  if (typeof own === "string") return `${field} ${own}`;
  if (v.keyword === "additionalProperties") {
    return `property ${String(v.params.additionalProperty)} should not exist`;
  }
  if (v.keyword === "pattern") return `${field} has a format that is not allowed`;
  return `${field} ${v.message}`;
}

/** Every 4xx/5xx, including fastify's own (bad JSON, body too large, 404), answers with Daytona's error body. */
export default fp(
  async (app: FastifyInstance, options: ErrorHandlerOptions) => {
    app.setErrorHandler(async (thrown: FastifyError, request, reply) => {
      let error = thrown;
      if (options.onUnauthorized && error.statusCode === 401) {
        await options.onUnauthorized(request, reply).catch((replacement: FastifyError) => {
          error = replacement;
        });
      }
      const status = error instanceof ApiError ? error.statusCode : statusOf(error);
      if (error instanceof ApiError) reply.headers(error.headers);
      if (status >= 500) {
        request.log.error({ err: error }, "request failed");
        const message = status === 503 ? "Service temporarily unavailable" : "Internal server error";
        return reply.code(status).send(errorBody(request.url, status, message));
      }
      let message = error.message;
      if (error.validation) {
        message = error.validation.map((v) => validationMessage(v, error.validationContext)).join(", ");
      }
      return reply.code(status).send(errorBody(request.url, status, message));
    });
    app.setNotFoundHandler((request, reply) => {
      reply.code(404).send(errorBody(request.url, 404, `Cannot ${request.method} ${request.url.split("?")[0]}`));
    });
  },
  { name: "error-handler" },
);
