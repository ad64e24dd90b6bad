/** Service configuration, parsed from an environment-shaped record. Only main.ts passes `process.env` here. */
export type ApiConfig = {
  port: number;
  host: string;
  databaseUrl: string;
  oidc: { issuer: string; jwksUrl: string; audience: string | undefined };
  internalApiToken: string | undefined;
  keyUsedThrottleMs: number;
  logLevel: string;
  bodyLimitBytes: number;
};

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

function url(env: Record<string, string | undefined>, name: string, required: boolean): string | undefined {
  const raw = env[name];
  if (raw === undefined || raw === "") {
    if (required) throw new ConfigError(name, "is required");
    return undefined;
  }
  try {
    new URL(raw);
  } catch {
    throw new ConfigError(name, `is not a valid URL`);
  }
  return raw;
}

export function parseApiConfig(env: Record<string, string | undefined>): ApiConfig {
  const databaseUrl = url(env, "DATABASE_URL", true) as string;
  const issuer = env.OIDC_ISSUER;
  if (!issuer) throw new ConfigError("OIDC_ISSUER", "is required");
  const jwksUrl = url(env, "OIDC_JWKS_URL", true) as string;
  const internalApiToken = env.INTERNAL_API_TOKEN || undefined;
  if (internalApiToken !== undefined && internalApiToken.length < 16) {
    throw new ConfigError("INTERNAL_API_TOKEN", "must be at least 16 characters");
  }
  return {
    port: integer(env, "PORT", 3000, 0, 65535),
    host: env.HOST || "0.0.0.0",
    databaseUrl,
    oidc: { issuer, jwksUrl, audience: env.OIDC_AUDIENCE || undefined },
    internalApiToken,
    keyUsedThrottleMs: integer(env, "KEY_USED_THROTTLE_MS", 10_000, 0, 86_400_000),
    logLevel: env.LOG_LEVEL || "info",
    bodyLimitBytes: integer(env, "BODY_LIMIT_BYTES", 16_384, 1024, 10_485_760),
  };
}
