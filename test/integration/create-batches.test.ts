import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import type { Permission } from "@keyledger/domain";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";

const context = (org: string, user: string): CommandContext => ({
  now: new Date(),
  metadata: { actorUserId: user, organizationId: org, authMethod: "jwt", requestId: randomUUID() },
});

const newKey = (org: string, user: string, name: string, permissions: Permission[] = []) => ({
  keyId: randomUUID(),
  organizationId: org,
  userId: user,
  name,
  keyHash: randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", ""),
  maskedValue: "dtn****",
  permissions,
  expiresAt: null,
});

const owner = { role: "owner" as const, permissions: [] as Permission[] };

describe("creates in one turn of the event loop share a statement, each with its own outcome", () => {
  let scratch: ScratchDatabase;
  let commands: KeyCommands;
  const committed: string[][] = [];
  const org = uniqueId("org");
  const [alice, bob] = [uniqueId("alice"), uniqueId("bob")];
  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    commands = new KeyCommands(scratch.db, (events) => committed.push(events.map((e) => e.eventId)));
    for (const user of [alice, bob]) {
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
        },
        context(org, user),
      );
    }
  });
  afterAll(async () => {
    await commands?.close();
    await scratch?.drop();
  });

  const created = async (names: string[]) =>
    (
      await sql<{ name: string; transaction_id: string; stream_version: number }>`
        SELECT data->>'name' AS name, transaction_id::text AS transaction_id, stream_version FROM events
         WHERE event_type = 'KeyCreated' AND data->>'name' = ANY(${names}::text[]) ORDER BY global_position`.execute(
        scratch.db,
      )
    ).rows;
  const liveKeys = async (names: string[]) =>
    (
      await sql<{ name: string }>`SELECT name FROM api_keys
                                   WHERE organization_id = ${org} AND revoked_at IS NULL AND name = ANY(${names}::text[])
                                   ORDER BY name`.execute(scratch.db)
    ).rows.map((row) => row.name);

  it("writes the creates of one turn in one transaction, with their read-model rows, and reports each commit", async () => {
    const names = Array.from({ length: 12 }, (_, i) => uniqueId(`batch-${i}`));
    committed.length = 0;
    const results = await Promise.all(
      names.map((name) => commands.createApiKey(newKey(org, alice, name), context(org, alice), owner)),
    );
    expect(results.map((event) => event.data.name)).toEqual(names);
    const rows = await created(names);
    expect(rows).toHaveLength(12);
    expect(new Set(rows.map((row) => row.transaction_id)).size).toBe(1);
    expect(await liveKeys(names)).toEqual([...names].sort());
    expect(committed.flat()).toHaveLength(12);
  });

  it("a live name, a name with history and a twice-used name in the batch: each decided on its own", async () => {
    const [live, revoked, twice, plain] = ["live", "revoked", "twice", "plain"].map((n) => uniqueId(n)) as [
      string,
      string,
      string,
      string,
    ];
    await commands.createApiKey(newKey(org, alice, live), context(org, alice), owner);
    await commands.createApiKey(newKey(org, alice, revoked), context(org, alice), owner);
    await commands.revokeApiKey({ organizationId: org, userId: alice, name: revoked }, "deleted", context(org, alice));
    const outcomes = await Promise.allSettled([
      commands.createApiKey(newKey(org, alice, live), context(org, alice), owner),
      commands.createApiKey(newKey(org, alice, revoked), context(org, alice), owner),
      commands.createApiKey(newKey(org, alice, twice), context(org, alice), owner),
      commands.createApiKey(newKey(org, alice, twice), context(org, alice), owner),
      commands.createApiKey(newKey(org, alice, plain), context(org, alice), owner),
    ]);
    const codes = outcomes.map((o) =>
      o.status === "fulfilled" ? "created" : ((o.reason as { code?: string }).code ?? String(o.reason)),
    );
    // The live name is taken; the revoked name is created again (version 3 of its stream); of the twice-used name
    // exactly one create wins; the plain name is unaffected by the others.
    expect(codes[0]).toBe("KEY_NAME_TAKEN");
    expect(codes[1]).toBe("created");
    expect(codes.slice(2, 4).sort()).toEqual(["KEY_NAME_TAKEN", "created"]);
    expect(codes[4]).toBe("created");
    const versions = Object.fromEntries(
      (await created([revoked, twice, plain])).map((r) => [r.name, r.stream_version]),
    );
    expect(versions).toEqual({ [revoked]: 3, [twice]: 1, [plain]: 1 });
    expect(await liveKeys([live, revoked, twice, plain])).toEqual([live, revoked, twice, plain].sort());
  });

  it("a grantor whose access changed after authentication: that create is decided again with the new access", async () => {
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: bob, role: "member", permissions: ["read:volumes"], now: new Date() },
      },
      context(org, bob),
    );
    const [denied, allowed, others] = [uniqueId("denied"), uniqueId("allowed"), uniqueId("others")];
    // Bob authenticated as an owner (stale); the check in the statement sees he is a member now.
    const outcomes = await Promise.allSettled([
      commands.createApiKey(newKey(org, bob, denied, ["write:sandboxes"]), context(org, bob), owner),
      commands.createApiKey(newKey(org, bob, allowed, ["read:volumes"]), context(org, bob), owner),
      commands.createApiKey(newKey(org, alice, others, ["write:sandboxes"]), context(org, alice), owner),
    ]);
    expect(outcomes[0]).toMatchObject({ status: "rejected", reason: { code: "PERMISSIONS_NOT_GRANTABLE" } });
    expect(outcomes.slice(1).map((o) => o.status)).toEqual(["fulfilled", "fulfilled"]);
    expect(await liveKeys([denied, allowed, others])).toEqual([allowed, others].sort());
  });
});
