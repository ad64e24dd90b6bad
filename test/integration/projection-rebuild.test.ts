import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import { type KeyledgerEvent, keyStreamId } from "@keyledger/domain";
import { appendToStream, LOG_START, readAllAfter, readStream } from "@keyledger/event-store";
import {
  API_KEYS_PROJECTION,
  applyToReadModel,
  foldReadModel,
  loadProjectionStatus,
  type ReadModelState,
  rebuildProjection,
  rebuildStep,
  requestRebuild,
} from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";
import { readModelRows, writeKeyHistory } from "../support/key-history";

function context(organizationId: string, actorUserId: string): CommandContext {
  return { now: new Date(), metadata: { actorUserId, organizationId, authMethod: "jwt", requestId: null } };
}

async function eventTypes(db: Kysely<unknown>): Promise<Record<string, number>> {
  const result = await sql<{ event_type: string; n: string }>`
    SELECT event_type, count(*)::text AS n FROM events GROUP BY event_type`.execute(db);
  return Object.fromEntries(result.rows.map((r) => [r.event_type, Number(r.n)]));
}

async function eventCount(db: Kysely<unknown>): Promise<number> {
  const result = await sql<{ n: string }>`SELECT count(*)::text AS n FROM events`.execute(db);
  return Number(result.rows[0]?.n);
}

/**
 * Runs `work` in a transaction that took its transaction id before `meanwhile` runs and commits — as
 * `createApiKey` (FOR SHARE on the member row) and `changeMember` (FOR UPDATE, inbox insert) do before they read
 * the key stream. Its events then sort before `meanwhile`'s in (transaction id, position) order, though they
 * come after them in the stream.
 */
async function withEarlyTransactionId(
  db: Kysely<unknown>,
  meanwhile: () => Promise<unknown>,
  work: (trx: Kysely<unknown>) => Promise<void>,
): Promise<void> {
  let idTaken!: () => void;
  const taken = new Promise<void>((resolve) => {
    idTaken = resolve;
  });
  let proceed!: () => void;
  const gate = new Promise<void>((resolve) => {
    proceed = resolve;
  });
  const early = db.transaction().execute(async (trx) => {
    await sql`SELECT pg_current_xact_id()`.execute(trx);
    idTaken();
    await gate;
    await work(trx);
  });
  await taken;
  await meanwhile();
  proceed();
  await early;
}

async function appendInline(trx: Kysely<unknown>, streamId: string, event: KeyledgerEvent, organizationId: string) {
  const { version } = await readStream(trx, streamId);
  const recorded = await appendToStream(trx, streamId, version, [event], context(organizationId, "someone").metadata);
  for (const e of recorded) await applyToReadModel(trx, e);
}

