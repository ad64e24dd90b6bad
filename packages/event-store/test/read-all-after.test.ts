import { setTimeout as sleep } from "node:timers/promises";
import type { EventMetadata, KeyledgerEvent } from "@keyledger/domain";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../../../test/support/database";
import {
  appendToStream,
  checkpointOf,
  hasEventsAfter,
  LOG_START,
  type LogCheckpoint,
  type RecordedEvent,
  readAllAfter,
} from "../src/index";

const metadata: EventMetadata = { actorUserId: null, organizationId: "org-1", authMethod: "system", requestId: null };

function used(tag: string): KeyledgerEvent {
  return {
    type: "KeyUsed",
    data: { keyId: tag, organizationId: "org-1", userId: "user-1", name: "ci", usedAt: new Date().toISOString() },
  };
}

const tagOf = (event: RecordedEvent) => (event.data as { keyId: string }).keyId;

/** A reader of the whole log that keeps a checkpoint, as the projector and relay do. */
class CheckpointingReader {
  checkpoint: LogCheckpoint = LOG_START;
  readonly seen: RecordedEvent[] = [];
  readonly checkpoints: LogCheckpoint[] = [];
  constructor(
    private readonly db: Kysely<unknown>,
    private readonly batchSize = 500,
  ) {}

  /** Reads one batch after the checkpoint and moves the checkpoint to its last event. */
  async readBatch(): Promise<RecordedEvent[]> {
    const batch = await readAllAfter(this.db, this.checkpoint, this.batchSize);
    const last = batch.at(-1);
    if (last) {
      this.checkpoint = checkpointOf(last);
      this.checkpoints.push(this.checkpoint);
    }
    this.seen.push(...batch);
    return batch;
  }

  /** Reads batches until one comes back empty. */
  async catchUp(): Promise<RecordedEvent[]> {
    const read: RecordedEvent[] = [];
    for (;;) {
      const batch = await this.readBatch();
      if (batch.length === 0) return read;
      read.push(...batch);
    }
  }

  /** Catches up until `count` events in total were seen (other transactions in the cluster may delay them). */
  async readUntil(count: number, deadlineMs = 30_000): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    while (this.seen.length < count && Date.now() < deadline) {
      await this.catchUp();
      if (this.seen.length < count) await sleep(20);
    }
  }
}

function compareCheckpoints(a: LogCheckpoint, b: LogCheckpoint): number {
  const tx = BigInt(a.transactionId) - BigInt(b.transactionId);
  if (tx !== 0n) return tx < 0n ? -1 : 1;
  const pos = BigInt(a.globalPosition) - BigInt(b.globalPosition);
  return pos === 0n ? 0 : pos < 0n ? -1 : 1;
}

