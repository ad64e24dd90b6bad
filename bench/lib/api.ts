import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestIssuer, type TestIssuer } from "../../test/support/oidc-issuer";
import type { NatsNames } from "./nats";
import { type ChildService, freePort, spawnTs, waitForHttp } from "./processes";

export const INTERNAL_TOKEN = "bench-internal-token-0123456789";

export { startTestIssuer, type TestIssuer };

export type ApiProcess = {
  service: ChildService;
  baseUrl: string;
  port: number;
  stop(): Promise<void>;
};

export type ApiProcessOptions = {
  name?: string;
  databaseUrl: string;
  issuer: TestIssuer;
  /** NATS (relay, fast path, the in-process verifier's cache), on its own stream and subjects; omitted: off. */
  nats?: NatsNames & { url: string };
  env?: Record<string, string>;
  nodeFlags?: string[];
};

/**
 * The real API entry point (`services/api/src/main.ts`) in its own process, configured through the environment as
 * in production, except: logging at `warn` (no line per request; the hello-world baseline logs nothing either) and
 * Daytona's rate limits raised out of the load's reach (they stay on, so their per-request cost is measured).
 */
export async function startApiProcess(options: ApiProcessOptions): Promise<ApiProcess> {
  const port = await freePort();
  const service = spawnTs({
    name: options.name ?? "api",
    script: "services/api/src/main.ts",
    nodeFlags: options.nodeFlags,
    env: {
      NODE_ENV: "production",
      PORT: String(port),
      HOST: "127.0.0.1",
      DATABASE_URL: options.databaseUrl,
      OIDC_ISSUER: options.issuer.issuer,
      OIDC_JWKS_URL: options.issuer.jwksUrl,
      OIDC_AUDIENCE: options.issuer.audience,
      INTERNAL_API_TOKEN: INTERNAL_TOKEN,
      LOG_LEVEL: "warn",
      // Daytona's limiters stay on (their per-request cost is part of the figure) with limits the load never reaches.
      RATE_LIMIT_FAILED_AUTH_LIMIT: "100000000",
      RATE_LIMIT_AUTHENTICATED_LIMIT: "100000000",
      KEYLEDGER_DATA_DIR: mkdtempSync(join(tmpdir(), "keyledger-bench-")),
      NATS_URL: options.nats?.url ?? "",
      NATS_STREAM: options.nats?.streamName ?? "",
      NATS_SUBJECT_PREFIX: options.nats?.subjectPrefix ?? "",
      // No membership consumer: it would create (and keep) the server's shared ORGANIZATIONS stream.
      MEMBERSHIP_SUBJECT_PREFIX: "",
      ...options.env,
    },
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    // With NATS, ready once the API-key cache is subscribed (only then does it cache).
    await waitForHttp(service, `${baseUrl}/health/ready`, {
      timeoutMs: 60_000,
      until: (body) => {
        const nats = (body as { checks?: { nats?: string } }).checks?.nats;
        return options.nats === undefined || nats === undefined || nats === "subscribed";
      },
    });
  } catch (error) {
    await service.stop(1000);
    throw error;
  }
  return { service, baseUrl, port, stop: () => service.stop() };
}

/** A client of the API as the organizations service and Daytona's dashboard would use it. */
export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly issuer: TestIssuer,
  ) {}

  async setMember(
    organizationId: string,
    userId: string,
    role: "owner" | "member",
    permissions: string[] = [],
  ): Promise<void> {
    const res = await fetch(
      `${this.baseUrl}/internal/organizations/${encodeURIComponent(organizationId)}/members/${encodeURIComponent(userId)}`,
      {
        method: "PUT",
        headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ role, permissions }),
      },
    );
    if (res.status !== 204) throw new Error(`set member: ${res.status} ${await res.text()}`);
  }

  /** Headers of a dashboard user: a JWT valid for the whole run and the organization header. */
  async jwtHeaders(userId: string, organizationId: string): Promise<Record<string, string>> {
    return {
      authorization: `Bearer ${await this.issuer.token({ sub: userId }, { expiresIn: "4h" })}`,
      "x-daytona-organization-id": organizationId,
    };
  }

  /** Creates a key and returns its value. */
  async createKey(headers: Record<string, string>, name: string, permissions: string[] = []): Promise<string> {
    const res = await fetch(`${this.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body: JSON.stringify({ name, permissions }),
    });
    const body = (await res.json()) as { value?: string };
    if (res.status !== 201 || !body.value) throw new Error(`create key: ${res.status} ${JSON.stringify(body)}`);
    return body.value;
  }

  async revokeKey(headers: Record<string, string>, name: string): Promise<void> {
    const res = await fetch(`${this.baseUrl}/api/api-keys/${encodeURIComponent(name)}`, { method: "DELETE", headers });
    if (res.status !== 204) throw new Error(`revoke key: ${res.status} ${await res.text()}`);
  }
}
