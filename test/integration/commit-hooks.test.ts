import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import type { RecordedEvent } from "@keyledger/event-store";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";

const context = (org: string, user: string): CommandContext => ({
  now: new Date(),
  metadata: { actorUserId: user, organizationId: org, authMethod: "jwt", requestId: randomUUID() },
});

describe("a command's events before and after its commit (the fast path encodes revocations before the commit)", () => {
  let scratch: ScratchDatabase;
  let commands: KeyCommands;
  /** Each call of either hook; after the commit, also how many of its events another session then sees. */
  const calls: { hook: "committing" | "committed"; events: RecordedEvent[]; storedAtCall?: Promise<number> }[] = [];
  const org = uniqueId("org");
  const user = uniqueId("user");

  /** How many of `events` another session sees. */
  const storedCount = (events: RecordedEvent[]) =>
    sql<{
      n: number;
    }>`SELECT count(*)::int AS n FROM events WHERE event_id = ANY(${events.map((e) => e.eventId)}::uuid[])`
      .execute(scratch.db)
      .then((result) => result.rows[0]?.n ?? -1);

  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    commands = new KeyCommands(
      scratch.db,
      (events) => calls.push({ hook: "committed", events, storedAtCall: storedCount(events) }),
      {},
      (events) => calls.push({ hook: "committing", events }),
    );
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(org, user),
    );
    await commands.createApiKey(
      {
        keyId: randomUUID(),
        organizationId: org,
        userId: user,
        name: "to-revoke",
        keyHash: randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", ""),
        maskedValue: "dtn****",
        permissions: [],
        expiresAt: null,
      },
      context(org, user),
    );
  });
  afterAll(async () => {
    await commands?.close();
    await scratch?.drop();
  });

  it("sees a revocation's events before its commit, then the same events after it", async () => {
    calls.length = 0;
    await commands.revokeApiKey(
      { organizationId: org, userId: user, name: "to-revoke" },
      "deleted",
      context(org, user),
    );
    expect(calls.map((call) => call.hook)).toEqual(["committing", "committed"]);
    const [committing, committed] = calls;
    expect(committing?.events.map((e) => e.type)).toEqual(["KeyRevoked"]);
    expect(committed?.events).toBe(committing?.events);
    expect(await committed?.storedAtCall).toBe(1);
  });

  it("sees nothing of a command that appends nothing", async () => {
    calls.length = 0;
    await expect(
      commands.revokeApiKey({ organizationId: org, userId: user, name: "to-revoke" }, "deleted", context(org, user)),
    ).rejects.toThrow();
    await expect(
      commands.revokeApiKey(
        { organizationId: org, userId: user, name: "never-created" },
        "deleted",
        context(org, user),
      ),
    ).rejects.toThrow();
    expect(calls).toEqual([]);
  });
});
