import { invalidNatsServer, serverForLog } from "@keyledger/nats-bus";
import { logLevelProblem } from "@keyledger/service-startup";

/** Gateway configuration, parsed from an environment-shaped record. Only main.ts passes `process.env` here. */
export type GatewayConfig = {
  port: number;
  host: string;
  /** `proxy` (default): forward good requests upstream. `forward-auth`: answer 200 + identity headers or 401. */
  mode: "proxy" | "forward-auth";
  /** Where authenticated requests go (proxy mode only). */
  upstreamUrl: string | undefined;
  /** Upstream connections kept open, and requests pipelined on each (1: none). */
  upstreamConnections: number;
  upstreamPipelining: number;
  /** Longest wait for upstream's answer headers, and between two reads of its body. */
  upstreamTimeoutMs: number;
  /** Whether the client's `Authorization` (its API key) is forwarded upstream too (`UPSTREAM_AUTHORIZATION`). */
  forwardAuthorization: boolean;
  /** The keyledger API, asked on cache misses (`GET /api/api-keys/current`). */
  apiUrl: string;
  /** Without NATS nothing is cached: every request is checked with the API. */
  natsUrl: string | undefined;
  subjectPrefix: string;
  cache: { maxEntries: number; ttlMs: number; negativeTtlMs: number; relayHeartbeatTimeoutMs: number };
  /** How often verified key uses are reported to the API (0: not reported). */
  keyUseReportIntervalMs: number;
  lookupTimeoutMs: number;
  logLevel: string;
};

export class GatewayConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = "GatewayConfigError";
  }
}

type Env = Record<string, string | undefined>;

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw)) throw new GatewayConfigError(name, `must be an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) {
    throw new GatewayConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** A URL as it may be shown: user and password (a credential) replaced. */
function withoutCredentials(url: URL): string {
  if (url.username === "" && url.password === "") return url.href;
  const shown = new URL(url.href);
  shown.username = "redacted";
  shown.password = "";
  return shown.href;
}

function httpUrl(env: Env, name: string): string {
  const raw = env[name];
  if (raw === undefined || raw === "") throw new GatewayConfigError(name, "is required");
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new GatewayConfigError(name, "is not a valid URL");
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new GatewayConfigError(name, "must be an http(s) URL");
  }
  // Only the origin is used (the request's own path goes upstream; the API is asked at /api/…): a path, query or
  // fragment would be dropped without a word.
  if (parsed.pathname !== "/" || parsed.search !== "" || parsed.hash !== "") {
    throw new GatewayConfigError(
      name,
      `must be an origin such as http://host:port (no path or query), got "${withoutCredentials(parsed)}"`,
    );
  }
  return raw;
}

/** `LOG_LEVEL`: one of pino's levels. */
function logLevel(env: Env): string {
  const level = env.LOG_LEVEL || "info";
  const problem = logLevelProblem(level);
  if (problem !== undefined) throw new GatewayConfigError("LOG_LEVEL", problem);
  return level;
}

/** `NATS_URL`: unset, or comma-separated NATS servers (as the API's). */
function natsUrl(env: Env): string | undefined {
  const raw = env.NATS_URL;
  if (raw === undefined || raw.trim() === "") return undefined;
  const invalid = invalidNatsServer(raw);
  if (invalid !== undefined) {
    throw new GatewayConfigError("NATS_URL", `"${serverForLog(invalid)}" is not a NATS server URL (nats://host:port)`);
  }
  return raw;
}

export function parseGatewayConfig(env: Env): GatewayConfig {
  const subjectPrefix = env.NATS_SUBJECT_PREFIX || "keyledger";
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(subjectPrefix)) {
    throw new GatewayConfigError("NATS_SUBJECT_PREFIX", "must be dot-separated tokens of letters, digits, _ and -");
  }
  const ttlMs = integer(env, "VERIFIER_CACHE_TTL_MS", 60_000, 1, 86_400_000);
  const mode = env.GATEWAY_MODE || "proxy";
  if (mode !== "proxy" && mode !== "forward-auth") {
    throw new GatewayConfigError("GATEWAY_MODE", `must be "proxy" or "forward-auth", got "${mode}"`);
  }
  if (mode === "forward-auth" && env.UPSTREAM_URL) {
    throw new GatewayConfigError(
      "UPSTREAM_URL",
      "must be unset with GATEWAY_MODE=forward-auth, which forwards nothing (proxy mode forwards to UPSTREAM_URL)",
    );
  }
  const upstreamAuthorization = env.UPSTREAM_AUTHORIZATION || "strip";
  if (upstreamAuthorization !== "strip" && upstreamAuthorization !== "forward") {
    throw new GatewayConfigError(
      "UPSTREAM_AUTHORIZATION",
      `must be "strip" or "forward", got "${upstreamAuthorization}"`,
    );
  }
  if (mode === "forward-auth" && env.UPSTREAM_AUTHORIZATION) {
    throw new GatewayConfigError(
      "UPSTREAM_AUTHORIZATION",
      "must be unset with GATEWAY_MODE=forward-auth, which forwards nothing (the proxy in front decides)",
    );
  }
  return {
    port: integer(env, "PORT", 8080, 0, 65535),
    host: env.HOST || "0.0.0.0",
    mode,
    upstreamUrl: mode === "proxy" ? httpUrl(env, "UPSTREAM_URL") : undefined,
    upstreamConnections: integer(env, "UPSTREAM_CONNECTIONS", 128, 1, 65_536),
    upstreamPipelining: integer(env, "UPSTREAM_PIPELINING", 1, 1, 100),
    upstreamTimeoutMs: integer(env, "UPSTREAM_TIMEOUT_MS", 60_000, 100, 3_600_000),
    forwardAuthorization: upstreamAuthorization === "forward",
    apiUrl: httpUrl(env, "API_URL"),
    natsUrl: natsUrl(env),
    subjectPrefix,
    cache: {
      maxEntries: integer(env, "VERIFIER_CACHE_MAX_ENTRIES", 100_000, 1, 10_000_000),
      ttlMs,
      negativeTtlMs: integer(env, "VERIFIER_CACHE_NEGATIVE_TTL_MS", Math.min(2_000, ttlMs), 0, ttlMs),
      relayHeartbeatTimeoutMs: integer(env, "VERIFIER_HEARTBEAT_TIMEOUT_MS", 2_000, 600, 600_000),
    },
    keyUseReportIntervalMs: integer(env, "KEY_USE_REPORT_INTERVAL_MS", 1_000, 0, 3_600_000),
    lookupTimeoutMs: integer(env, "API_LOOKUP_TIMEOUT_MS", 5_000, 100, 60_000),
    logLevel: logLevel(env),
  };
}
