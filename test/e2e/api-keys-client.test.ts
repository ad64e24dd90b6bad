import { setTimeout as sleep } from "node:timers/promises";
import { crc32, isWellFormedKey, keyStreamId, PERMISSIONS } from "@keyledger/domain";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { connectTestDatabase, eventsContaining, eventsOfOrganization } from "../support/database";
import {
  type ApiKeyListJson,
  type ApiKeyResponseJson,
  apiKeysClient,
  asJson,
  expectClientError,
  type Transcript,
} from "../support/daytona-client";

type Permission = (typeof PERMISSIONS)[number];

/** The official client for every operation of one user in one organization. */
async function clientFor(api: RunningApi, userId: string, transcript?: Transcript) {
  return apiKeysClient(api.baseUrl, await api.issuer.token({ sub: userId }), transcript);
}

/** Polls `check` until it returns a value other than undefined (things recorded after the response). */
async function eventually<T>(check: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe("the six operations through @daytonaio/api-client", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi({ keyUsedThrottleMs: 600_000 });
  });
  afterAll(async () => {
    await api.close();
  });

  it("create, list, current, get, delete, and the value never comes back", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const transcript: Transcript = [];
    const client = await clientFor(api, user, transcript);

    const before = Date.now();
    const expiresAt = new Date(Date.now() + 3_600_000);
    const created = await client.createApiKey(
      { name: "deploy", permissions: ["write:sandboxes", "read:volumes"], expiresAt },
      org,
    );
    expect(created.status).toBe(201);
    const key = asJson<ApiKeyResponseJson>(created.data);
    expect(Object.keys(key).sort()).toEqual(["createdAt", "expiresAt", "name", "permissions", "value"]);
    expect(key.name).toBe("deploy");
    expect(key.value).toMatch(/^dtn_[0-9a-f]{64}$/);
    expect(isWellFormedKey(key.value)).toBe(true);
    expect(key.permissions).toEqual(["write:sandboxes", "read:volumes"]);
    expect(key.expiresAt).toBe(expiresAt.toISOString());
    expect(key.createdAt).toMatch(ISO);
    expect(Date.parse(key.createdAt)).toBeGreaterThanOrEqual(before - 1000);
    const masked = `dtn${"*".repeat(20)}${key.value.slice(-3)}`;
    const createdIndex = transcript.length;

    const expectedItem = {
      name: "deploy",
      value: masked,
      createdAt: key.createdAt,
      permissions: ["write:sandboxes", "read:volumes"],
      expiresAt: key.expiresAt,
      userId: user,
      organizationId: org,
    };

    const list = await client.listApiKeys(org);
    expect(list.status).toBe(200);
    const items = asJson<ApiKeyListJson[]>(list.data);
    expect(items).toHaveLength(1);
    expect(items[0]).toEqual({ ...expectedItem, lastUsedAt: null });

    const got = await client.getApiKey("deploy", org);
    expect(got.status).toBe(200);
    expect(asJson<ApiKeyListJson>(got.data)).toEqual({ ...expectedItem, lastUsedAt: null });

    // /current with the key itself; the organization header is ignored for API keys.
    const keyClient = apiKeysClient(api.baseUrl, key.value, transcript);
    const current = await keyClient.getCurrentApiKey();
    expect(current.status).toBe(200);
    expect(asJson<ApiKeyListJson>(current.data)).toMatchObject(expectedItem);
    const currentWithOtherOrg = await keyClient.getCurrentApiKey(uniqueId("other-org"));
    expect(asJson<ApiKeyListJson>(currentWithOtherOrg.data)).toMatchObject({ organizationId: org, name: "deploy" });

    const deleted = await client.deleteApiKey("deploy", org);
    expect(deleted.status).toBe(204);
    await expectClientError(client.getApiKey("deploy", org), 404, "API key not found", "/api/api-keys/deploy");
    await expectClientError(keyClient.getCurrentApiKey(), 401, "Invalid credentials");
    expect(asJson<ApiKeyListJson[]>((await client.listApiKeys(org)).data)).toEqual([]);

    // The value was in the 201 only: in no later response, and never in the log.
    expect(transcript[createdIndex - 1]).toContain(key.value);
    expect(transcript.length - createdIndex).toBeGreaterThanOrEqual(8);
    for (const body of transcript.slice(createdIndex)) expect(body).not.toContain(key.value);
    for (const body of transcript.slice(createdIndex)) expect(body).not.toContain(key.value.slice(4, 60));
    expect(await eventsContaining(api.db, key.value)).toEqual([]);
    expect(await eventsContaining(api.db, key.value.slice(4, 60))).toEqual([]);

    const events = await eventsOfOrganization(api.db, org);
    const keyEvents = events.filter((e) => e.stream_id === keyStreamId(org, user, "deploy"));
    // KeyUsed is recorded off the request path: it may land before the revoke, or not at all once revoked.
    const decisive = keyEvents.filter((e) => e.event_type !== "KeyUsed");
    expect(decisive.map((e) => e.event_type)).toEqual(["KeyCreated", "KeyRevoked"]);
    expect(keyEvents.filter((e) => e.event_type === "KeyUsed").length).toBeLessThanOrEqual(1);
    expect(keyEvents.map((e) => e.stream_version)).toEqual(keyEvents.map((_, i) => i + 1));
    expect(decisive[0]?.metadata).toMatchObject({ actorUserId: user, organizationId: org, authMethod: "jwt" });
    expect(decisive[1]?.data).toMatchObject({ reason: "deleted", name: "deploy" });
  });

  it("a key without expiresAt (omitted or null) has expiresAt null; the name can be reused after delete", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const client = await clientFor(api, user);
    const first = asJson<ApiKeyResponseJson>((await client.createApiKey({ name: "k", permissions: [] }, org)).data);
    expect(first.expiresAt).toBeNull();
    expect(first.permissions).toEqual([]);
    await client.deleteApiKey("k", org);
    const second = asJson<ApiKeyResponseJson>(
      (await client.createApiKey({ name: "k", permissions: ["read:runners"], expiresAt: null }, org)).data,
    );
    expect(second.expiresAt).toBeNull();
    expect(second.value).not.toBe(first.value);
    const items = asJson<ApiKeyListJson[]>((await client.listApiKeys(org)).data);
    expect(items.map((i) => [i.name, i.permissions])).toEqual([["k", ["read:runners"]]]);
  });

  it("an owner may grant every permission", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const client = await clientFor(api, user);
    const created = await client.createApiKey({ name: "all", permissions: [...PERMISSIONS] as Permission[] }, org);
    expect(asJson<ApiKeyResponseJson>(created.data).permissions).toEqual([...PERMISSIONS]);
  });

  it("names with spaces, slashes, unicode and reserved URL characters round-trip through the path", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const client = await clientFor(api, user);
    for (const name of ["deploy key (prod)", "a/b", "ünïcødé ключ", "100% #1?&x=y", "dots..and-dashes_"]) {
      await client.createApiKey({ name, permissions: [] }, org);
      const got = asJson<ApiKeyListJson>((await client.getApiKey(name, org)).data);
      expect(got.name).toBe(name);
      expect((await client.deleteApiKey(name, org)).status).toBe(204);
      await expectClientError(client.getApiKey(name, org), 404, "API key not found");
    }
  });

  it("names are per user: two users of one organization may both have 'ci'", async () => {
    const org = uniqueId("org");
    const [a, b] = [uniqueId("user"), uniqueId("user")];
    await api.setMember(org, a, "owner");
    await api.setMember(org, b, "member");
    await (await clientFor(api, a)).createApiKey({ name: "ci", permissions: [] }, org);
    await (await clientFor(api, b)).createApiKey({ name: "ci", permissions: [] }, org);
    const all = asJson<ApiKeyListJson[]>((await (await clientFor(api, a)).listApiKeys(org)).data);
    expect(all.map((k) => k.userId).sort()).toEqual([a, b].sort());
  });

  it("an owner lists every key of the organization; a member only their own; no other organization's", async () => {
    const org = uniqueId("org");
    const otherOrg = uniqueId("org");
    const owner = uniqueId("owner");
    const member = uniqueId("member");
    await api.setMember(org, owner, "owner");
    await api.setMember(org, member, "member", ["write:sandboxes"]);
    await api.setMember(otherOrg, owner, "owner");
    const ownerClient = await clientFor(api, owner);
    const memberClient = await clientFor(api, member);
    await ownerClient.createApiKey({ name: "owner-key", permissions: [] }, org);
    await ownerClient.createApiKey({ name: "elsewhere", permissions: [] }, otherOrg);
    await memberClient.createApiKey({ name: "member-key", permissions: ["write:sandboxes"] }, org);

    const ownerView = asJson<ApiKeyListJson[]>((await ownerClient.listApiKeys(org)).data);
    expect(ownerView.map((k) => [k.name, k.userId, k.organizationId]).sort()).toEqual(
      [
        ["member-key", member, org],
        ["owner-key", owner, org],
      ].sort(),
    );
    const memberView = asJson<ApiKeyListJson[]>((await memberClient.listApiKeys(org)).data);
    expect(memberView.map((k) => [k.name, k.userId])).toEqual([["member-key", member]]);
    const otherView = asJson<ApiKeyListJson[]>((await ownerClient.listApiKeys(otherOrg)).data);
    expect(otherView.map((k) => k.name)).toEqual(["elsewhere"]);

    // getApiKey is the caller's own key only, even for an owner.
    await expectClientError(ownerClient.getApiKey("member-key", org), 404, "API key not found");
    await expectClientError(ownerClient.deleteApiKey("member-key", org), 404, "API key not found");
  });

  it("deleteApiKeyForUser: a member for another user → 403; for themself → 204; an owner for anyone → 204", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("owner");
    const member = uniqueId("member");
    const other = uniqueId("member");
    await api.setMember(org, owner, "owner");
    await api.setMember(org, member, "member");
    await api.setMember(org, other, "member");
    const ownerClient = await clientFor(api, owner);
    const memberClient = await clientFor(api, member);
    const otherClient = await clientFor(api, other);
    await memberClient.createApiKey({ name: "m1", permissions: [] }, org);
    await memberClient.createApiKey({ name: "m2", permissions: [] }, org);
    await otherClient.createApiKey({ name: "o1", permissions: [] }, org);
    await ownerClient.createApiKey({ name: "w1", permissions: [] }, org);
    const eventsBefore = (await eventsOfOrganization(api.db, org)).length;

    await expectClientError(
      memberClient.deleteApiKeyForUser(other, "o1", org),
      403,
      "Incorrect user ID provided",
      `/api/api-keys/${other}/o1`,
    );
    await expectClientError(memberClient.deleteApiKeyForUser(owner, "w1", org), 403, "Incorrect user ID provided");
    await expectClientError(
      memberClient.deleteApiKeyForUser(other, "no-such-key", org),
      403,
      "Incorrect user ID provided",
    );
    expect((await eventsOfOrganization(api.db, org)).length).toBe(eventsBefore);

    expect((await memberClient.deleteApiKeyForUser(member, "m1", org)).status).toBe(204);
    expect((await ownerClient.deleteApiKeyForUser(other, "o1", org)).status).toBe(204);
    expect((await ownerClient.deleteApiKeyForUser(owner, "w1", org)).status).toBe(204);
    await expectClientError(ownerClient.deleteApiKeyForUser(other, "o1", org), 404, "API key not found");
    await expectClientError(ownerClient.deleteApiKeyForUser(uniqueId("stranger"), "x", org), 404, "API key not found");

    const left = asJson<ApiKeyListJson[]>((await ownerClient.listApiKeys(org)).data);
    expect(left.map((k) => k.name)).toEqual(["m2"]);
    await expectClientError(otherClient.getApiKey("o1", org), 404);

    const revokedByOwner = (await eventsOfOrganization(api.db, org)).find(
      (e) => e.event_type === "KeyRevoked" && e.stream_id === keyStreamId(org, other, "o1"),
    );
    expect(revokedByOwner?.data).toMatchObject({ reason: "deleted", userId: other });
    expect(revokedByOwner?.metadata).toMatchObject({ actorUserId: owner, authMethod: "jwt" });
  });

  it("unknown names: getApiKey/deleteApiKey → 404 'API key not found', and nothing is written", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const client = await clientFor(api, user);
    const before = (await eventsOfOrganization(api.db, org)).length;
    await expectClientError(client.getApiKey("nope", org), 404, "API key not found", "/api/api-keys/nope");
    await expectClientError(client.deleteApiKey("nope", org), 404, "API key not found");
    await client.createApiKey({ name: "gone", permissions: [] }, org);
    await client.deleteApiKey("gone", org);
    const afterDelete = (await eventsOfOrganization(api.db, org)).length;
    await expectClientError(client.deleteApiKey("gone", org), 404, "API key not found");
    expect((await eventsOfOrganization(api.db, org)).length).toBe(afterDelete);
    expect(afterDelete).toBe(before + 2);
  });

  it("409 on a duplicate name, with nothing written", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const client = await clientFor(api, user);
    await client.createApiKey({ name: "dup", permissions: [] }, org);
    const before = (await eventsOfOrganization(api.db, org)).length;
    await expectClientError(
      client.createApiKey({ name: "dup", permissions: ["read:volumes"] }, org),
      409,
      "API key with this name already exists",
      "/api/api-keys",
    );
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
  });

  it("a member may grant only what they hold: 403 'Insufficient permissions for assigning: p1, p2'", async () => {
    const org = uniqueId("org");
    const member = uniqueId("member");
    await api.setMember(org, member, "member", ["write:sandboxes", "read:volumes"]);
    const client = await clientFor(api, member);
    const before = (await eventsOfOrganization(api.db, org)).length;
    await expectClientError(
      client.createApiKey({ name: "k", permissions: ["write:sandboxes", "delete:sandboxes", "read:audit_logs"] }, org),
      403,
      "Insufficient permissions for assigning: delete:sandboxes, read:audit_logs",
    );
    await expectClientError(
      client.createApiKey({ name: "k", permissions: ["write:registries"] }, org),
      403,
      "Insufficient permissions for assigning: write:registries",
    );
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
    const ok = await client.createApiKey({ name: "k", permissions: ["read:volumes", "write:sandboxes"] }, org);
    expect(ok.status).toBe(201);
    const none = await client.createApiKey({ name: "k2", permissions: [] }, org);
    expect(none.status).toBe(201);
  });
});

