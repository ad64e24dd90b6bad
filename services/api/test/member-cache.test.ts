import { runMigrations } from "@keyledger/event-store";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createPostgresDatabase } from "../src/database";
import { MemberCache } from "../src/member-cache";

/** A feed the test controls: cache on or not, and a flush counter. */
function feed() {
  return { cacheOn: true, stats: { flushes: 0 } };
}

describe("MemberCache", () => {
  let db: Kysely<unknown>;
  const org = `org-member-cache-${Date.now()}`;
  const setRole = (user: string, role: "owner" | "member") =>
    sql`INSERT INTO organization_members (organization_id, user_id, role, permissions, updated_at)
        VALUES (${org}, ${user}, ${role}, '{}', now())
        ON CONFLICT (organization_id, user_id) DO UPDATE SET role = EXCLUDED.role`.execute(db);
  beforeAll(async () => {
    db = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
    await runMigrations(db);
  });
  afterAll(async () => {
    await sql`DELETE FROM organization_members WHERE organization_id = ${org}`.execute(db);
    await db.destroy();
  });

  it("answers from the cache while subscribed, and reads again after the member's event", async () => {
    const cache = new MemberCache(db, feed());
    await setRole("u1", "owner");
    expect((await cache.find(org, "u1"))?.role).toBe("owner");
    await setRole("u1", "member");
    expect((await cache.find(org, "u1"))?.role).toBe("owner");
    cache.applyEvent({ type: "KeyUsed", data: { organizationId: org, userId: "u1" } });
    expect((await cache.find(org, "u1"))?.role).toBe("owner");
    cache.applyEvent({ type: "MemberAccessChanged", data: { organizationId: org, userId: "u1" } });
    expect((await cache.find(org, "u1"))?.role).toBe("member");
  });

  it("remembers a non-member until they are added", async () => {
    const cache = new MemberCache(db, feed());
    expect(await cache.find(org, "u2")).toBeUndefined();
    await setRole("u2", "member");
    expect(await cache.find(org, "u2")).toBeUndefined();
    cache.applyEvent({ type: "MemberAccessChanged", data: { organizationId: org, userId: "u2" } });
    expect((await cache.find(org, "u2"))?.role).toBe("member");
  });

  it("neither answers from nor fills the cache while the feed is down, and forgets everything across a loss", async () => {
    const source = feed();
    const cache = new MemberCache(db, source);
    await setRole("u3", "owner");
    expect((await cache.find(org, "u3"))?.role).toBe("owner");
    source.cacheOn = false;
    source.stats.flushes += 1;
    await setRole("u3", "member");
    expect((await cache.find(org, "u3"))?.role).toBe("member");
    expect(cache.size).toBe(0);
    source.cacheOn = true;
    await setRole("u3", "owner");
    expect((await cache.find(org, "u3"))?.role).toBe("owner");
  });

  it("does not keep a lookup that an invalidation overtook", async () => {
    const cache = new MemberCache(db, feed());
    await setRole("u4", "owner");
    const pending = cache.find(org, "u4");
    cache.applyEvent({ type: "MemberRemoved", data: { organizationId: org, userId: "u4" } });
    expect((await pending)?.role).toBe("owner");
    expect(cache.size).toBe(0);
  });
});
