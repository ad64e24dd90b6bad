import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { eventsOfOrganization } from "../support/database";

type KeyResponse = { name: string; value: string; createdAt: string; permissions: string[]; expiresAt: string | null };

const APPLICATION_NAME = `keyledger-rotation-test-${process.pid}`;

describe("rotation with a grace window", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function ownerWithKey(body: Record<string, unknown> = {}, target: RunningApi = api) {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await target.setMember(org, user, "owner");
    const headers: Record<string, string> = {
      ...(await target.jwtHeaders(user, org)),
      "content-type": "application/json",
    };
    const res = await fetch(`${target.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "deploy", permissions: ["write:sandboxes"], ...body }),
    });
    expect(res.status).toBe(201);
    return { org, user, headers, key: (await res.json()) as KeyResponse };
  }

  const current = (value: string) =>
    fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });

  const rotate = (path: string, headers: Record<string, string>, body?: unknown, target: RunningApi = api) =>
    fetch(`${target.baseUrl}/api/api-keys/${path}`, {
      method: "POST",
      headers: body === undefined ? { authorization: headers.authorization as string, ...pick(headers) } : headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const pick = (headers: Record<string, string>): Record<string, string> => {
    const org = headers["x-daytona-organization-id"];
    return org ? { "x-daytona-organization-id": org } : {};
  };

  it("issues a new value that works at once; the old one works during the grace period, then never again", async () => {
    const { headers, key } = await ownerWithKey();
    const res = await rotate("deploy/rotate", headers, { gracePeriodSeconds: 2 });
    expect(res.status).toBe(201);
    const rotated = (await res.json()) as KeyResponse;
    expect(rotated.value).not.toBe(key.value);
    expect(rotated).toMatchObject({ name: "deploy", permissions: ["write:sandboxes"], expiresAt: null });

    const mask = (value: string) => `dtn${"*".repeat(20)}${value.slice(-3)}`;
    // Each value describes itself: the old one with its own mask and the end of its grace (asked twice: the first
    // answer may come from the database, the second from the cache).
    for (let ask = 0; ask < 2; ask++) {
      const fresh = await current(rotated.value);
      expect(fresh.status).toBe(200);
      expect(((await fresh.json()) as { value: string }).value).toBe(mask(rotated.value));
      const old = await current(key.value);
      expect(old.status).toBe(200);
      const oldBody = (await old.json()) as { value: string; expiresAt: string };
      expect(oldBody.value).toBe(mask(key.value));
      expect(Date.parse(oldBody.expiresAt)).toBeGreaterThan(Date.now() - 1000);
    }

    await new Promise((r) => setTimeout(r, 2300));
    expect((await current(key.value)).status).toBe(401);
    expect((await current(rotated.value)).status).toBe(200);
  });

  it("with no body ends the old value at once, and keeps the key's expiry by default", async () => {
    const expiresAt = new Date(Date.now() + 3_600_000).toISOString();
    const { headers, key } = await ownerWithKey({ expiresAt });
    const res = await rotate("deploy/rotate", headers);
    expect(res.status).toBe(201);
    const rotated = (await res.json()) as KeyResponse;
    expect(rotated.expiresAt).toBe(expiresAt);
    expect((await current(key.value)).status).toBe(401);
    expect((await current(rotated.value)).status).toBe(200);
  });

  it("rotating again during a grace period ends the earlier old value at once", async () => {
    const { headers, key } = await ownerWithKey();
    const first = (await (await rotate("deploy/rotate", headers, { gracePeriodSeconds: 600 })).json()) as KeyResponse;
    expect((await current(key.value)).status).toBe(200);
    const second = await rotate("deploy/rotate", headers, { gracePeriodSeconds: 600 });
    expect(second.status).toBe(201);
    const secondBody = (await second.json()) as KeyResponse;
    expect((await current(key.value)).status).toBe(401);
    expect((await current(first.value)).status).toBe(200);
    expect((await current(secondBody.value)).status).toBe(200);
  });

  it("a key rotates itself with /current/rotate; a JWT there gets 401", async () => {
    const { headers, key } = await ownerWithKey();
    const jwt = await rotate("current/rotate", headers, {});
    expect(jwt.status).toBe(401);
    const self = await fetch(`${api.baseUrl}/api/api-keys/current/rotate`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.value}`, "content-type": "application/json" },
      body: JSON.stringify({ gracePeriodSeconds: 60 }),
    });
    expect(self.status).toBe(201);
    const rotated = (await self.json()) as KeyResponse;
    expect((await current(rotated.value)).status).toBe(200);
    // The old value still works in its grace period, but cannot rotate the key again: a leaked old value must not
    // take the key over, and no retry would let it.
    const again = await fetch(`${api.baseUrl}/api/api-keys/current/rotate`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.value}` },
    });
    expect(again.status).toBe(403);
    expect(((await again.json()) as { message: string }).message).toBe(
      "Only the API key's current value can rotate it, not a value it was rotated from",
    );
    expect((await current(key.value)).status).toBe(200);
    expect((await current(rotated.value)).status).toBe(200);
  });

  it("a key rotating itself cannot extend its expiry (403, nothing written); a JWT can", async () => {
    const expiresAt = new Date(Date.now() + 3_600_000).toISOString();
    const { org, headers, key } = await ownerWithKey({ expiresAt });
    const selfRotate = (value: string, body: unknown) =>
      fetch(`${api.baseUrl}/api/api-keys/current/rotate`, {
        method: "POST",
        headers: { authorization: `Bearer ${value}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const rotations = async () =>
      (await eventsOfOrganization(api.db, org)).filter((e) => e.event_type === "KeyRotated").length;
    for (const later of [null, new Date(Date.now() + 7_200_000).toISOString()]) {
      const res = await selfRotate(key.value, { gracePeriodSeconds: 60, expiresAt: later });
      expect(res.status, String(later)).toBe(403);
      expect(((await res.json()) as { message: string }).message).toBe(
        "An API key cannot extend its own expiry: rotate it with a JWT to change its expiry to a later one",
      );
    }
    expect(await rotations()).toBe(0);
    expect((await current(key.value)).status).toBe(200);

    const shorter = new Date(Date.now() + 1_800_000).toISOString();
    const self = await selfRotate(key.value, { expiresAt: shorter });
    expect(self.status).toBe(201);
    expect(((await self.json()) as KeyResponse).expiresAt).toBe(shorter);

    const byJwt = await rotate("deploy/rotate", headers, { expiresAt: null });
    expect(byJwt.status).toBe(201);
    expect(((await byJwt.json()) as KeyResponse).expiresAt).toBeNull();
  });

  it("revoked keys are not found, expired ones 409; bad bodies are 400 and change nothing", async () => {
    const { org, headers } = await ownerWithKey({ expiresAt: new Date(Date.now() + 1500).toISOString() });
    // This organization's events: other tests' key uses are recorded in batches, a moment after their requests.
    const count = async () => (await eventsOfOrganization(api.db, org)).length;
    const before = await count();
    for (const body of [
      { gracePeriodSeconds: -1 },
      { gracePeriodSeconds: 604801 },
      { gracePeriodSeconds: 1.5 },
      { expiresAt: "soon" },
      [1],
    ]) {
      const res = await rotate("deploy/rotate", headers, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(Object.keys((await res.json()) as object).sort()).toEqual([
        "error",
        "message",
        "path",
        "statusCode",
        "timestamp",
      ]);
    }
    expect(await count()).toBe(before);
    expect((await rotate("nope/rotate", headers, {})).status).toBe(404);
    await new Promise((r) => setTimeout(r, 1700));
    const expired = await rotate("deploy/rotate", headers, {});
    expect(expired.status).toBe(409);
    expect(((await expired.json()) as { message: string }).message).toBe(
      "API key has expired: create a new key instead",
    );
    expect(await count()).toBe(before);

    const live = await ownerWithKey();
    await fetch(`${api.baseUrl}/api/api-keys/deploy`, {
      method: "DELETE",
      headers: { authorization: live.headers.authorization as string, ...pick(live.headers) },
    });
    expect((await rotate("deploy/rotate", live.headers, {})).status).toBe(404);
  });

  it("only the key's own user rotates it: a member gets Daytona's 403, an owner a 403 too (and may revoke it)", async () => {
    const { org, user, key } = await ownerWithKey();
    const member = uniqueId("member");
    await api.setMember(org, member, "member", ["write:sandboxes"]);
    const memberHeaders = { ...(await api.jwtHeaders(member, org)), "content-type": "application/json" };
    const denied = await rotate(`${encodeURIComponent(user)}/deploy/rotate`, memberHeaders, {});
    expect(denied.status).toBe(403);
    expect(((await denied.json()) as { message: string }).message).toBe("Incorrect user ID provided");
    expect((await current(key.value)).status).toBe(200);

    const owner2 = uniqueId("owner");
    await api.setMember(org, owner2, "owner");
    const ownerHeaders = { ...(await api.jwtHeaders(owner2, org)), "content-type": "application/json" };
    const byOwner = await rotate(`${encodeURIComponent(user)}/deploy/rotate`, ownerHeaders, {});
    expect(byOwner.status).toBe(403);
    const refusal = (await byOwner.json()) as { message: string; value?: string };
    expect(refusal.message).toBe(
      "Only the key's own user can rotate it (its new value would be theirs): an owner can revoke it instead",
    );
    expect(refusal.value).toBeUndefined();
    expect((await current(key.value)).status).toBe(200);
    // The key's own user may, through either route.
    const ownHeaders = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const own = await rotate(`${encodeURIComponent(user)}/deploy/rotate`, ownHeaders, {});
    expect(own.status).toBe(201);
    expect((await current(key.value)).status).toBe(401);
  });

  it("concurrent rotations of one key: one wins, the other gets 409", async () => {
    // An API of its own, named: the wait below counts its sessions only (other test files' appends wait on the table
    // lock too), and nothing else of it (a key use another test left to record, say) appends while the lock is held.
    const url = new URL(inject("databaseUrl"));
    url.searchParams.set("application_name", APPLICATION_NAME);
    const own = await startApi({ databaseUrl: url.toString() });
    try {
      const { headers } = await ownerWithKey({}, own);
      // Hold appends until both rotations have read the key and are waiting to append: a real overlap, every time.
      const locker = await own.db.connection().execute(async (conn) => {
        await sql`BEGIN`.execute(conn);
        await sql`LOCK TABLE events IN SHARE MODE`.execute(conn);
        const both = Promise.all([
          rotate("deploy/rotate", headers, {}, own),
          rotate("deploy/rotate", headers, {}, own),
        ]);
        let settled = false;
        const settle = () => {
          settled = true;
        };
        both.then(settle, settle);
        // Bounded, so a rotation that failed without waiting shows up in the statuses below instead of a timeout.
        for (const deadline = Date.now() + 20_000; !settled && Date.now() < deadline; ) {
          // pg_stat_activity is a snapshot taken at its first read in this transaction (PostgreSQL caches activity
          // statistics per transaction): without clearing it, sessions the rotations open after that read never
          // show up, and the wait runs until their statement timeout (503, 503).
          await sql`SELECT pg_stat_clear_snapshot()`.execute(conn);
          const waiting = await sql<{ n: string }>`
            SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE c.relname = 'events' AND NOT l.granted AND a.application_name = ${APPLICATION_NAME}`.execute(conn);
          if (Number(waiting.rows[0]?.n) >= 2) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        await sql`COMMIT`.execute(conn);
        return both;
      });
      const statuses = locker.map((r) => r.status).sort();
      expect(statuses).toEqual([201, 409]);
      const conflict = locker.find((r) => r.status === 409) as Response;
      expect(((await conflict.json()) as { message: string }).message).toBe("API key was rotated concurrently");
    } finally {
      await own.close();
    }
  });
});