describe("authentication through the client", () => {
  let api: RunningApi;
  let org: string;
  let user: string;
  let jwtClient: Awaited<ReturnType<typeof clientFor>>;
  let keyValue: string;
  beforeAll(async () => {
    api = await startApi();
    org = uniqueId("org");
    user = uniqueId("user");
    await api.setMember(org, user, "owner");
    jwtClient = await clientFor(api, user);
    keyValue = asJson<ApiKeyResponseJson>(
      (await jwtClient.createApiKey({ name: "auth", permissions: ["read:volumes"] }, org)).data,
    ).value;
  });
  afterAll(async () => {
    await api.close();
  });

  it("/current with a JWT → 401 'Invalid credentials'", async () => {
    await expectClientError(jwtClient.getCurrentApiKey(org), 401, "Invalid credentials", "/api/api-keys/current");
  });

  it("every JWT-only operation with an API key → 401 'Invalid credentials'", async () => {
    const keyClient = apiKeysClient(api.baseUrl, keyValue);
    const before = (await eventsOfOrganization(api.db, org)).filter((e) => e.event_type !== "KeyUsed").length;
    await expectClientError(keyClient.listApiKeys(org), 401, "Invalid credentials");
    await expectClientError(keyClient.createApiKey({ name: "x", permissions: [] }, org), 401, "Invalid credentials");
    await expectClientError(keyClient.getApiKey("auth", org), 401, "Invalid credentials");
    await expectClientError(keyClient.deleteApiKey("auth", org), 401, "Invalid credentials");
    await expectClientError(keyClient.deleteApiKeyForUser(user, "auth", org), 401, "Invalid credentials");
    expect((await eventsOfOrganization(api.db, org)).filter((e) => e.event_type !== "KeyUsed").length).toBe(before);
    expect((await jwtClient.getApiKey("auth", org)).status).toBe(200);
  });

  it("unknown, malformed, missing or mistyped tokens → 401 'Invalid credentials' on every operation", async () => {
    const unknownButWellFormed = `${keyValue.slice(0, 4)}${"0".repeat(56)}`;
    const wellFormed = unknownButWellFormed + crc32(unknownButWellFormed).toString(16).padStart(8, "0");
    expect(isWellFormedKey(wellFormed)).toBe(true);
    const tokens = [
      wellFormed,
      `${keyValue.slice(0, -1)}${keyValue.endsWith("0") ? "1" : "0"}`,
      "not-a-key",
      "a.b.c",
      "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
      keyValue.toUpperCase(),
    ];
    for (const token of tokens) {
      const client = apiKeysClient(api.baseUrl, token);
      await expectClientError(client.getCurrentApiKey(), 401, "Invalid credentials");
      await expectClientError(client.listApiKeys(org), 401, "Invalid credentials");
    }
    const anonymous = apiKeysClient(api.baseUrl, undefined);
    await expectClientError(anonymous.listApiKeys(org), 401, "Invalid credentials", "/api/api-keys");
    await expectClientError(anonymous.getCurrentApiKey(), 401, "Invalid credentials");
  });

  it("a JWT without the organization header, or for an organization the user is not in → 403", async () => {
    await expectClientError(jwtClient.listApiKeys(), 403, "Invalid authentication context");
    await expectClientError(
      jwtClient.createApiKey({ name: "x", permissions: [] }),
      403,
      "Invalid authentication context",
    );
    const stranger = uniqueId("org");
    const before = (await eventsOfOrganization(api.db, stranger)).length;
    await expectClientError(jwtClient.listApiKeys(stranger), 403, "Invalid authentication context");
    await expectClientError(
      jwtClient.createApiKey({ name: "x", permissions: [] }, stranger),
      403,
      "Invalid authentication context",
    );
    await expectClientError(jwtClient.getApiKey("auth", stranger), 403, "Invalid authentication context");
    await expectClientError(jwtClient.deleteApiKey("auth", stranger), 403, "Invalid authentication context");
    await expectClientError(
      jwtClient.deleteApiKeyForUser(user, "auth", stranger),
      403,
      "Invalid authentication context",
    );
    expect((await eventsOfOrganization(api.db, stranger)).length).toBe(before);
    expect(before).toBe(0);
  });

  it("an expired key works until its expiry, then → 401", async () => {
    const expiresAt = new Date(Date.now() + 2_000);
    const created = asJson<ApiKeyResponseJson>(
      (await jwtClient.createApiKey({ name: "short-lived", permissions: [], expiresAt }, org)).data,
    );
    const keyClient = apiKeysClient(api.baseUrl, created.value);
    expect((await keyClient.getCurrentApiKey()).status).toBe(200);
    await sleep(Math.max(0, expiresAt.getTime() - Date.now()) + 100);
    await expectClientError(keyClient.getCurrentApiKey(), 401, "Invalid credentials");
  });

  it("a revoked key → 401", async () => {
    const created = asJson<ApiKeyResponseJson>(
      (await jwtClient.createApiKey({ name: "revoke-me", permissions: [] }, org)).data,
    );
    const keyClient = apiKeysClient(api.baseUrl, created.value);
    expect((await keyClient.getCurrentApiKey()).status).toBe(200);
    await jwtClient.deleteApiKey("revoke-me", org);
    await expectClientError(keyClient.getCurrentApiKey(), 401, "Invalid credentials");
  });
});

