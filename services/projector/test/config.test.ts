import { describe, expect, it } from "vitest";
import { ProjectorConfigError, parseProjectorConfig } from "../src/config";

describe("projector configuration", () => {
  it("needs DATABASE_URL and has defaults for the rest", () => {
    expect(() => parseProjectorConfig({})).toThrow(ProjectorConfigError);
    expect(() => parseProjectorConfig({ DATABASE_URL: "not a url" })).toThrow(/DATABASE_URL: is not a valid URL/);
    expect(parseProjectorConfig({ DATABASE_URL: "postgres://db/keyledger" })).toEqual({
      databaseUrl: "postgres://db/keyledger",
      pollIntervalMs: 1000,
      sealBatchSize: 1000,
      rebuildBatchSize: 5000,
      logLevel: "info",
      health: { port: 3002, host: "0.0.0.0" },
    });
  });

  it("refuses batch sizes and intervals out of range, naming the variable", () => {
    const base = { DATABASE_URL: "postgres://db/keyledger" };
    expect(() => parseProjectorConfig({ ...base, PROJECTOR_REBUILD_BATCH_SIZE: "0" })).toThrow(
      /PROJECTOR_REBUILD_BATCH_SIZE: must be between 1 and 100000/,
    );
    expect(() => parseProjectorConfig({ ...base, PROJECTOR_SEAL_BATCH_SIZE: "ten" })).toThrow(
      /PROJECTOR_SEAL_BATCH_SIZE: must be an integer/,
    );
    expect(parseProjectorConfig({ ...base, PROJECTOR_POLL_INTERVAL_MS: "250" }).pollIntervalMs).toBe(250);
  });
});

describe("projector configuration: DATABASE_URL", () => {
  it("must be a Postgres URL (localhost:5432 parses as the scheme 'localhost:'), and is never echoed", () => {
    expect(() => parseProjectorConfig({ DATABASE_URL: "localhost:5432" })).toThrow(
      /^DATABASE_URL: must be a Postgres URL such as postgres:\/\/user:pass@host:5432\/db$/,
    );
    expect(parseProjectorConfig({ DATABASE_URL: "postgresql://u:p@db/keyledger" }).databaseUrl).toBe(
      "postgresql://u:p@db/keyledger",
    );
  });
});
