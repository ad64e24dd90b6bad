import { pendingMigrations } from "@keyledger/event-store";
import type { FastifyInstance } from "fastify";
import { type Kysely, sql } from "kysely";
import { ApiError } from "../../http-errors";

export type HealthOptions = {
  db: Kysely<unknown>;
  /** With NATS configured: whether the API-key cache is subscribed to invalidations (informational only). */
  natsSubscription?: () => "subscribed" | "disconnected";
};

/**
 * Liveness (the process answers) and readiness (database reachable, every migration applied). NATS does not decide
 * readiness: commands work without it, and the API-key cache is bypassed while it is away.
 */
export default async function healthRoutes(app: FastifyInstance, { db, natsSubscription }: HealthOptions) {
  app.get("/health/live", { schema: { hide: true } }, async () => ({ status: "ok" }));

  app.get("/health/ready", { schema: { hide: true } }, async () => {
    try {
      await sql`SELECT 1`.execute(db);
    } catch {
      throw new ApiError(503, "Database unreachable");
    }
    const pending = await pendingMigrations(db);
    if (pending.length > 0) throw new ApiError(503, `Migrations not applied: ${pending.join(", ")}`);
    const nats = natsSubscription ? { nats: natsSubscription() } : {};
    return { status: "ok", checks: { database: "ok", migrations: "ok", ...nats } };
  });
}
