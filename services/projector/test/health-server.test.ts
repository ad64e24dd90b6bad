import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { afterAll, describe, expect, inject, it } from "vitest";
import { startHealthServer } from "../src/health-server";

function database(url: string): Kysely<unknown> {
  return new Kysely({
    dialect: new PostgresDialect({
      pool: new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 2_000 }),
    }),
  });
}

describe("the projector's health endpoints", () => {
  const reachable = database(inject("databaseUrl"));
  // Nothing listens on port 1: the database is unreachable.
  const unreachable = database("postgres://postgres@127.0.0.1:1/keyledger");
  afterAll(async () => {
    await reachable.destroy();
    await unreachable.destroy();
  });

  it("is live, and ready when the database answers and every migration is applied", async () => {
    const health = await startHealthServer(reachable, { port: 0, host: "127.0.0.1" });
    try {
      const base = `http://127.0.0.1:${health.port}`;
      expect((await fetch(`${base}/health/live`)).status).toBe(200);
      const ready = await fetch(`${base}/health/ready`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ status: "ok", checks: { database: "ok", migrations: "ok" } });
      const other = await fetch(`${base}/anything`);
      expect(other.status).toBe(404);
      expect(Object.keys((await other.json()) as object).sort()).toEqual([
        "error",
        "message",
        "path",
        "statusCode",
        "timestamp",
      ]);
    } finally {
      await health.close();
    }
  });

  it("is live but not ready while the database is unreachable", async () => {
    const health = await startHealthServer(unreachable, { port: 0, host: "127.0.0.1" });
    try {
      const base = `http://127.0.0.1:${health.port}`;
      expect((await fetch(`${base}/health/live`)).status).toBe(200);
      const ready = await fetch(`${base}/health/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toEqual({ status: "unavailable", checks: { database: "unreachable" } });
    } finally {
      await health.close();
    }
  });
});
