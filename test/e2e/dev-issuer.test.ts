import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildApp, createPostgresDatabase, loadDevIssuer, openEmbeddedDatabase, parseApiConfig } from "@keyledger/api";
import { runMigrations } from "@keyledger/event-store";
import type { FastifyInstance } from "fastify";
import { generateKeyPair, SignJWT } from "jose";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { startTestIssuer } from "../support/oidc-issuer";

const baseConfig = { PORT: "3000" };

describe("configuration without OIDC or DATABASE_URL", () => {
  it("means the embedded database and the development issuer", () => {
    const config = parseApiConfig(baseConfig);
    expect(config.databaseUrl).toBeUndefined();
    expect(config.oidc).toBeUndefined();
    expect(config.dataDir).toBe(".keyledger");
    expect(config.publicUrl).toBe("http://localhost:3000");
  });

  it("refuses the development issuer when NODE_ENV=production", () => {
    expect(() => parseApiConfig({ ...baseConfig, NODE_ENV: "production" })).toThrow(/OIDC_ISSUER.*production/);
    expect(
      parseApiConfig({
        ...baseConfig,
        NODE_ENV: "production",
        OIDC_ISSUER: "https://id.example.com/",
        OIDC_JWKS_URL: "https://id.example.com/jwks",
      }).oidc?.issuer,
    ).toBe("https://id.example.com/");
  });

  it("refuses half an OIDC configuration", () => {
    expect(() => parseApiConfig({ OIDC_ISSUER: "https://id.example.com/" })).toThrow(/OIDC_JWKS_URL/);
    expect(() => parseApiConfig({ OIDC_JWKS_URL: "https://id.example.com/jwks" })).toThrow(/OIDC_ISSUER/);
  });
});

