import { execFile } from "node:child_process";
import type { AddressInfo } from "node:net";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildApp, createPostgresDatabase, loadDevIssuer } from "@keyledger/api";
import type { FastifyInstance } from "fastify";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { startTestIssuer, type TestIssuer } from "../support/oidc-issuer";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const TSX = `${ROOT}node_modules/.bin/tsx`;

type CliResult = { code: number; stdout: string; stderr: string };

async function keyledger(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(TSX, ["services/cli/src/main.ts", ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** A port nothing listens on (taken, then released). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: "127.0.0.1" });
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
}

describe("pnpm keyledger dev-token", () => {
  let db: Kysely<unknown>;
  let devApp: FastifyInstance;
  let devUrl: string;
  let oidcApp: FastifyInstance;
  let oidcUrl: string;
  let issuer: TestIssuer;

  beforeAll(async () => {
    db = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 4 });
    const devIssuer = await loadDevIssuer({ issuer: "http://localhost:3000", keyFile: undefined });
    const common = { db, internalApiToken: undefined, keyUsedThrottleMs: 0, bodyLimitBytes: 16_384, logger: false };
    devApp = await buildApp({ ...common, devIssuer });
    devUrl = await listen(devApp);
    issuer = await startTestIssuer();
    oidcApp = await buildApp({
      ...common,
      oidc: { issuer: issuer.issuer, jwksUrl: issuer.jwksUrl, audience: issuer.audience },
    });
    oidcUrl = await listen(oidcApp);
  });
  afterAll(async () => {
    await devApp?.close();
    await oidcApp?.close();
    await issuer?.close();
    await db?.destroy();
  });

  it("records the membership through the running API and prints only the token on stdout", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const result = await keyledger(
      ["dev-token", "--user", user, "--org", org, "--role", "member", "--permissions", "write:sandboxes"],
      { KEYLEDGER_API_URL: devUrl },
    );
    expect(result.code, result.stderr).toBe(0);
    const token = result.stdout.trim();
    expect(token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(result.stderr).toContain(`${user} is member of ${org}`);

    const headers = { authorization: `Bearer ${token}`, "x-daytona-organization-id": org };
    const create = (permissions: string[]) =>
      fetch(`${devUrl}/api/api-keys`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ name: uniqueId("key"), permissions }),
      });
    expect((await create(["write:sandboxes"])).status).toBe(201);
    expect((await create(["delete:sandboxes"])).status).toBe(403);
  });

  it("refuses in one line when no API answers", async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const result = await keyledger(["dev-token", "--user", "u", "--org", "o", "--role", "owner", "--api-url", url]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toContain(`no keyledger API answers at ${url}`);
  });

  it("refuses in one line when the API has a real identity provider", async () => {
    const result = await keyledger(["dev-token", "--user", "u", "--org", "o", "--role", "owner", "--api-url", oidcUrl]);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toContain("has no development issuer");
  });

  it("rejects bad options with a usage error and asks nothing", async () => {
    const org = uniqueId("org");
    const result = await keyledger(["dev-token", "--user", "u", "--org", org, "--role", "admin"], {
      KEYLEDGER_API_URL: devUrl,
    });
    expect(result.code).toBe(2);
    expect(result.stderr.trim()).toBe('keyledger dev-token: --role must be one of owner, member, got "admin"');
  });
});
