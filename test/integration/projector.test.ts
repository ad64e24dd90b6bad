import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import { loadChainHead, SEALED_CHANNEL } from "@keyledger/audit-log";
import {
  API_KEYS_PROJECTION,
  loadProjectionStatus,
  PgNotificationListener,
  Projector,
  requestRebuild,
} from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";
import { readModelRows } from "../support/key-history";
import { until } from "../support/until";

function context(organizationId: string): CommandContext {
  return { now: new Date(), metadata: { actorUserId: null, organizationId, authMethod: "internal", requestId: null } };
}

async function sealedPosition(db: Kysely<unknown>, position: string): Promise<boolean> {
  const result = await sql`SELECT 1 FROM event_seals WHERE global_position = ${position}::bigint`.execute(db);
  return result.rows.length > 0;
}

describe("the projector loop", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  let listener: PgNotificationListener;
  beforeAll(async () => {
    scratch = await createScratchDatabase(12);
    db = scratch.db;
    listener = new PgNotificationListener({ connectionString: scratch.url, reconnectDelayMs: 100 });
  });
  afterAll(async () => {
    await listener?.close();
    await scratch?.drop();
  });

  it("wakes on the append's notification (its poll is an hour away), seals, and says so on keyledger_sealed", async () => {
    const projector = new Projector({ db, notifications: listener, pollIntervalMs: 3_600_000 });
    const sealedNotices: string[] = [];
    listener.subscribe(SEALED_CHANNEL, (payload) => {
      if (payload !== "") sealedNotices.push(payload);
    });
    await listener.ready();
    projector.start();
    try {
      const org = `org-${randomUUID()}`;
      for (let i = 0; i < 5; i++) {
        const committed: string[] = [];
        const recording = new KeyCommands(db, (events) => committed.push(...events.map((e) => e.globalPosition)));
        await recording.changeMember(
          {
            type: "ChangeMemberAccess",
            data: { organizationId: org, userId: `user-${i}`, role: "member", permissions: [], now: new Date() },
          },
          context(org),
        );
        const position = committed[0] as string;
        await until(`position ${position} sealed`, async () =>
          (await sealedPosition(db, position)) ? true : undefined,
        );
      }
      const head = await loadChainHead(db);
      await until("the sealed notification", async () => (sealedNotices.includes(head.chainIndex) ? true : undefined));
      // The inline projection's checkpoint follows the log.
      const status = await loadProjectionStatus(db, "api_keys");
      expect(status?.status).toBe("live");
      expect(status?.snapshot).toMatch(/^\d+:\d+:/);
    } finally {
      await projector.stop();
    }
  });

  it("polls when there are no notifications, and carries a requested rebuild through to the swap", async () => {
    const before = await readModelRows(db);
    await requestRebuild(db, API_KEYS_PROJECTION);
    const projector = new Projector({ db, pollIntervalMs: 50, rebuildBatchSize: 2 });
    projector.start();
    try {
      const org = `org-${randomUUID()}`;
      const committed: string[] = [];
      const recording = new KeyCommands(db, (events) => committed.push(...events.map((e) => e.globalPosition)));
      await recording.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: org, userId: "polled", role: "owner", permissions: [], now: new Date() },
        },
        context(org),
      );
      await until("the polled seal", async () =>
        (await sealedPosition(db, committed[0] as string)) ? true : undefined,
      );
      await until("the swap", async () =>
        (await loadProjectionStatus(db, "api_keys"))?.status === "live" ? true : undefined,
      );
      // The rebuilt tables hold what they held, plus the member written meanwhile (applied inline, not lost).
      const after = await readModelRows(db);
      expect(after.apiKeys).toEqual(before.apiKeys);
      expect(after.members).toEqual(expect.arrayContaining(before.members));
      expect(after.members.filter((m) => !before.members.some((b) => JSON.stringify(b) === JSON.stringify(m)))).toEqual(
        [expect.objectContaining({ organization_id: org, user_id: "polled", role: "owner" })],
      );
    } finally {
      await projector.stop();
    }
  });
});
