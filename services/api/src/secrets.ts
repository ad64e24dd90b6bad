import type { FastifyRequest, FastifyServerOptions } from "fastify";
import { stdSerializers } from "pino";

/**
 * What counts as a secret wherever it shows up (a URL, an error message): API-key values, whole or in part, and
 * JWTs. Key-shaped text is redacted even when it is not a valid key or only its start (JSON.parse quotes the first
 * characters of a bad body): a fragment of a key is still part of a key.
 */
const SECRET = /dtn_[0-9a-fA-F]{4,}|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?/g;

export function redactSecrets(text: string): string {
  return text.replace(SECRET, "[redacted]");
}

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
