import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";

const context = (org: string, user: string, now = new Date()): CommandContext => ({
  now,
  metadata: { actorUserId: user, organizationId: org, authMethod: "api_key", requestId: randomUUID() },
});

describe("recordKeyUses: many keys' uses in one transaction", () => {
  let scratch: ScratchDatabase;
  let commands: KeyCommands;
  const org = uniqueId("org");
  const user = uniqueId("user");
  const names = Array.from({ length: 20 }, (_, i) => `key-${i}`);
  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    commands = new KeyCommands(scratch.db);
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(org, user),
    );
    for (const name of names) {
      const hash = randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", "");
      await commands.createApiKey(
        {
          keyId: randomUUID(),
          organizationId: org,
          userId: user,
          name,
          keyHash: hash,
          maskedValue: "dtn****",
          permissions: [],
          expiresAt: null,
        },
        context(org, user),
      );
    }
    await commands.revokeApiKey({ organizationId: org, userId: user, name: "key-19" }, "deleted", context(org, user));
  });
  afterAll(async () => {
    await scratch?.drop();
  });

  const keyUsedEvents = async () =>
    (
      await sql<{ stream_id: string; stream_version: number; data: { usedAt: string; name: string } }>`
        SELECT stream_id, stream_version, data FROM events WHERE event_type = 'KeyUsed' ORDER BY global_position`.execute(
        scratch.db,
      )
    ).rows;

  it("appends one KeyUsed per live key, skips revoked and unknown keys, and updates lastUsedAt in the same commit", async () => {
    const usedAt = new Date(Date.now() - 1_000);
    const uses = [...names, "no-such-key", "key-3"].map((name) => ({
      key: { organizationId: org, userId: user, name },
      context: context(org, user, usedAt),
    }));
    expect(await commands.recordKeyUses(uses, 60_000)).toBe(19);
    const events = await keyUsedEvents();
    expect(events.map((e) => e.data.name).sort()).toEqual(names.filter((n) => n !== "key-19").sort());
    expect(new Set(events.map((e) => e.data.usedAt))).toEqual(new Set([usedAt.toISOString()]));
    const rows = await sql<{ name: string; last_used_at: Date | null }>`
      SELECT name, last_used_at FROM api_keys WHERE organization_id = ${org} ORDER BY name`.execute(scratch.db);
    for (const row of rows.rows) {
      expect(row.last_used_at?.toISOString() ?? null, row.name).toBe(
        row.name === "key-19" ? null : usedAt.toISOString(),
      );
    }
    // Within the throttle window: nothing more.
    expect(await commands.recordKeyUses(uses, 60_000)).toBe(0);
    expect((await keyUsedEvents()).length).toBe(19);
  });

  it("retries the whole batch when another writer appends to one of its streams, and still records each key once", async () => {
    const later = new Date(Date.now() + 120_000);
    const uses = names.slice(0, 10).map((name) => ({
      key: { organizationId: org, userId: user, name },
      context: context(org, user, later),
    }));
    const [batch, single] = await Promise.all([
      commands.recordKeyUses(uses, 60_000),
      commands.recordKeyUses(
        [{ key: { organizationId: org, userId: user, name: "key-0" }, context: context(org, user, later) }],
        60_000,
      ),
    ]);
    const events = (await keyUsedEvents()).filter((e) => e.data.usedAt === later.toISOString());
    expect(events.length).toBe(10);
    expect(batch + single).toBe(10);
    expect(new Set(events.map((e) => e.stream_id)).size).toBe(10);
  });
});