describe("readAllAfter: an event whose transaction commits late is never skipped", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  beforeAll(async () => {
    scratch = await createScratchDatabase(12);
    db = scratch.db;
  });
  afterAll(async () => {
    await scratch.drop();
  });

  it("holds back a committed later position while an earlier position's transaction is open", async () => {
    const reader = new CheckpointingReader(db);
    await reader.readUntil(0);

    // A appends first (lower global position), B appends after and commits first.
    const a = await db.startTransaction().execute();
    const [eventA] = await appendToStream(a, "late-commit:a", 0, [used("A")], metadata);
    const b = await db.startTransaction().execute();
    const [eventB] = await appendToStream(b, "late-commit:b", 0, [used("B")], metadata);
    await b.commit().execute();
    expect(BigInt(eventA?.globalPosition as string)).toBeLessThan(BigInt(eventB?.globalPosition as string));

    // B is committed and visible to a plain query: a reader by global position alone would return B now and then
    // checkpoint past A's position, skipping A forever.
    const visible = await sql<{
      n: string;
    }>`SELECT count(*) AS n FROM events WHERE stream_id = 'late-commit:b'`.execute(db);
    expect(Number(visible.rows[0]?.n)).toBe(1);

    // The commit-safe reader does not return B while A is open, and knows there is more to come.
    expect(await reader.catchUp()).toEqual([]);
    expect(reader.checkpoint).toEqual(LOG_START);
    expect(await hasEventsAfter(db, reader.checkpoint)).toBe(true);

    await a.commit().execute();
    await reader.readUntil(2);
    expect(reader.seen.map(tagOf)).toEqual(["A", "B"]);
    expect(await reader.catchUp()).toEqual([]);
    expect(await hasEventsAfter(db, reader.checkpoint)).toBe(false);
  });

  it("returns an earlier transaction's later position before a later transaction's, and checkpoints past neither", async () => {
    const reader = new CheckpointingReader(db);
    await reader.catchUp();
    const before = reader.seen.length;

    // C takes its transaction id first but appends last (highest global position); D appends in between.
    const c = await db.startTransaction().execute();
    await sql`SELECT pg_current_xact_id()`.execute(c);
    const d = await db.startTransaction().execute();
    const [eventD] = await appendToStream(d, "late-commit:d", 0, [used("D")], metadata);
    const [eventC] = await appendToStream(c, "late-commit:c", 0, [used("C")], metadata);
    expect(BigInt(eventC?.globalPosition as string)).toBeGreaterThan(BigInt(eventD?.globalPosition as string));
    expect(BigInt(eventC?.transactionId as string)).toBeLessThan(BigInt(eventD?.transactionId as string));

    // D commits while C is open: D's transaction is newer than C's, so it is held back.
    await d.commit().execute();
    expect(await reader.catchUp()).toEqual([]);

    await c.commit().execute();
    await reader.readUntil(before + 2);
    expect(reader.seen.slice(before).map(tagOf)).toEqual(["C", "D"]);
  });

  it("continuing from a checkpoint taken mid-way, a batch-by-batch reader sees each event exactly once", async () => {
    const reader = new CheckpointingReader(db, 1);
    await reader.catchUp();
    const before = reader.seen.length;

    const a = await db.startTransaction().execute();
    await appendToStream(a, "mid-way:a", 0, [used("a1"), used("a2")], metadata);
    for (const tag of ["b1", "b2", "b3"]) {
      await db.transaction().execute((trx) => appendToStream(trx, `mid-way:${tag}`, 0, [used(tag)], metadata));
    }
    await reader.catchUp();
    expect(reader.seen.length).toBe(before);
    await a.commit().execute();
    await reader.readUntil(before + 5);
    const tags = reader.seen.slice(before).map(tagOf);
    expect(tags).toEqual(["a1", "a2", "b1", "b2", "b3"]);
  });

  it("never returns a rolled-back append", async () => {
    const reader = new CheckpointingReader(db);
    await reader.catchUp();
    const before = reader.seen.length;
    const doomed = await db.startTransaction().execute();
    await appendToStream(doomed, "rolled-back:x", 0, [used("X")], metadata);
    await db.transaction().execute((trx) => appendToStream(trx, "rolled-back:y", 0, [used("Y")], metadata));
    await doomed.rollback().execute();
    await reader.readUntil(before + 1);
    expect(reader.seen.slice(before).map(tagOf)).toEqual(["Y"]);
  });

  it("concurrent writers with random commit delays against a checkpointing reader: every event exactly once", async () => {
    const reader = new CheckpointingReader(db, 7);
    await reader.catchUp();
    const before = reader.seen.length;

    const committed: string[] = [];
    const rolledBack: string[] = [];
    const WRITERS = 6;
    const TRANSACTIONS = 25;
    let writersDone = false;

    const writer = async (w: number) => {
      for (let t = 0; t < TRANSACTIONS; t++) {
        const count = 1 + ((w + t) % 3);
        const tags = Array.from({ length: count }, (_, i) => `w${w}-t${t}-e${i}`);
        const rollback = (w * 31 + t) % 11 === 0;
        const trx = await db.startTransaction().execute();
        try {
          // Some transactions take their id before appending, so id order and position order diverge.
          if (t % 2 === 0) await sql`SELECT pg_current_xact_id()`.execute(trx);
          await sleep(Math.floor(Math.random() * 4));
          await appendToStream(
            trx,
            `random:w${w}-t${t}`,
            0,
            tags.map((tag) => used(tag)),
            metadata,
          );
          await sleep(Math.floor(Math.random() * 8));
          if (rollback) {
            await trx.rollback().execute();
            rolledBack.push(...tags);
          } else {
            await trx.commit().execute();
            committed.push(...tags);
          }
        } catch (error) {
          await trx.rollback().execute();
          throw error;
        }
      }
    };

    const readerLoop = (async () => {
      while (!writersDone) {
        await reader.readBatch();
        await sleep(1);
      }
    })();
    await Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));
    writersDone = true;
    await readerLoop;
    await reader.readUntil(before + committed.length);
    await reader.catchUp();

    const seen = reader.seen.slice(before).map(tagOf);
    expect(committed.length).toBeGreaterThan(100);
    expect(rolledBack.length).toBeGreaterThan(0);
    expect(new Set(seen).size).toBe(seen.length);
    expect([...seen].sort()).toEqual([...committed].sort());
    for (const tag of rolledBack) expect(seen).not.toContain(tag);
    // The checkpoint only moves forward.
    for (let i = 1; i < reader.checkpoints.length; i++) {
      expect(
        compareCheckpoints(reader.checkpoints[i - 1] as LogCheckpoint, reader.checkpoints[i] as LogCheckpoint),
      ).toBe(-1);
    }
    // Events of one transaction come together and in position order.
    const byStream = new Map<string, string[]>();
    for (const event of reader.seen.slice(before)) {
      byStream.set(event.streamId, [...(byStream.get(event.streamId) ?? []), tagOf(event)]);
    }
    for (const tags of byStream.values()) expect(tags).toEqual([...tags].sort());
  });
});

