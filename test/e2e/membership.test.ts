import { buildApp, createPostgresDatabase } from "@keyledger/api";
import { keyStreamId, memberStreamId, type Permission } from "@keyledger/domain";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { INTERNAL_TOKEN, type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { eventsOfOrganization } from "../support/database";
import {
  type ApiKeyListJson,
  type ApiKeyResponseJson,
  apiKeysClient,
  asJson,
  expectClientError,
  expectFetchError,
} from "../support/daytona-client";

describe("membership changes through the internal routes", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function createKeys(org: string, user: string, keys: Record<string, Permission[]>) {
    const client = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: user }));
    const values: Record<string, string> = {};
    for (const [name, permissions] of Object.entries(keys)) {
      values[name] = asJson<ApiKeyResponseJson>((await client.createApiKey({ name, permissions }, org)).data).value;
    }
    return values;
  }

  /** Names of the user's live keys, as the owner's list shows them. */
  async function liveKeyNames(org: string, owner: string, user: string): Promise<string[]> {
    const client = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: owner }));
    const items = asJson<ApiKeyListJson[]>((await client.listApiKeys(org)).data);
    return items
      .filter((k) => k.userId === user)
      .map((k) => k.name)
      .sort();
  }

  async function keyWorks(value: string): Promise<boolean> {
    const res = await fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });
    if (res.status === 200) return true;
    await expectFetchError(res, 401, "Invalid credentials");
    return false;
  }

  async function revocations(org: string, user: string) {
    const events = await eventsOfOrganization(api.db, org);
    return Object.fromEntries(
      events
        .filter((e) => e.event_type === "KeyRevoked" && (e.data as { userId: string }).userId === user)
        .map((e) => [(e.data as { name: string }).name, (e.data as { reason: string }).reason]),
    );
  }

  it("a downgrade revokes (permissions_unassigned) exactly the member's keys holding a lost permission", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("owner");
    const member = uniqueId("member");
    const bystander = uniqueId("member");
    await api.setMember(org, owner, "owner");
    await api.setMember(org, member, "member", ["write:sandboxes", "delete:sandboxes", "read:volumes"]);
    await api.setMember(org, bystander, "member", ["delete:sandboxes"]);
    const values = await createKeys(org, member, {
      sandboxes: ["write:sandboxes"],
      deleter: ["delete:sandboxes"],
      mixed: ["read:volumes", "delete:sandboxes"],
      volumes: ["read:volumes", "write:sandboxes"],
      empty: [],
    });
    const bystanderKeys = await createKeys(org, bystander, { theirs: ["delete:sandboxes"] });
    const otherOrg = uniqueId("org");
    await api.setMember(otherOrg, member, "member", ["delete:sandboxes"]);
    const elsewhere = await createKeys(otherOrg, member, { elsewhere: ["delete:sandboxes"] });

    await api.setMember(org, member, "member", ["write:sandboxes", "read:volumes"]);

    expect(await liveKeyNames(org, owner, member)).toEqual(["empty", "sandboxes", "volumes"]);
    expect(await revocations(org, member)).toEqual({
      deleter: "permissions_unassigned",
      mixed: "permissions_unassigned",
    });
    for (const name of ["sandboxes", "volumes", "empty"])
      expect(await keyWorks(values[name] as string), name).toBe(true);
    for (const name of ["deleter", "mixed"]) expect(await keyWorks(values[name] as string), name).toBe(false);
    expect(await keyWorks(bystanderKeys.theirs as string)).toBe(true);
    expect(await keyWorks(elsewhere.elsewhere as string)).toBe(true);

    // The access change and the revocations are one transaction.
    const events = await eventsOfOrganization(api.db, org);
    const change = events.filter((e) => e.stream_id === memberStreamId(org, member)).at(-1);
    expect(change?.event_type).toBe("MemberAccessChanged");
    const revoked = events.filter(
      (e) => e.event_type === "KeyRevoked" && (e.data as { userId: string }).userId === member,
    );
    expect(revoked.map((e) => e.transaction_id)).toEqual([change?.transaction_id, change?.transaction_id]);
    expect(revoked[0]?.metadata).toMatchObject({ authMethod: "internal", actorUserId: null, organizationId: org });

    // The member's new access applies to new keys too.
    const client = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: member }));
    await expectClientError(
      client.createApiKey({ name: "again", permissions: ["delete:sandboxes"] }, org),
      403,
      "Insufficient permissions for assigning: delete:sandboxes",
    );
  });

  it("repeating the same access writes nothing and revokes nothing", async () => {
    const org = uniqueId("org");
    const member = uniqueId("member");
    await api.setMember(org, member, "member", ["read:volumes", "write:sandboxes"]);
    await createKeys(org, member, { k: ["read:volumes"] });
    const before = (await eventsOfOrganization(api.db, org)).length;
    await api.setMember(org, member, "member", ["write:sandboxes", "read:volumes"]);
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
  });

  it("removing a member revokes all their keys there (member_removed) and their JWT no longer works there", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("owner");
    const member = uniqueId("member");
    const other = uniqueId("member");
    await api.setMember(org, owner, "owner");
    await api.setMember(org, member, "member", ["read:volumes"]);
    await api.setMember(org, other, "member", ["read:volumes"]);
    const values = await createKeys(org, member, { a: ["read:volumes"], b: [] });
    const otherValues = await createKeys(org, other, { c: ["read:volumes"] });
    const otherOrg = uniqueId("org");
    await api.setMember(otherOrg, member, "owner");
    const elsewhere = await createKeys(otherOrg, member, { d: [] });

    await api.removeMember(org, member);

    expect(await revocations(org, member)).toEqual({ a: "member_removed", b: "member_removed" });
    expect(await keyWorks(values.a as string)).toBe(false);
    expect(await keyWorks(values.b as string)).toBe(false);
    expect(await keyWorks(otherValues.c as string)).toBe(true);
    expect(await keyWorks(elsewhere.d as string)).toBe(true);
    expect(await liveKeyNames(org, owner, member)).toEqual([]);
    const client = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: member }));
    await expectClientError(client.listApiKeys(org), 403, "Invalid authentication context");
    expect((await client.listApiKeys(otherOrg)).status).toBe(200);

    // Removing again is a no-op; re-adding does not bring keys back. (The uses just above append their KeyUsed
    // asynchronously, in the key-use batch after them, so only the events a removal could write are counted.)
    const removalEvents = async () =>
      (await eventsOfOrganization(api.db, org)).filter((e) => e.event_type !== "KeyUsed").length;
    const before = await removalEvents();
    await api.removeMember(org, member);
    expect(await removalEvents()).toBe(before);
    await api.setMember(org, member, "member", ["read:volumes"]);
    expect(await keyWorks(values.a as string)).toBe(false);
    expect(await liveKeyNames(org, owner, member)).toEqual([]);
  });

  it("an owner demoted to member keeps only the keys within the new permissions", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("owner");
    const founder = uniqueId("founder");
    await api.setMember(org, owner, "owner");
    await api.setMember(org, founder, "owner");
    const values = await createKeys(org, founder, {
      within: ["read:volumes"],
      none: [],
      outside: ["delete:runners"],
      partly: ["read:volumes", "write:regions"],
    });

    // Owner to owner with other permissions: owners keep everything.
    await api.setMember(org, founder, "owner", ["read:runners"]);
    expect(await liveKeyNames(org, owner, founder)).toEqual(["none", "outside", "partly", "within"]);

    await api.setMember(org, founder, "member", ["read:volumes"]);
    expect(await liveKeyNames(org, owner, founder)).toEqual(["none", "within"]);
    expect(await revocations(org, founder)).toEqual({
      outside: "permissions_unassigned",
      partly: "permissions_unassigned",
    });
    expect(await keyWorks(values.within as string)).toBe(true);
    expect(await keyWorks(values.none as string)).toBe(true);
    expect(await keyWorks(values.outside as string)).toBe(false);
    expect(await keyWorks(values.partly as string)).toBe(false);

    // Now a member: sees only their own keys.
    const client = apiKeysClient(api.baseUrl, await api.issuer.token({ sub: founder }));
    const own = asJson<ApiKeyListJson[]>((await client.listApiKeys(org)).data);
    expect(own.every((k) => k.userId === founder)).toBe(true);

    // Promotion back to owner revokes nothing and restores no revoked key.
    await api.setMember(org, founder, "owner");
    expect(await liveKeyNames(org, owner, founder)).toEqual(["none", "within"]);
  });

  it("a member promoted to owner keeps all keys and may then grant anything", async () => {
    const org = uniqueId("org");
    const member = uniqueId("member");
    await api.setMember(org, member, "member", ["read:volumes"]);
    const values = await createKeys(org, member, { k: ["read:volumes"] });
    await api.setMember(org, member, "owner");
    expect(await keyWorks(values.k as string)).toBe(true);
    await createKeys(org, member, { admin: ["delete:runners", "read:audit_logs"] });
  });

  it("a revoked key keeps its name free for a new key with the new access", async () => {
    const org = uniqueId("org");
    const member = uniqueId("member");
    await api.setMember(org, member, "member", ["read:volumes", "write:volumes"]);
    await createKeys(org, member, { k: ["write:volumes"] });
    await api.setMember(org, member, "member", ["read:volumes"]);
    await createKeys(org, member, { k: ["read:volumes"] });
    const events = (await eventsOfOrganization(api.db, org)).filter(
      (e) => e.stream_id === keyStreamId(org, member, "k"),
    );
    expect(events.map((e) => e.event_type)).toEqual(["KeyCreated", "KeyRevoked", "KeyCreated"]);
  });
});

