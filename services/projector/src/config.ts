import { logLevelProblem } from "@keyledger/service-startup";
/** Projector configuration, parsed from an environment-shaped record. Only main.ts passes `process.env` here. */
export type ProjectorConfig = {
  databaseUrl: string;
  /** Fallback poll when no notification arrives (ms). */
  pollIntervalMs: number;
  sealBatchSize: number;
  rebuildBatchSize: number;
  logLevel: string;
  /** Where `/health/live` and `/health/ready` are served; port 0 picks a free one. */
  health: { port: number; host: string };
};

export class ProjectorConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = "ProjectorConfigError";
  }
}

function integer(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number) {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw)) throw new ProjectorConfigError(name, `must be an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) {
    throw new ProjectorConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** `LOG_LEVEL`: one of pino's levels. */
function logLevel(env: Record<string, string | undefined>): string {
  const level = env.LOG_LEVEL || "info";
  const problem = logLevelProblem(level);
  if (problem !== undefined) throw new ProjectorConfigError("LOG_LEVEL", problem);
  return level;
}

export function parseProjectorConfig(env: Record<string, string | undefined>): ProjectorConfig {
  const databaseUrl = env.DATABASE_URL;
  if (!databaseUrl) throw new ProjectorConfigError("DATABASE_URL", "is required");
  let parsed: URL;
  try {
    parsed = new URL(databaseUrl);
  } catch {
    throw new ProjectorConfigError("DATABASE_URL", "is not a valid URL");
  }
  // Not echoed (it carries a password). `localhost:5432` parses as the scheme "localhost:": refused here.
  if (!["postgres:", "postgresql:", "socket:"].includes(parsed.protocol)) {
    throw new ProjectorConfigError("DATABASE_URL", "must be a Postgres URL such as postgres://user:pass@host:5432/db");
  }
  return {
    databaseUrl,
    pollIntervalMs: integer(env, "PROJECTOR_POLL_INTERVAL_MS", 1000, 10, 600_000),
    sealBatchSize: integer(env, "PROJECTOR_SEAL_BATCH_SIZE", 1000, 1, 100_000),
    rebuildBatchSize: integer(env, "PROJECTOR_REBUILD_BATCH_SIZE", 5000, 1, 100_000),
    logLevel: logLevel(env),
    health: { port: integer(env, "PORT", 3002, 0, 65535), host: env.HOST || "0.0.0.0" },
  };
}
