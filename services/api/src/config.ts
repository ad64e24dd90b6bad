import { isIP } from "node:net";
import { invalidNatsServer, serverForLog } from "@keyledger/nats-bus";
import { logLevelProblem } from "@keyledger/service-startup";

/** Service configuration, parsed from an environment-shaped record. Only main.ts passes `process.env` here. */
export type ApiConfig = {
  port: number;
  host: string;
  /** Postgres; undefined: the embedded database (PGlite) in `dataDir`. */
  databaseUrl: string | undefined;
  /** The OIDC provider; undefined: the API is its own development issuer (refused when NODE_ENV=production). */
  oidc: { issuer: string; jwksUrl: string; audience: string | undefined } | undefined;
  /** Where the embedded database and the development issuer's key live. */
  dataDir: string;
  /**
   * The API's own base URL: the development issuer's `iss`. Default `http://localhost:$PORT`; undefined with PORT=0
   * (main.ts then takes a free port first and names it here).
   */
  publicUrl: string | undefined;
  internalApiToken: string | undefined;
  keyUsedThrottleMs: number;
  logLevel: string;
  bodyLimitBytes: number;
  /** Which proxies' `X-Forwarded-For` decides the client IP: none (false), all (true), a hop count, or addresses. */
  trustProxy: boolean | number | string;
  /**
   * NATS (`NATS_URL`, comma-separated servers): event publishing (relay + fast path), the API-key cache's
   * invalidations and gateways' key-use reports. Undefined: all off, and the API reads every key from the database.
   */
  nats:
    | {
        url: string;
        streamName: string;
        subjectPrefix: string;
        duplicateWindowMs: number;
        verifierCache: { maxEntries: number; ttlMs: number; relayHeartbeatTimeoutMs: number };
        /** Membership changes from the organizations service (durable consumer); null: not consumed. */
        membership: { subjectPrefix: string; streamName: string; durableName: string } | null;
      }
    | undefined;
  /** Daytona's rate limits; a limit of 0 turns one off. */
  rateLimits: {
    failedAuth: { limit: number; ttlSeconds: number } | null;
    authenticated: { limit: number; ttlSeconds: number } | null;
  };
  /** Run the projector (hash chain, rebuilds) inside the API process (`PROJECTOR_IN_API`, default true). */
  projectorInApi: boolean;
  /** Which browser origins may call the API (`CORS_ORIGINS`). */
  corsOrigins: CorsOrigins;
};

/** `"any"`: every origin (Daytona's `enableCors({ origin: true })`); `"none"`: no CORS headers; or exact origins. */
export type CorsOrigins = "any" | "none" | string[];

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = "ConfigError";
  }
}

