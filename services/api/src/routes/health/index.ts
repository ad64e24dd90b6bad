import { pendingMigrations } from "@keyledger/event-store";
import type { FastifyInstance } from "fastify";
import { type Kysely, sql } from "kysely";
import { ApiError } from "../../http-errors";

/** Liveness (the process answers) and readiness (database reachable, every migration applied). */
export default async function healthRoutes(app: FastifyInstance, { db }: { db: Kysely<unknown> }) {
  app.get("/health/live", { schema: { hide: true } }, async () => ({ status: "ok" }));

  app.get("/health/ready", { schema: { hide: true } }, async () => {
    try {
      await sql`SELECT 1`.execute(db);
    } catch {
      throw new ApiError(503, "Database unreachable");
    }
    const pending = await pendingMigrations(db);
    if (pending.length > 0) throw new ApiError(503, `Migrations not applied: ${pending.join(", ")}`);
    return { status: "ok", checks: { database: "ok", migrations: "ok" } };
  });
}