describe("internal route authentication and validation", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  const memberUrl = (org: string, user: string) => `${api.baseUrl}/internal/organizations/${org}/members/${user}`;
  const body = JSON.stringify({ role: "owner", permissions: [] });

  it("a wrong or missing internal token → 401 on PUT and DELETE, and nothing is written", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "member");
    const before = (await eventsOfOrganization(api.db, org)).length;
    const ownerToken = await api.issuer.token({ sub: user });
    for (const authorization of [
      undefined,
      "Bearer wrong-token-0123456789",
      `Bearer ${INTERNAL_TOKEN}x`,
      `Bearer ${INTERNAL_TOKEN.slice(0, -1)}`,
      `Basic ${INTERNAL_TOKEN}`,
      INTERNAL_TOKEN,
      `Bearer ${ownerToken}`,
    ]) {
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (authorization) headers.authorization = authorization;
      await expectFetchError(fetch(memberUrl(org, user), { method: "PUT", headers, body }), 401, "Invalid credentials");
      await expectFetchError(fetch(memberUrl(org, user), { method: "DELETE", headers }), 401, "Invalid credentials");
    }
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
    // Still a member, not promoted.
    const client = apiKeysClient(api.baseUrl, ownerToken);
    await expectClientError(
      client.createApiKey({ name: "k", permissions: ["read:volumes"] }, org),
      403,
      "Insufficient permissions for assigning: read:volumes",
    );
  });

  it("an invalid body → 400 with the error body, nothing written", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const headers = { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" };
    for (const invalid of [
      {},
      { role: "admin", permissions: [] },
      { role: "member" },
      { role: "member", permissions: ["nope"] },
      { role: "member", permissions: "read:volumes" },
    ]) {
      await expectFetchError(
        fetch(memberUrl(org, user), { method: "PUT", headers, body: JSON.stringify(invalid) }),
        400,
      );
    }
    expect(await eventsOfOrganization(api.db, org)).toEqual([]);
  });

  it("an id that cannot be stored (NUL, a control character, half a surrogate pair, over 255) → 400, nothing written", async () => {
    const org = uniqueId("org");
    const headers = { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" };
    for (const user of ["z%00ed", "tab%09bed", "del%7F", "%ED%A0%80", "x".repeat(256)]) {
      await expectFetchError(fetch(memberUrl(org, user), { method: "PUT", headers, body }), 400);
      await expectFetchError(fetch(memberUrl(org, user), { method: "DELETE", headers }), 400);
    }
    await expectFetchError(fetch(memberUrl("o%00rg", "user"), { method: "PUT", headers, body }), 400);
    expect(await eventsOfOrganization(api.db, org)).toEqual([]);
    // Any other text is an id: emoji, spaces, non-Latin scripts.
    const ok = await fetch(memberUrl(org, encodeURIComponent("u 😀 ユーザー")), { method: "PUT", headers, body });
    expect(ok.status).toBe(204);
  });

  it("a JWT whose subject cannot be an id → 401, like a JWT with no subject", async () => {
    const org = uniqueId("org");
    for (const sub of ["nul\u0000byte", "lone\ud800", "x".repeat(256)]) {
      const token = await api.issuer.token({ sub });
      await expectFetchError(
        fetch(`${api.baseUrl}/api/api-keys`, {
          headers: { authorization: `Bearer ${token}`, "x-daytona-organization-id": org },
        }),
        401,
        "Invalid credentials",
      );
    }
  });

  it("the internal routes are not in the public OpenAPI document", async () => {
    const doc = (await (await fetch(`${api.baseUrl}/api/docs-json`)).json()) as { paths: Record<string, unknown> };
    expect(Object.keys(doc.paths).some((p) => p.includes("internal"))).toBe(false);
  });
});

describe("without INTERNAL_API_TOKEN", () => {
  it("the internal routes do not exist", async () => {
    const db = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 1 });
    const app = await buildApp({
      db,
      oidc: { issuer: "http://127.0.0.1:1/", jwksUrl: "http://127.0.0.1:1/jwks", audience: undefined },
      internalApiToken: undefined,
      keyUsedThrottleMs: 10_000,
      bodyLimitBytes: 16_384,
      logger: false,
    });
    try {
      const res = await app.inject({
        method: "PUT",
        url: "/internal/organizations/o/members/u",
        headers: { authorization: "Bearer anything-at-all-here", "content-type": "application/json" },
        payload: { role: "owner", permissions: [] },
      });
      expect(res.statusCode).toBe(404);
    } finally {
      await app.close();
      await db.destroy();
    }
  });
});