describe("development issuer on the embedded database (the README walkthrough)", () => {
  let dataDir: string;
  let db: Kysely<unknown>;
  let app: FastifyInstance;
  let baseUrl: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "keyledger-dev-issuer-"));
    db = await openEmbeddedDatabase({ dataDir: undefined });
    await runMigrations(db);
    const devIssuer = await loadDevIssuer({ issuer: "http://localhost:3000", keyFile: join(dataDir, "key.json") });
    app = await buildApp({
      db,
      devIssuer,
      internalApiToken: undefined,
      keyUsedThrottleMs: 0,
      bodyLimitBytes: 16_384,
      logger: false,
    });
    await app.listen({ port: 0, host: "127.0.0.1" });
    baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await app?.close();
    await db?.destroy();
    await rm(dataDir, { recursive: true, force: true });
  });

  const devToken = async (body: Record<string, unknown>) =>
    fetch(`${baseUrl}/dev/tokens`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });

  it("publishes its key and discovery document", async () => {
    const jwks = (await (await fetch(`${baseUrl}/.well-known/jwks.json`)).json()) as { keys: Record<string, string>[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: "EC", crv: "P-256", alg: "ES256", use: "sig" });
    expect(jwks.keys[0]).not.toHaveProperty("d");
    const discovery = (await (await fetch(`${baseUrl}/.well-known/openid-configuration`)).json()) as object;
    expect(discovery).toMatchObject({
      issuer: "http://localhost:3000",
      jwks_uri: "http://localhost:3000/.well-known/jwks.json",
    });
  });

  it("keeps its private key in the data directory, readable by the owner only, and reuses it", async () => {
    const keyFile = join(dataDir, "key.json");
    expect((await stat(keyFile)).mode & 0o077).toBe(0);
    const again = await loadDevIssuer({ issuer: "http://localhost:3000", keyFile });
    const served = (await (await fetch(`${baseUrl}/.well-known/jwks.json`)).json()) as object;
    expect(again.jwks).toEqual(served);
    expect(JSON.parse(await readFile(keyFile, "utf8"))).toHaveProperty("d");
  });

  it("refuses ids that cannot be stored (NUL, half a surrogate pair) with 400", async () => {
    for (const body of [
      { userId: "x\u0000y", organizationId: "org", role: "owner" },
      { userId: "user", organizationId: "o\u0000rg", role: "owner" },
      { userId: "x\ud800", organizationId: "org", role: "owner" },
    ]) {
      const refused = await devToken(body);
      expect(refused.status).toBe(400);
      expect(Object.keys((await refused.json()) as object).sort()).toEqual([
        "error",
        "message",
        "path",
        "statusCode",
        "timestamp",
      ]);
    }
  });

  it("records the membership and signs a token that creates, lists, uses and deletes a key", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const issued = await devToken({ userId: user, organizationId: org, role: "owner" });
    expect(issued.status).toBe(200);
    const { token, expiresAt } = (await issued.json()) as { token: string; expiresAt: string };
    expect(new Date(expiresAt).getTime()).toBeGreaterThan(Date.now());
    const headers = {
      authorization: `Bearer ${token}`,
      "x-daytona-organization-id": org,
      "content-type": "application/json",
    };

    const created = await fetch(`${baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "laptop", permissions: ["write:sandboxes"] }),
    });
    expect(created.status).toBe(201);
    const { value } = (await created.json()) as { value: string };

    const list = (await (await fetch(`${baseUrl}/api/api-keys`, { headers })).json()) as { name: string }[];
    expect(list.map((k) => k.name)).toEqual(["laptop"]);

    const current = await fetch(`${baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
    expect(current.status).toBe(200);
    expect(await current.json()).toMatchObject({ name: "laptop", userId: user, organizationId: org });

    expect((await fetch(`${baseUrl}/api/api-keys/laptop`, { method: "DELETE", headers })).status).toBe(204);
    const after = await fetch(`${baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
    expect(after.status).toBe(401);
  });

  it("gives a member only the permissions it was issued with", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const issued = await devToken({
      userId: user,
      organizationId: org,
      role: "member",
      permissions: ["read:volumes"],
    });
    const { token } = (await issued.json()) as { token: string };
    const headers = { authorization: `Bearer ${token}`, "x-daytona-organization-id": org };
    const create = (permissions: string[]) =>
      fetch(`${baseUrl}/api/api-keys`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ name: uniqueId("key"), permissions }),
      });
    expect((await create(["read:volumes"])).status).toBe(201);
    expect((await create(["write:sandboxes"])).status).toBe(403);
  });

  it("rejects a token signed by another key, or for an organization the user is not in", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await devToken({ userId: user, organizationId: org, role: "owner" });
    const { privateKey } = await generateKeyPair("ES256");
    const kid = (await loadDevIssuer({ issuer: "http://localhost:3000", keyFile: join(dataDir, "key.json") })).jwks
      .keys[0]?.kid as string;
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: "ES256", kid })
      .setIssuer("http://localhost:3000")
      .setAudience("keyledger-dev")
      .setSubject(user)
      .setIssuedAt()
      .setExpirationTime("10m")
      .sign(privateKey);
    const withForged = await fetch(`${baseUrl}/api/api-keys`, {
      headers: { authorization: `Bearer ${forged}`, "x-daytona-organization-id": org },
    });
    expect(withForged.status).toBe(401);

    const { token } = (await (await devToken({ userId: user, organizationId: org, role: "owner" })).json()) as {
      token: string;
    };
    const otherOrg = await fetch(`${baseUrl}/api/api-keys`, {
      headers: { authorization: `Bearer ${token}`, "x-daytona-organization-id": uniqueId("org") },
    });
    expect(otherOrg.status).toBe(403);
  });

  it("answers only clients on this machine", async () => {
    const response = await app.inject({
      method: "POST",
      url: "/dev/tokens",
      remoteAddress: "203.0.113.7",
      payload: { userId: uniqueId("user"), organizationId: uniqueId("org"), role: "owner" },
    });
    expect(response.statusCode).toBe(403);
    expect(response.json()).toMatchObject({ statusCode: 403, error: "Forbidden" });
    expect(response.body).not.toContain("eyJ");
  });

  it("validates the request and changes nothing on bad input", async () => {
    const org = uniqueId("org");
    const bad = await devToken({ userId: "u", organizationId: org, role: "admin" });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ statusCode: 400, error: "Bad Request" });
    const unknownPermission = await devToken({ userId: "u", organizationId: org, role: "member", permissions: ["x"] });
    expect(unknownPermission.status).toBe(400);
  });
});

describe("with an OIDC provider configured", () => {
  it("has no development routes", async () => {
    const issuer = await startTestIssuer();
    const db = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
    const app = await buildApp({
      db,
      oidc: { issuer: issuer.issuer, jwksUrl: issuer.jwksUrl, audience: issuer.audience },
      internalApiToken: undefined,
      keyUsedThrottleMs: 0,
      bodyLimitBytes: 16_384,
      logger: false,
    });
    try {
      for (const [method, url] of [
        ["POST", "/dev/tokens"],
        ["GET", "/.well-known/jwks.json"],
        ["GET", "/.well-known/openid-configuration"],
      ] as const) {
        const response = await app.inject({ method, url, payload: method === "POST" ? {} : undefined });
        expect(response.statusCode, url).toBe(404);
      }
    } finally {
      await app.close();
      await db.destroy();
      await issuer.close();
    }
  });
});
