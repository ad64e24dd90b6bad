import { redactSecrets } from "@keyledger/domain";
import type { FastifyRequest, FastifyServerOptions } from "fastify";
import { stdSerializers } from "pino";

/** Fastify's request log fields, with secrets taken out of the URL (a key pasted into a path or a query). */
function requestSerializer(request: FastifyRequest) {
  return {
    method: request.method,
    url: redactSecrets(request.url),
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort,
  };
}

function errorSerializer(error: Error) {
  const serialized = stdSerializers.err(error);
  serialized.message = redactSecrets(serialized.message);
  if (serialized.stack) serialized.stack = redactSecrets(serialized.stack);
  return serialized;
}

type LoggerOption = FastifyServerOptions["logger"];

/**
 * The caller's logger options plus serializers that keep secrets out of request URLs and error messages; pino's
 * `redact` paths (LOG_REDACTIONS) cover the structured fields. `false` stays off.
 */
export function withSecretSafeSerializers(logger: LoggerOption): LoggerOption {
  if (!logger) return logger;
  const options = logger === true ? {} : logger;
  return { ...options, serializers: { ...options.serializers, req: requestSerializer, err: errorSerializer } };
}