describe("lastUsedAt and KeyUsed", () => {
  let db: Kysely<unknown>;
  beforeAll(() => {
    db = connectTestDatabase(2);
  });
  afterAll(async () => {
    await db.destroy();
  });

  it("is set after using the key, with at most one KeyUsed per throttle window", async () => {
    const api = await startApi({ keyUsedThrottleMs: 600_000 });
    try {
      const org = uniqueId("org");
      const user = uniqueId("user");
      await api.setMember(org, user, "owner");
      const client = await clientFor(api, user);
      const key = asJson<ApiKeyResponseJson>((await client.createApiKey({ name: "used", permissions: [] }, org)).data);
      const keyClient = apiKeysClient(api.baseUrl, key.value);
      const usedFrom = Date.now();
      await Promise.all(Array.from({ length: 5 }, () => keyClient.getCurrentApiKey()));
      const lastUsedAt = await eventually(async () => {
        const item = asJson<ApiKeyListJson>((await client.getApiKey("used", org)).data);
        return item.lastUsedAt ?? undefined;
      }, "lastUsedAt");
      expect(lastUsedAt).toMatch(ISO);
      expect(Date.parse(lastUsedAt)).toBeGreaterThanOrEqual(usedFrom - 1000);
      for (let i = 0; i < 5; i++) await keyClient.getCurrentApiKey();
      const current = asJson<ApiKeyListJson>((await keyClient.getCurrentApiKey()).data);
      expect(current.lastUsedAt).toBe(lastUsedAt);
      await api.close();
      const used = (await eventsOfOrganization(db, org)).filter((e) => e.event_type === "KeyUsed");
      expect(used).toHaveLength(1);
      expect(used[0]?.data).toMatchObject({ usedAt: lastUsedAt, name: "used", userId: user });
      expect(used[0]?.metadata).toMatchObject({ authMethod: "api_key", actorUserId: user, organizationId: org });
    } finally {
      await api.close().catch(() => {});
    }
  });

  it("records again once the throttle window has passed, moving lastUsedAt forward", async () => {
    const api = await startApi({ keyUsedThrottleMs: 300 });
    try {
      const org = uniqueId("org");
      const user = uniqueId("user");
      await api.setMember(org, user, "owner");
      const client = await clientFor(api, user);
      const key = asJson<ApiKeyResponseJson>((await client.createApiKey({ name: "used", permissions: [] }, org)).data);
      const keyClient = apiKeysClient(api.baseUrl, key.value);
      const countUsed = async () =>
        (await eventsOfOrganization(api.db, org)).filter((e) => e.event_type === "KeyUsed").length;
      await keyClient.getCurrentApiKey();
      const first = await eventually(async () => {
        const item = asJson<ApiKeyListJson>((await client.getApiKey("used", org)).data);
        return item.lastUsedAt ?? undefined;
      }, "first use");
      await sleep(350);
      await keyClient.getCurrentApiKey();
      await eventually(async () => ((await countUsed()) >= 2 ? true : undefined), "second KeyUsed");
      const second = asJson<ApiKeyListJson>((await client.getApiKey("used", org)).data).lastUsedAt as string;
      expect(Date.parse(second)).toBeGreaterThan(Date.parse(first));
    } finally {
      await api.close();
    }
  });

  it("lists most recently used first, never-used last, then newest first", async () => {
    const api = await startApi({ keyUsedThrottleMs: 600_000 });
    try {
      const org = uniqueId("org");
      const user = uniqueId("user");
      await api.setMember(org, user, "owner");
      const client = await clientFor(api, user);
      const values: Record<string, string> = {};
      for (const name of ["k1", "k2", "k3", "k4"]) {
        values[name] = asJson<ApiKeyResponseJson>(
          (await client.createApiKey({ name, permissions: [] }, org)).data,
        ).value;
        await sleep(5);
      }
      const useAndWait = async (name: string) => {
        await apiKeysClient(api.baseUrl, values[name]).getCurrentApiKey();
        await eventually(async () => {
          const item = asJson<ApiKeyListJson>((await client.getApiKey(name, org)).data);
          return item.lastUsedAt ?? undefined;
        }, `use of ${name}`);
      };
      await useAndWait("k1");
      await sleep(5);
      await useAndWait("k3");
      const names = asJson<ApiKeyListJson[]>((await client.listApiKeys(org)).data).map((k) => k.name);
      expect(names).toEqual(["k3", "k1", "k4", "k2"]);
    } finally {
      await api.close();
    }
  });
});