function integer(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number) {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, `must be an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  return value;
}

const HTTP = { protocols: ["http:", "https:"], example: "an http(s) URL" };
/** Postgres connection strings as pg reads them (`socket:` for a Unix socket). */
const POSTGRES = {
  protocols: ["postgres:", "postgresql:", "socket:"],
  example: "a Postgres URL such as postgres://user:pass@host:5432/db",
};

/**
 * An optional URL of one of `kind.protocols`. The value is never echoed (DATABASE_URL carries a password); a URL of
 * another scheme (`localhost:5432` is the scheme "localhost:") is refused rather than read as something else.
 */
/**
 * `DATABASE_URL`: unset (undefined) or a Postgres URL; otherwise a `ConfigError` naming it, without its value. The
 * API's check, and the CLI's.
 */
export function parseDatabaseUrl(env: Record<string, string | undefined>): string | undefined {
  return url(env, "DATABASE_URL", POSTGRES);
}

function url(
  env: Record<string, string | undefined>,
  name: string,
  kind: { protocols: string[]; example: string },
): string | undefined {
  const raw = env[name];
  if (raw === undefined || raw === "") return undefined;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(name, `is not a valid URL`);
  }
  if (!kind.protocols.includes(parsed.protocol)) throw new ConfigError(name, `must be ${kind.example}`);
  return raw;
}

const PROXY_NAMES = new Set(["loopback", "linklocal", "uniquelocal"]);

/** `TRUST_PROXY`: unset/false, true, a number of hops, or comma-separated addresses, CIDRs or proxy-addr names. */
function trustProxy(raw: string | undefined): boolean | number | string {
  if (raw === undefined || raw === "" || raw === "false") return false;
  if (raw === "true") return true;
  if (/^\d+$/.test(raw)) {
    const hops = Number(raw);
    if (hops > 32) throw new ConfigError("TRUST_PROXY", `must be at most 32 hops, got ${hops}`);
    return hops === 0 ? false : hops;
  }
  const entries = raw.split(",").map((entry) => entry.trim());
  for (const entry of entries) {
    const [address = "", prefix] = entry.split("/");
    const family = isIP(address);
    const validPrefix =
      prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128));
    if (!(PROXY_NAMES.has(entry) || (family !== 0 && validPrefix))) {
      throw new ConfigError("TRUST_PROXY", `"${entry}" is not true, a hop count, an address, a CIDR or a proxy name`);
    }
  }
  return entries.join(",");
}

/** `CORS_ORIGINS`: unset or `*`: any origin; `none`; or comma-separated origins (`https://app.example.com`). */
function corsOrigins(raw: string | undefined): CorsOrigins {
  if (raw === undefined || raw.trim() === "" || raw.trim() === "*") return "any";
  if (raw.trim() === "none") return "none";
  return raw.split(",").map((entry) => {
    const origin = entry.trim();
    let parsed: URL | undefined;
    try {
      parsed = new URL(origin);
    } catch {
      parsed = undefined;
    }
    if (parsed === undefined || !/^https?:$/.test(parsed.protocol) || parsed.origin !== origin) {
      throw new ConfigError("CORS_ORIGINS", `"${origin}" is not an origin such as https://app.example.com`);
    }
    return origin;
  });
}

function rateLimit(env: Record<string, string | undefined>, name: string, limit: number, ttlSeconds: number) {
  const window = {
    limit: integer(env, `RATE_LIMIT_${name}_LIMIT`, limit, 0, 100_000_000),
    ttlSeconds: integer(env, `RATE_LIMIT_${name}_TTL`, ttlSeconds, 1, 86_400),
  };
  return window.limit === 0 ? null : window;
}

const NATS_TOKENS = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

function natsUrl(env: Record<string, string | undefined>): string | undefined {
  const raw = env.NATS_URL;
  if (raw === undefined || raw.trim() === "") return undefined;
  const invalid = invalidNatsServer(raw);
  if (invalid !== undefined) {
    throw new ConfigError("NATS_URL", `"${serverForLog(invalid)}" is not a NATS server URL (nats://host:port)`);
  }
  return raw;
}

function membershipConfig(env: Record<string, string | undefined>) {
  const subjectPrefix = env.MEMBERSHIP_SUBJECT_PREFIX ?? "organizations";
  if (subjectPrefix === "") return null;
  if (!NATS_TOKENS.test(subjectPrefix)) {
    throw new ConfigError("MEMBERSHIP_SUBJECT_PREFIX", "must be dot-separated tokens of letters, digits, _ and -");
  }
  const streamName = env.MEMBERSHIP_STREAM || "ORGANIZATIONS";
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(streamName)) {
    throw new ConfigError("MEMBERSHIP_STREAM", "must be 1-64 characters of letters, digits, _ and -");
  }
  const durableName = env.MEMBERSHIP_CONSUMER || "keyledger-membership";
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(durableName)) {
    throw new ConfigError("MEMBERSHIP_CONSUMER", "must be 1-64 characters of letters, digits, _ and -");
  }
  return { subjectPrefix, streamName, durableName };
}

