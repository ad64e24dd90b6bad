import type { FastifyError, FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { ApiError, errorBody } from "../../http-errors";

function statusOf(error: FastifyError): number {
  const status = error.statusCode ?? 500;
  return status >= 400 && status < 600 ? status : 500;
}

/** Every 4xx/5xx, including fastify's own (bad JSON, body too large, 404), answers with Daytona's error body. */
export default fp(
  async (app: FastifyInstance) => {
    app.setErrorHandler((error: FastifyError, request, reply) => {
      const status = error instanceof ApiError ? error.statusCode : statusOf(error);
      if (error instanceof ApiError) reply.headers(error.headers);
      if (status >= 500) {
        request.log.error({ err: error }, "request failed");
        const message = status === 503 ? "Service temporarily unavailable" : "Internal server error";
        return reply.code(status).send(errorBody(request.url, status, message));
      }
      let message = error.message;
      if (error.validation) {
        message = error.validation
          .map(
            (v) => `${v.instancePath.replace(/^\//, "").replaceAll("/", ".") || error.validationContext} ${v.message}`,
          )
          .join(", ");
      }
      return reply.code(status).send(errorBody(request.url, status, message));
    });
    app.setNotFoundHandler((request, reply) => {
      reply.code(404).send(errorBody(request.url, 404, `Cannot ${request.method} ${request.url.split("?")[0]}`));
    });
  },
  { name: "error-handler" },
);
