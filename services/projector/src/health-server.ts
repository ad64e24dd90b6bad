import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { pendingMigrations } from "@keyledger/event-store";
import { type Kysely, sql } from "kysely";

/** What `/health/ready` reports: the database answers and every migration is applied. */
export async function projectorReadiness(db: Kysely<unknown>): Promise<{ ready: boolean; body: object }> {
  try {
    await sql`SELECT 1`.execute(db);
  } catch {
    return { ready: false, body: { status: "unavailable", checks: { database: "unreachable" } } };
  }
  const pending = await pendingMigrations(db);
  if (pending.length > 0) {
    return { ready: false, body: { status: "unavailable", checks: { database: "ok", migrations: pending } } };
  }
  return { ready: true, body: { status: "ok", checks: { database: "ok", migrations: "ok" } } };
}

/**
 * The projector's only HTTP surface: `GET /health/live` (the process answers) and `GET /health/ready` (database
 * reachable, migrations applied), for orchestrators. Anything else is 404 in Daytona's error body.
 */
export async function startHealthServer(
  db: Kysely<unknown>,
  listen: { port: number; host: string },
): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    const send = (statusCode: number, body: object) => {
      response.writeHead(statusCode, { "content-type": "application/json; charset=utf-8" });
      response.end(JSON.stringify(body));
    };
    if (request.method === "GET" && path === "/health/live") return send(200, { status: "ok" });
    if (request.method === "GET" && path === "/health/ready") {
      projectorReadiness(db).then(
        ({ ready, body }) => send(ready ? 200 : 503, body),
        () => send(503, { status: "unavailable" }),
      );
      return;
    }
    send(404, {
      path,
      timestamp: new Date().toISOString(),
      statusCode: 404,
      error: "Not Found",
      message: `Cannot ${request.method} ${path}`,
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