function natsConfig(env: Record<string, string | undefined>): ApiConfig["nats"] {
  const url = natsUrl(env);
  // Every NATS setting is checked even without NATS_URL: a bad value is refused now, not when NATS is turned on.
  const streamName = env.NATS_STREAM || "KEYLEDGER";
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(streamName)) {
    throw new ConfigError("NATS_STREAM", "must be 1-64 characters of letters, digits, _ and -");
  }
  const subjectPrefix = env.NATS_SUBJECT_PREFIX || "keyledger";
  if (!NATS_TOKENS.test(subjectPrefix)) {
    throw new ConfigError("NATS_SUBJECT_PREFIX", "must be dot-separated tokens of letters, digits, _ and -");
  }
  const settings = {
    streamName,
    subjectPrefix,
    duplicateWindowMs: integer(env, "NATS_DUPLICATE_WINDOW_MS", 120_000, 1_000, 86_400_000),
    membership: membershipConfig(env),
    verifierCache: {
      maxEntries: integer(env, "VERIFIER_CACHE_MAX_ENTRIES", 100_000, 1, 10_000_000),
      ttlMs: integer(env, "VERIFIER_CACHE_TTL_MS", 60_000, 1, 86_400_000),
      relayHeartbeatTimeoutMs: integer(env, "VERIFIER_HEARTBEAT_TIMEOUT_MS", 2_000, 600, 600_000),
    },
  };
  return url === undefined ? undefined : { url, ...settings };
}

export function parseApiConfig(env: Record<string, string | undefined>): ApiConfig {
  const databaseUrl = parseDatabaseUrl(env);
  const issuer = env.OIDC_ISSUER || undefined;
  const jwksUrl = url(env, "OIDC_JWKS_URL", HTTP);
  if (issuer === undefined && jwksUrl !== undefined) {
    throw new ConfigError("OIDC_ISSUER", "is required with OIDC_JWKS_URL");
  }
  if (issuer !== undefined && jwksUrl === undefined) {
    throw new ConfigError("OIDC_JWKS_URL", "is required with OIDC_ISSUER");
  }
  if (issuer === undefined && env.OIDC_AUDIENCE) {
    // The development issuer checks its own audience: an OIDC_AUDIENCE here would be ignored.
    throw new ConfigError("OIDC_AUDIENCE", "applies only with OIDC_ISSUER and OIDC_JWKS_URL, which are unset");
  }
  if (issuer === undefined && env.NODE_ENV === "production") {
    throw new ConfigError("OIDC_ISSUER", "is required when NODE_ENV=production (the development issuer is refused)");
  }
  const port = integer(env, "PORT", 3000, 0, 65535);
  const internalApiToken = env.INTERNAL_API_TOKEN || undefined;
  if (internalApiToken !== undefined && internalApiToken.length < 16) {
    throw new ConfigError("INTERNAL_API_TOKEN", "must be at least 16 characters");
  }
  return {
    port,
    host: env.HOST || "0.0.0.0",
    databaseUrl,
    oidc:
      issuer !== undefined && jwksUrl !== undefined
        ? { issuer, jwksUrl, audience: env.OIDC_AUDIENCE || undefined }
        : undefined,
    dataDir: env.KEYLEDGER_DATA_DIR || ".keyledger",
    // PORT=0: the port is known once bound (main.ts).
    publicUrl: url(env, "PUBLIC_URL", HTTP) ?? (port === 0 ? undefined : `http://localhost:${port}`),
    internalApiToken,
    keyUsedThrottleMs: integer(env, "KEY_USED_THROTTLE_MS", 10_000, 0, 86_400_000),
    logLevel: logLevel(env),
    bodyLimitBytes: integer(env, "BODY_LIMIT_BYTES", 16_384, 1024, 10_485_760),
    trustProxy: trustProxy(env.TRUST_PROXY),
    nats: natsConfig(env),
    rateLimits: {
      failedAuth: rateLimit(env, "FAILED_AUTH", 20, 60),
      authenticated: rateLimit(env, "AUTHENTICATED", 1000, 60),
    },
    projectorInApi: flag(env, "PROJECTOR_IN_API", true),
    corsOrigins: corsOrigins(env.CORS_ORIGINS),
  };
}

/** `LOG_LEVEL`: one of pino's levels. */
function logLevel(env: Record<string, string | undefined>): string {
  const level = env.LOG_LEVEL || "info";
  const problem = logLevelProblem(level);
  if (problem !== undefined) throw new ConfigError("LOG_LEVEL", problem);
  return level;
}

function flag(env: Record<string, string | undefined>, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (raw === "true" || raw === "1") return true;
  if (raw === "false" || raw === "0") return false;
  throw new ConfigError(name, `must be true or false, got "${raw}"`);
}
