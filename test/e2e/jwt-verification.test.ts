import { createHmac, generateKeyPairSync, sign } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { eventsOfOrganization } from "../support/database";
import { apiKeysClient, expectClientError } from "../support/daytona-client";

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

describe("JWT verification against the issuer's JWKS", () => {
  let api: RunningApi;
  let org: string;
  let user: string;
  beforeAll(async () => {
    api = await startApi();
    org = uniqueId("org");
    user = uniqueId("user");
    await api.setMember(org, user, "owner");
  });
  afterAll(async () => {
    await api.close();
  });

  const list = (token: string) => apiKeysClient(api.baseUrl, token).listApiKeys(org);

  it("accepts RS256 and ES256 tokens of the issuer", async () => {
    for (const alg of ["RS256", "ES256"] as const) {
      const response = await list(await api.issuer.token({ sub: user }, { alg }));
      expect(response.status, alg).toBe(200);
    }
    const created = await apiKeysClient(
      api.baseUrl,
      await api.issuer.token({ sub: user }, { alg: "ES256" }),
    ).createApiKey({ name: "es256", permissions: [] }, org);
    expect(created.status).toBe(201);
  });

  it.each([
    ["another issuer", { issuer: "https://evil.example/" }],
    ["another audience", { audience: "someone-else" }],
    ["a key the JWKS does not publish", { foreignKey: true }],
    ["an expired token", { expiresIn: Math.floor(Date.now() / 1000) - 120 }],
  ])("rejects %s with 401 'Invalid credentials'", async (_, options) => {
    const before = (await eventsOfOrganization(api.db, org)).length;
    await expectClientError(list(await api.issuer.token({ sub: user }, options)), 401, "Invalid credentials");
    const create = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: user }, options)).createApiKey(
      { name: uniqueId("k"), permissions: [] },
      org,
    );
    await expectClientError(create, 401, "Invalid credentials");
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
  });

  it("rejects a token once it expires, although it was accepted (and remembered as verified) before", async () => {
    const exp = Math.floor(Date.now() / 1000) + 2;
    const token = await api.issuer.token({ sub: user }, { expiresIn: exp });
    expect((await list(token)).status).toBe(200);
    expect((await list(token)).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, exp * 1000 - Date.now() + 100));
    await expectClientError(list(token), 401, "Invalid credentials");
  });

  it("rejects a token without sub, or with an empty sub", async () => {
    await expectClientError(list(await api.issuer.token({})), 401, "Invalid credentials");
    await expectClientError(list(await api.issuer.token({ sub: "" })), 401, "Invalid credentials");
  });

  it("rejects a token that is not yet valid", async () => {
    const token = await api.issuer.token({ sub: user, nbf: Math.floor(Date.now() / 1000) + 3600 });
    await expectClientError(list(token), 401, "Invalid credentials");
  });

  it("rejects an unsigned token (alg none) and a tampered payload", async () => {
    const none = `${b64url({ alg: "none", typ: "JWT" })}.${b64url({ sub: user, iss: api.issuer.issuer, aud: api.issuer.audience, exp: Math.floor(Date.now() / 1000) + 600 })}.`;
    await expectClientError(list(none), 401, "Invalid credentials");
    const noneWithSignature = `${none}c2lnbmF0dXJl`;
    await expectClientError(list(noneWithSignature), 401, "Invalid credentials");

    const good = await api.issuer.token({ sub: uniqueId("someone") });
    const [header, , signature] = good.split(".");
    const forged = `${header}.${b64url({ sub: user, iss: api.issuer.issuer, aud: api.issuer.audience, exp: Math.floor(Date.now() / 1000) + 600 })}.${signature}`;
    await expectClientError(list(forged), 401, "Invalid credentials");
  });

  it("rejects an HS256 token, even one keyed with something public", async () => {
    const header = b64url({ alg: "HS256", typ: "JWT", kid: "rsa-1" });
    const payload = b64url({
      sub: user,
      iss: api.issuer.issuer,
      aud: api.issuer.audience,
      exp: Math.floor(Date.now() / 1000) + 600,
    });
    const signature = createHmac("sha256", "secret").update(`${header}.${payload}`).digest("base64url");
    await expectClientError(list(`${header}.${payload}.${signature}`), 401, "Invalid credentials");
  });

  it("rejects an RS256 token signed by a key with the issuer's kid but not in its JWKS", async () => {
    const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const header = b64url({ alg: "RS256", typ: "JWT", kid: "rsa-1" });
    const payload = b64url({
      sub: user,
      iss: api.issuer.issuer,
      aud: api.issuer.audience,
      exp: Math.floor(Date.now() / 1000) + 600,
    });
    const signature = sign("sha256", Buffer.from(`${header}.${payload}`), privateKey).toString("base64url");
    await expectClientError(list(`${header}.${payload}.${signature}`), 401, "Invalid credentials");
  });

  it("a valid token of a user who is not a member of the organization → 403", async () => {
    const token = await api.issuer.token({ sub: uniqueId("stranger") });
    await expectClientError(list(token), 403, "Invalid authentication context");
  });
});