describe("recordKeyUsesAsRead: uses decided on the rows their requests read, in one statement", () => {
  type UseAsRead = Parameters<KeyCommands["recordKeyUsesAsRead"]>[0][number];
  let scratch: ScratchDatabase;
  let commands: KeyCommands;
  /** The same write side on a connection that lists every statement it runs. */
  let observed: { commands: KeyCommands; statements: string[]; db: Kysely<unknown> };
  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    commands = new KeyCommands(scratch.db);
    const statements: string[] = [];
    const pool = new pg.Pool({ connectionString: scratch.url, max: 2 });
    // As test/support/database.ts's pools: pg-pool's end() resolves before its clients' connections have closed, so
    // the scratch database's DROP ... WITH (FORCE) can terminate one, and the pool re-emits that client's error; with
    // no listener it is an uncaught exception (the clean-clone CI run of 339bf63 failed on it, every test passed).
    pool.on("error", () => {});
    const db = new Kysely<unknown>({
      dialect: new PostgresDialect({ pool }),
      log: (event) => {
        if (!event.query.sql.includes("pg_notify")) statements.push(event.query.sql);
      },
    });
    observed = { commands: new KeyCommands(db), statements, db };
  });
  afterAll(async () => {
    await observed?.commands.close();
    await observed?.db.destroy();
    await scratch?.drop();
  });

  const newHash = () => randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", "");
  async function organizationWithKeys(names: readonly string[]) {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(org, user),
    );
    for (const name of names) await createKey(org, user, name);
    return { org, user };
  }
  const createKey = (org: string, user: string, name: string) =>
    commands.createApiKey(
      {
        keyId: randomUUID(),
        organizationId: org,
        userId: user,
        name,
        keyHash: newHash(),
        maskedValue: "dtn****",
        permissions: [],
        expiresAt: null,
      },
      context(org, user),
    );
  /** The key's row as a request reads it (the live one of the name, else its last). */
  const rowOf = async (org: string, user: string, name: string) =>
    (
      await sql<UseAsRead["row"]>`
        SELECT key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at, expires_at,
               last_used_at, revoked_at, revoked_reason, previous_key_hash, previous_valid_until, rotated_at
          FROM api_keys WHERE organization_id = ${org} AND user_id = ${user} AND name = ${name}
         ORDER BY revoked_at IS NULL DESC, created_at DESC LIMIT 1`.execute(scratch.db)
    ).rows[0] as UseAsRead["row"];
  const usesOf = async (org: string) =>
    (
      await sql<{ name: string; stream_version: number; key_id: string; used_at: string }>`
        SELECT data->>'name' AS name, stream_version, data->>'keyId' AS key_id, data->>'usedAt' AS used_at
          FROM events WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org}
         ORDER BY data->>'name', stream_version`.execute(scratch.db)
    ).rows;
  const lastUsedAt = async (keyId: string) =>
    (
      await sql<{ last_used_at: Date | null }>`SELECT last_used_at FROM api_keys WHERE key_id = ${keyId}`.execute(
        scratch.db,
      )
    ).rows[0]?.last_used_at?.toISOString() ?? null;

  it("appends each use at the end of its stream with its lastUsedAt, in one statement for the batch", async () => {
    const names = ["a", "b", "c", "d", "e"];
    const { org, user } = await organizationWithKeys(names);
    const rows = await Promise.all(names.map((name) => rowOf(org, user, name)));
    const usedAt = new Date(Date.now() - 5_000);
    observed.statements.length = 0;
    const uses = rows.map((row) => ({ row, context: context(org, user, usedAt) }));
    expect(await observed.commands.recordKeyUsesAsRead(uses, 60_000)).toBe(5);
    expect(observed.statements).toHaveLength(1);
    expect(await usesOf(org)).toEqual(
      names.map((name, i) => ({
        name,
        stream_version: 2,
        key_id: rows[i]?.key_id,
        used_at: usedAt.toISOString(),
      })),
    );
    for (const row of rows) expect(await lastUsedAt(row.key_id)).toBe(usedAt.toISOString());

    // The same rows again (their lastUsedAt has moved since): each is decided again on its stream, where the
    // throttle holds; nothing more is written.
    observed.statements.length = 0;
    const again = rows.map((row) => ({ row, context: context(org, user, new Date(usedAt.getTime() + 1_000)) }));
    expect(await observed.commands.recordKeyUsesAsRead(again, 60_000)).toBe(0);
    expect(observed.statements.length).toBeGreaterThan(1);
    expect(await usesOf(org)).toHaveLength(5);
  });

  it("decides a use again on its stream when the row changed after it was read, and never records one for a revoked key or for the key that took its name", async () => {
    const names = ["untouched", "revoked", "recreated", "rotated", "rotated-new-expiry"];
    const { org, user } = await organizationWithKeys(names);
    const read = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await rowOf(org, user, n)] as const)));
    const ctx = context(org, user);
    await commands.revokeApiKey({ organizationId: org, userId: user, name: "revoked" }, "deleted", ctx);
    await commands.revokeApiKey({ organizationId: org, userId: user, name: "recreated" }, "deleted", ctx);
    await createKey(org, user, "recreated");
    const rotate = (name: string, expiresAt: Date | undefined) =>
      commands.rotateApiKey(
        { organizationId: org, userId: user, name },
        { keyHash: newHash(), maskedValue: "dtn****", gracePeriodSeconds: 0, expiresAt, mayExtendExpiry: true },
        ctx,
      );
    await rotate("rotated", undefined);
    await rotate("rotated-new-expiry", new Date(Date.now() + 86_400_000));
    const usedAt = new Date();
    const uses = names.map((name) => ({ row: read[name] as UseAsRead["row"], context: context(org, user, usedAt) }));
    expect(await commands.recordKeyUsesAsRead(uses, 60_000)).toBe(3);
    const recorded = await usesOf(org);
    expect(recorded.map(({ name, stream_version }) => ({ name, stream_version }))).toEqual([
      // created, rotated, used: the use goes after the rotation whether the row changed (expiry) or not.
      { name: "rotated", stream_version: 3 },
      { name: "rotated-new-expiry", stream_version: 3 },
      { name: "untouched", stream_version: 2 },
    ]);
    for (const use of recorded) expect(use.key_id).toBe(read[use.name]?.key_id);
    expect(await lastUsedAt((read.revoked as UseAsRead["row"]).key_id)).toBeNull();
    const successor = await rowOf(org, user, "recreated");
    expect(await lastUsedAt(successor.key_id)).toBeNull();

    // The revoked key's row and its successor's in one batch: the successor's use is recorded.
    const both = [read.recreated, successor].map((row) => ({
      row: row as UseAsRead["row"],
      context: context(org, user, usedAt),
    }));
    expect(await commands.recordKeyUsesAsRead(both, 60_000)).toBe(1);
    expect((await usesOf(org)).filter((use) => use.name === "recreated")).toEqual([
      { name: "recreated", stream_version: 4, key_id: successor.key_id, used_at: usedAt.toISOString() },
    ]);
    expect(await lastUsedAt((read.rotated as UseAsRead["row"]).key_id)).toBe(usedAt.toISOString());
  });

  it("records each key's use once when two replicas record the same uses at once", async () => {
    const names = Array.from({ length: 12 }, (_, i) => `key-${i}`);
    const { org, user } = await organizationWithKeys(names);
    const other = new KeyCommands(scratch.db);
    try {
      for (let round = 1; round <= 3; round++) {
        const rows = await Promise.all(names.map((name) => rowOf(org, user, name)));
        const usedAt = new Date(Date.now() + round * 120_000);
        const uses = (order: number) =>
          (order === 0 ? rows : [...rows].reverse()).map((row) => ({ row, context: context(org, user, usedAt) }));
        const [first, second] = await Promise.all([
          commands.recordKeyUsesAsRead(uses(0), 60_000),
          other.recordKeyUsesAsRead(uses(1), 60_000),
        ]);
        expect(first + second).toBe(names.length);
        const recorded = await usesOf(org);
        expect(recorded).toHaveLength(names.length * round);
        for (const name of names) {
          expect(recorded.filter((use) => use.name === name).map((use) => use.stream_version)).toEqual(
            Array.from({ length: round }, (_, i) => i + 2),
          );
        }
        for (const row of rows) expect(await lastUsedAt(row.key_id)).toBe(usedAt.toISOString());
      }
    } finally {
      await other.close();
    }
  });
});
