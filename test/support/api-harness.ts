import type { AddressInfo } from "node:net";
import { type AppOptions, buildApp, createPostgresDatabase, type OnCommitted } from "@keyledger/api";
import type { FastifyInstance } from "fastify";
import type { Kysely } from "kysely";
import { inject } from "vitest";
import { startTestIssuer, type TestIssuer } from "./oidc-issuer";

export const INTERNAL_TOKEN = "internal-test-token-0123456789";

export type RunningApi = {
  app: FastifyInstance;
  db: Kysely<unknown>;
  baseUrl: string;
  issuer: TestIssuer;
  /** Records membership through the internal route, as the organizations service would. */
  setMember(organizationId: string, userId: string, role: "owner" | "member", permissions?: string[]): Promise<void>;
  removeMember(organizationId: string, userId: string): Promise<void>;
  /** A JWT for `userId`, with the headers a Daytona client sends for `organizationId`. */
  jwtHeaders(userId: string, organizationId: string): Promise<Record<string, string>>;
  close(): Promise<void>;
};

/** Starts the API on a free port against the run's test database, with a test OIDC issuer. */
export async function startApi(
  options: {
    keyUsedThrottleMs?: number;
    onCommitted?: OnCommitted;
    logger?: unknown;
    rateLimits?: AppOptions["rateLimits"];
    trustProxy?: AppOptions["trustProxy"];
    /** NATS (publishing, relay, verifier cache); see test/support/nats.ts for a unique stream. */
    nats?: AppOptions["nats"];
    /** Another way to the run's database (e.g. through a fault-injecting proxy). */
    databaseUrl?: string;
    /** Pool settings for fault tests (defaults: 10 connections, the service's timeouts). */
    database?: { maxConnections?: number; statementTimeoutMs?: number };
    /** LISTEN/NOTIFY source (wakes audit event streams). */
    notifications?: AppOptions["notifications"];
    corsOrigins?: AppOptions["corsOrigins"];
  } = {},
): Promise<RunningApi> {
  const issuer = await startTestIssuer();
  const db = createPostgresDatabase({
    connectionString: options.databaseUrl ?? inject("databaseUrl"),
    maxConnections: options.database?.maxConnections ?? 10,
    statementTimeoutMs: options.database?.statementTimeoutMs,
  });
  const app = await buildApp({
    db,
    oidc: { issuer: issuer.issuer, jwksUrl: issuer.jwksUrl, audience: issuer.audience },
    internalApiToken: INTERNAL_TOKEN,
    keyUsedThrottleMs: options.keyUsedThrottleMs ?? 10_000,
    bodyLimitBytes: 16_384,
    logger: (options.logger as never) ?? false,
    onCommitted: options.onCommitted,
    rateLimits: options.rateLimits,
    trustProxy: options.trustProxy,
    nats: options.nats,
    notifications: options.notifications,
    corsOrigins: options.corsOrigins,
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as AddressInfo;
  const baseUrl = `http://127.0.0.1:${port}`;
  const internal = (method: string, organizationId: string, userId: string, body?: unknown) =>
    fetch(
      `${baseUrl}/internal/organizations/${encodeURIComponent(organizationId)}/members/${encodeURIComponent(userId)}`,
      {
        method,
        headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, ...(body ? { "content-type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      },
    ).then(async (res) => {
      if (res.status !== 204) throw new Error(`membership ${method} failed: ${res.status} ${await res.text()}`);
    });
  return {
    app,
    db,
    baseUrl,
    issuer,
    setMember: (organizationId, userId, role, permissions = []) =>
      internal("PUT", organizationId, userId, { role, permissions }),
    removeMember: (organizationId, userId) => internal("DELETE", organizationId, userId),
    async jwtHeaders(userId, organizationId) {
      return {
        authorization: `Bearer ${await issuer.token({ sub: userId })}`,
        "x-daytona-organization-id": organizationId,
      };
    },
    async close() {
      await app.close();
      await db.destroy();
      await issuer.close();
    },
  };
}

let counter = 0;
/** A unique id for this test run, so tests share one database without seeing each other's data. */
export function uniqueId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${counter}`;
}