describe("rebuilding the api_keys projection from the log", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  beforeAll(async () => {
    scratch = await createScratchDatabase(24);
    db = scratch.db;
  });
  afterAll(async () => {
    await scratch?.drop();
  });

  it("leaves every row equal to the live one after a mixed history written by concurrent writers", async () => {
    const stats = await writeKeyHistory(db, {
      organizations: ["org-a", "org-b", "org-c"],
      usersPerOrganization: 3,
      writers: 8,
      operationsPerWriter: 60,
      seed: 1,
    });
    const types = await eventTypes(db);
    for (const type of ["KeyCreated", "KeyUsed", "KeyRevoked", "KeyRotated", "MemberAccessChanged", "MemberRemoved"]) {
      expect(types[type], `${type} in ${JSON.stringify(types)} (${JSON.stringify(stats)})`).toBeGreaterThan(0);
    }
    expect(stats.byKind["use-as-read"], JSON.stringify(stats)).toBeGreaterThan(0);
    // Every use names the key its stream held when it was appended, and none follows that key's revocation.
    const misplacedUses = await sql<{ n: string }>`
      SELECT count(*)::text AS n FROM events u
       WHERE u.event_type = 'KeyUsed'
         AND ((SELECT c.data->>'keyId' FROM events c
                WHERE c.stream_id = u.stream_id AND c.event_type = 'KeyCreated' AND c.stream_version < u.stream_version
                ORDER BY c.stream_version DESC LIMIT 1) IS DISTINCT FROM u.data->>'keyId'
              OR EXISTS (SELECT 1 FROM events r
                          WHERE r.stream_id = u.stream_id AND r.event_type = 'KeyRevoked'
                            AND r.data->>'keyId' = u.data->>'keyId' AND r.stream_version < u.stream_version))`.execute(
      db,
    );
    expect(misplacedUses.rows[0]?.n).toBe("0");
    const live = await readModelRows(db);
    expect(live.apiKeys.length).toBeGreaterThan(10);

    const result = await rebuildProjection(db, API_KEYS_PROJECTION, { batchSize: 37 });

    expect(result.events).toBe(await eventCount(db));
    expect(await readModelRows(db)).toEqual(live);
    expect(result.rows).toEqual({ organization_members: live.members.length, api_keys: live.apiKeys.length });
    expect((await loadProjectionStatus(db, "api_keys"))?.status).toBe("live");
  });

  it("leaves the live tables alone until the swap, and loses no write made during the rebuild", async () => {
    const before = await readModelRows(db);
    await requestRebuild(db, API_KEYS_PROJECTION);
    for (let i = 0; i < 3; i++)
      expect((await rebuildStep(db, API_KEYS_PROJECTION, { batchSize: 25 })).kind).toBe("applied");
    const shadow = await sql<{ n: string }>`SELECT count(*)::text AS n FROM projection_rebuild.api_keys`.execute(db);
    expect(Number(shadow.rows[0]?.n)).toBeGreaterThan(0);
    expect(await readModelRows(db)).toEqual(before);

    // Writers keep going while the rebuild (restarted, in small batches) runs and swaps.
    const writing = writeKeyHistory(db, {
      organizations: ["org-d", "org-e"],
      usersPerOrganization: 3,
      writers: 6,
      operationsPerWriter: 50,
      seed: 2,
    });
    const rebuilding = rebuildProjection(db, API_KEYS_PROJECTION, { batchSize: 20, swapThreshold: 5 });
    await Promise.all([writing, rebuilding]);
    const afterConcurrentRebuild = await readModelRows(db);

    await rebuildProjection(db, API_KEYS_PROJECTION);
    expect(await readModelRows(db)).toEqual(afterConcurrentRebuild);
  });

  it("keeps each stream's version order where the log's commit-safe order inverts it", async () => {
    const commands = new KeyCommands(db);
    const org = `org-${randomUUID()}`;
    const user = "inverted-user";
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(org, user),
    );
    const stream = keyStreamId(org, user, "ci");
    const key = (keyId: string) => ({
      keyId,
      organizationId: org,
      userId: user,
      name: "ci",
      keyHash: randomUUID(),
      maskedValue: "dtn****",
      permissions: [],
      expiresAt: null,
    });
    const first = key(randomUUID());
    await commands.createApiKey(first, context(org, user));

    // Version 3 (re-create "ci") commits in a transaction older than version 2's (delete "ci").
    const second = key(randomUUID());
    await withEarlyTransactionId(
      db,
      () => commands.revokeApiKey({ organizationId: org, userId: user, name: "ci" }, "deleted", context(org, user)),
      (trx) =>
        appendInline(
          trx,
          stream,
          {
            type: "KeyCreated",
            data: { ...second, createdAt: new Date().toISOString(), expiresAt: null },
          },
          org,
        ),
    );
    // Version 5 (revoke, by a membership change) commits in a transaction older than version 4's (rotation).
    await withEarlyTransactionId(
      db,
      () =>
        commands.rotateApiKey(
          { organizationId: org, userId: user, name: "ci" },
          {
            keyHash: "rotated-hash",
            maskedValue: "dtn**rot",
            gracePeriodSeconds: 60,
            expiresAt: undefined,
            mayExtendExpiry: true,
          },
          context(org, user),
        ),
      (trx) =>
        appendInline(
          trx,
          stream,
          {
            type: "KeyRevoked",
            data: {
              keyId: second.keyId,
              organizationId: org,
              userId: user,
              name: "ci",
              keyHash: "rotated-hash",
              previousKeyHash: second.keyHash,
              reason: "permissions_unassigned",
              revokedAt: new Date().toISOString(),
            },
          },
          org,
        ),
    );

    // readAllAfter reads below the oldest running transaction of the whole server: wait until it has passed ours.
    let inLogOrder: number[] = [];
    for (let attempt = 0; inLogOrder.length < 5 && attempt < 600; attempt++) {
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      inLogOrder = [];
      for (let checkpoint = LOG_START; ; ) {
        const page = await readAllAfter(db, checkpoint, 1000);
        if (page.length === 0) break;
        for (const e of page) if (e.streamId === stream) inLogOrder.push(e.streamVersion);
        const last = page[page.length - 1] as (typeof page)[number];
        checkpoint = { transactionId: last.transactionId, globalPosition: last.globalPosition };
      }
    }
    expect(inLogOrder).toEqual([1, 3, 2, 5, 4]);

    const live = await readModelRows(db);
    const rows = await sql<{ key_id: string; key_hash: string; revoked_at: Date | null }>`
      SELECT key_id, key_hash, revoked_at FROM api_keys WHERE organization_id = ${org}`.execute(db);
    expect(rows.rows.find((r) => r.key_id === second.keyId)).toMatchObject({ key_hash: "rotated-hash" });
    expect(rows.rows.every((r) => r.revoked_at !== null)).toBe(true);

    await rebuildProjection(db, API_KEYS_PROJECTION, { batchSize: 3 });
    expect(await readModelRows(db)).toEqual(live);
  });

  it("folds in memory to the same rows, and applying every event twice changes nothing", async () => {
    const log = await sql<{ event_type: string; data: unknown }>`
      SELECT event_type, data FROM events e ORDER BY e.global_position`.execute(db);
    const events = log.rows.map((r) => ({ type: r.event_type, data: r.data }) as KeyledgerEvent);
    expect(events.length).toBeGreaterThan(100);
    const once = foldReadModel(new Map(), events);
    const twice = foldReadModel(
      new Map(),
      events.flatMap((e) => [e, e]),
    );
    const rows = (state: ReadModelState, table: "api_keys" | "organization_members") =>
      [...(state.get(table)?.values() ?? [])].map((row) => JSON.parse(JSON.stringify(row)));
    expect(rows(twice, "api_keys")).toEqual(rows(once, "api_keys"));
    expect(rows(twice, "organization_members")).toEqual(rows(once, "organization_members"));

    // The memory executor and the SQL one agree with each other and with the live tables.
    const live = await readModelRows(db);
    const byKey = (list: unknown[], key: (row: Record<string, unknown>) => string) =>
      [...list].map((row) => JSON.parse(JSON.stringify(row))).sort((a, b) => key(a).localeCompare(key(b)));
    // `list_item` is generated by Postgres from the other columns (migration 0009): no fold writes it.
    const withoutListItem = (row: unknown) => {
      const { list_item: _generated, ...rest } = row as Record<string, unknown>;
      return rest;
    };
    expect(byKey(rows(once, "api_keys"), (r) => String(r.key_id))).toEqual(
      byKey(live.apiKeys.map(withoutListItem), (r) => String(r.key_id)),
    );
    expect(byKey(rows(once, "organization_members"), (r) => `${r.organization_id}/${r.user_id}`)).toEqual(
      byKey(live.members, (r) => `${r.organization_id}/${r.user_id}`),
    );

    // In SQL too: each event applied again right after itself, into a rebuild's shadow tables.
    await requestRebuild(db, API_KEYS_PROJECTION);
    await db.transaction().execute(async (trx) => {
      await sql`SELECT set_config('search_path', 'projection_rebuild, public', true)`.execute(trx);
      for (let i = 0; i < events.length; i += 200) {
        await API_KEYS_PROJECTION.apply(
          trx,
          events.slice(i, i + 200).flatMap((e) => [e, e]),
        );
      }
      const shadowKeys = await sql`SELECT * FROM api_keys ORDER BY key_id`.execute(trx);
      expect(shadowKeys.rows).toEqual(live.apiKeys);
      const shadowMembers = await sql`SELECT * FROM organization_members ORDER BY organization_id, user_id`.execute(
        trx,
      );
      expect(shadowMembers.rows).toEqual(live.members);
    });
    await rebuildProjection(db, API_KEYS_PROJECTION);
  });
});