describe("hasEventsAfter", () => {
  let scratch: ScratchDatabase;
  beforeAll(async () => {
    scratch = await createScratchDatabase(2);
  });
  afterAll(async () => {
    await scratch.drop();
  });

  it("walks the commit-order index from the checkpoint, never the whole log (a young table has no statistics)", async () => {
    const db = scratch.db;
    for (let i = 0; i < 30; i++) {
      await appendToStream(
        db,
        `index-walk:${i}`,
        0,
        Array.from({ length: 20 }, (_, j) => used(`${i}-${j}`)),
        metadata,
      );
    }
    // Commit-safe reading stops before any transaction still open in the cluster (transaction ids are shared by
    // every database: other suites' transactions hold it back for a moment), so wait until all 600 are readable.
    let events = await readAllAfter(db, LOG_START, 1000);
    for (const deadline = Date.now() + 10_000; events.length < 600 && Date.now() < deadline; ) {
      await sleep(50);
      events = await readAllAfter(db, LOG_START, 1000);
    }
    expect(events).toHaveLength(600);
    const last = events.at(-1) as RecordedEvent;
    const secondLast = events.at(-2) as RecordedEvent;
    await db.transaction().execute(async (trx) => {
      // The session's table statistics not yet reported (they only grow within a transaction): how the two
      // questions read the events table.
      const scans = async () => {
        const result = await sql<{ seq_scan: string; idx_scan: string }>`
          SELECT seq_scan::text AS seq_scan, coalesce(idx_scan, 0)::text AS idx_scan
            FROM pg_stat_xact_user_tables WHERE relname = 'events'`.execute(trx);
        const row = result.rows[0];
        return { seq: Number(row?.seq_scan ?? 0), index: Number(row?.idx_scan ?? 0) };
      };
      const before = await scans();
      expect(await hasEventsAfter(trx, checkpointOf(secondLast))).toBe(true);
      expect(await hasEventsAfter(trx, checkpointOf(last))).toBe(false);
      const after = await scans();
      expect({ seq: after.seq - before.seq, index: after.index - before.index }).toEqual({ seq: 0, index: 2 });
    });
  });
});
