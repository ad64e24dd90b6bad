/** pino's levels: what `LOG_LEVEL` may be in every service. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/**
 * What is wrong with a `LOG_LEVEL` value, or undefined when it is one of pino's levels (pino itself throws an error
 * naming no variable at the first logger).
 */
export function logLevelProblem(level: string): string | undefined {
  return (LOG_LEVELS as readonly string[]).includes(level)
    ? undefined
    : `must be one of ${LOG_LEVELS.join(", ")}, got "${level}"`;
}
