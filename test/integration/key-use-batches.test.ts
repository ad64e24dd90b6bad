import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import { sql } from "kysely";
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
