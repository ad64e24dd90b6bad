import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

/**
 * Tenancy: for every route, a caller from organization B cannot see, use, rotate or revoke anything of
 * organization A, and a member cannot touch another member's key. Same names on both sides, and one person who
 * belongs to both organizations, so a leak cannot hide behind "not found".
 */
describe("cross-tenant isolation", () => {
  let api: RunningApi;
  const orgA = uniqueId("org-a");
  const orgB = uniqueId("org-b");
  const ownerA = uniqueId("owner-a");
  const ownerB = uniqueId("owner-b");
  const memberA1 = uniqueId("member-a1");
  const memberA2 = uniqueId("member-a2");
  const both = uniqueId("both"); // owner in A, member in B
  const keys: Record<string, string> = {};

  type Call = { status: number; body: unknown; text: string };
  async function call(
    method: "GET" | "POST" | "DELETE",
    url: string,
    headers: Record<string, string>,
    payload?: object,
  ): Promise<Call> {
    const res = await api.app.inject({ method, url, headers, payload });
    let body: unknown = null;
    try {
      body = res.body === "" ? null : res.json();
    } catch {}
    return { status: res.statusCode, body, text: res.body };
  }
  const jwt = (user: string, org: string) => api.jwtHeaders(user, org);
  const bearer = (value: string) => ({ authorization: `Bearer ${value}` });

  async function createKey(user: string, org: string, name: string, permissions: string[] = []) {
    const res = await call("POST", "/api/api-keys", await jwt(user, org), { name, permissions });
    expect(res.status, res.text).toBe(201);
    return (res.body as { value: string }).value;
  }

  async function eventsOf(org: string): Promise<number> {
    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM events
       WHERE data->>'organizationId' = ${org} AND event_type <> 'KeyUsed'`.execute(api.db);
    return rows[0]?.n ?? 0;
  }

  /** Every key of A, with its value, still answers as itself. */
  async function expectOrgAIntact() {
    for (const [label, value] of Object.entries(keys).filter(([l]) => l.startsWith("A:"))) {
      const res = await call("GET", "/api/api-keys/current", bearer(value));
      expect(res.status, label).toBe(200);
      expect(res.body, label).toMatchObject({ organizationId: orgA });
    }
  }

  beforeAll(async () => {
    api = await startApi();
    await api.setMember(orgA, ownerA, "owner");
    await api.setMember(orgA, memberA1, "member", ["write:sandboxes"]);
    await api.setMember(orgA, memberA2, "member", ["write:sandboxes"]);
    await api.setMember(orgA, both, "owner");
    await api.setMember(orgB, ownerB, "owner");
    await api.setMember(orgB, both, "member", []);
    keys["A:owner:shared"] = await createKey(ownerA, orgA, "shared", ["delete:sandboxes"]);
    keys["A:member1:shared"] = await createKey(memberA1, orgA, "shared", ["write:sandboxes"]);
    keys["A:member2:mine"] = await createKey(memberA2, orgA, "mine", []);
    keys["A:both:shared"] = await createKey(both, orgA, "shared", ["write:sandboxes"]);
    keys["B:owner:shared"] = await createKey(ownerB, orgB, "shared", []);
    keys["B:both:shared"] = await createKey(both, orgB, "shared", []);
  });
  afterAll(() => api.close());

  it("a caller of B naming organization A is refused on every JWT route, and nothing of A changes", async () => {
    const before = await eventsOf(orgA);
    const asBinA = await jwt(ownerB, orgA);
    const attempts: [string, "GET" | "POST" | "DELETE", string, object?][] = [
      ["create", "POST", "/api/api-keys", { name: "planted", permissions: [] }],
      ["list", "GET", "/api/api-keys"],
      ["get", "GET", "/api/api-keys/shared"],
      ["delete", "DELETE", "/api/api-keys/shared"],
      ["delete for user", "DELETE", `/api/api-keys/${ownerA}/shared`],
      ["rotate", "POST", "/api/api-keys/shared/rotate", {}],
      ["rotate for user", "POST", `/api/api-keys/${ownerA}/shared/rotate`, {}],
    ];
    for (const [label, method, url, payload] of attempts) {
      const res = await call(method, url, asBinA, payload);
      expect(res.status, `${label}: ${res.text}`).toBe(403);
      expect(res.body, label).toMatchObject({ statusCode: 403, message: "Invalid authentication context" });
    }
    expect(await eventsOf(orgA)).toBe(before);
    await expectOrgAIntact();
  });

  it("in its own organization, B sees and acts on B's keys only, even with A's names and user ids", async () => {
    const before = await eventsOf(orgA);
    const asB = await jwt(ownerB, orgB);

    const list = await call("GET", "/api/api-keys", asB);
    expect(list.status).toBe(200);
    const listed = list.body as { organizationId: string; userId: string }[];
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.every((k) => k.organizationId === orgB)).toBe(true);

    const own = await call("GET", "/api/api-keys/shared", asB);
    expect(own.status).toBe(200);
    expect(own.body).toMatchObject({ organizationId: orgB, userId: ownerB });

    // A's user ids in the path address (nonexistent) keys of those users in B: 404, never A's key; a rotation of
    // another user's key is refused before any lookup (403, as for a key of B's own members).
    for (const user of [ownerA, memberA1]) {
      for (const [method, url, status] of [
        ["DELETE", `/api/api-keys/${user}/shared`, 404],
        ["POST", `/api/api-keys/${user}/shared/rotate`, 403],
      ] as const) {
        const res = await call(method, url, asB, method === "POST" ? {} : undefined);
        expect(res.status, `${method} ${url}: ${res.text}`).toBe(status);
      }
    }
    expect(await eventsOf(orgA)).toBe(before);
    await expectOrgAIntact();
  });

  it("a person in both organizations sees, in each, only that organization's keys", async () => {
    const inB = await call("GET", "/api/api-keys", await jwt(both, orgB));
    expect(inB.status).toBe(200);
    const itemsB = inB.body as { organizationId: string; userId: string }[];
    expect(itemsB.map((k) => [k.organizationId, k.userId])).toEqual([[orgB, both]]); // a member: own keys only

    const getB = await call("GET", "/api/api-keys/shared", await jwt(both, orgB));
    expect(getB.body).toMatchObject({ organizationId: orgB, userId: both });
    const getA = await call("GET", "/api/api-keys/shared", await jwt(both, orgA));
    expect(getA.body).toMatchObject({ organizationId: orgA, userId: both });

    // Deleting in B leaves the same name in A alone.
    const before = await eventsOf(orgA);
    const del = await call("DELETE", "/api/api-keys/shared", await jwt(both, orgB));
    expect(del.status).toBe(204);
    expect(await eventsOf(orgA)).toBe(before);
    expect((await call("GET", "/api/api-keys/current", bearer(keys["A:both:shared"] as string))).status).toBe(200);
    expect((await call("GET", "/api/api-keys/current", bearer(keys["B:both:shared"] as string))).status).toBe(401);
  });

  it("an API key acts in its own organization only, whatever organization header comes with it", async () => {
    const keyB = keys["B:owner:shared"] as string;
    const current = await call("GET", "/api/api-keys/current", {
      ...bearer(keyB),
      "x-daytona-organization-id": orgA,
    });
    expect(current.status).toBe(200);
    expect(current.body).toMatchObject({ organizationId: orgB, userId: ownerB, name: "shared" });

    // API keys are not accepted on the JWT routes (list, get, create, delete, rotate by name).
    const before = await eventsOf(orgA);
    for (const [method, url, payload] of [
      ["GET", "/api/api-keys", undefined],
      ["GET", "/api/api-keys/shared", undefined],
      ["POST", "/api/api-keys", { name: "via-key", permissions: [] }],
      ["DELETE", "/api/api-keys/shared", undefined],
      ["DELETE", `/api/api-keys/${ownerA}/shared`, undefined],
      ["POST", "/api/api-keys/shared/rotate", {}],
      ["POST", `/api/api-keys/${ownerA}/shared/rotate`, {}],
    ] as const) {
      const res = await call(method, url, { ...bearer(keyB), "x-daytona-organization-id": orgA }, payload);
      expect(res.status, `${method} ${url}: ${res.text}`).toBe(401);
    }

    // Rotating "current" with B's key rotates B's key, never A's key of the same name.
    const rotated = await call(
      "POST",
      "/api/api-keys/current/rotate",
      { ...bearer(keyB), "x-daytona-organization-id": orgA },
      {},
    );
    expect(rotated.status, rotated.text).toBe(201);
    keys["B:owner:shared"] = (rotated.body as { value: string }).value;
    const check = await call("GET", "/api/api-keys/current", bearer(keys["B:owner:shared"] as string));
    expect(check.body).toMatchObject({ organizationId: orgB });
    expect(await eventsOf(orgA)).toBe(before);
    await expectOrgAIntact();
  });

  it("a member cannot see, rotate or revoke another member's key; an owner can", async () => {
    const asMember2 = await jwt(memberA2, orgA);
    const before = await eventsOf(orgA);

    const list = await call("GET", "/api/api-keys", asMember2);
    expect((list.body as { userId: string }[]).map((k) => k.userId)).toEqual([memberA2]);
    // By name, a member reaches their own keys only: member 1's "shared" is not found for member 2.
    expect((await call("GET", "/api/api-keys/shared", asMember2)).status).toBe(404);
    expect((await call("DELETE", "/api/api-keys/shared", asMember2)).status).toBe(404);
    expect((await call("POST", "/api/api-keys/shared/rotate", asMember2, {})).status).toBe(404);

    for (const target of [memberA1, ownerA]) {
      const del = await call("DELETE", `/api/api-keys/${target}/shared`, asMember2);
      expect(del.status, del.text).toBe(403);
      expect(del.body).toMatchObject({ message: "Incorrect user ID provided" });
      const rot = await call("POST", `/api/api-keys/${target}/shared/rotate`, asMember2, {});
      expect(rot.status, rot.text).toBe(403);
    }
    expect(await eventsOf(orgA)).toBe(before);
    await expectOrgAIntact();

    // The owner of A may revoke a member's key (and only in A).
    const byOwner = await call("DELETE", `/api/api-keys/${memberA1}/shared`, await jwt(ownerA, orgA));
    expect(byOwner.status).toBe(204);
    expect((await call("GET", "/api/api-keys/current", bearer(keys["A:member1:shared"] as string))).status).toBe(401);
    delete keys["A:member1:shared"];
    await expectOrgAIntact();
  });

  it("the internal membership routes need the internal token, not a tenant's credentials", async () => {
    for (const headers of [await jwt(ownerA, orgA), bearer(keys["A:owner:shared"] as string), {}]) {
      const res = await call("PUT" as "POST", `/internal/organizations/${orgA}/members/${ownerB}`, headers, {
        role: "owner",
        permissions: [],
      });
      expect(res.status, res.text).toBe(401);
    }
    const asBinA = await call("GET", "/api/api-keys", await jwt(ownerB, orgA));
    expect(asBinA.status).toBe(403);
  });
});
