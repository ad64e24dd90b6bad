import type { EventMetadata, KeyledgerEvent } from "@keyledger/domain";
import {
  APPENDED_CTE,
  appendToNewStreamsInOneStatement,
  appendToStream,
  appendToStreamInOneStatement,
  checkpointOf,
  LOG_START,
  type LogCheckpoint,
  loadCheckpoint,
  pendingMigrations,
  type RecordedEvent,
  readAllAfter,
  readStream,
  runMigrations,
  StreamVersionConflict,
  storeCheckpoint,
} from "@keyledger/event-store";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueId } from "./api-harness";

const metadata: EventMetadata = { actorUserId: "user-1", organizationId: "org-1", authMethod: "jwt", requestId: null };

/** Events of made-up types: the store does not interpret `type` or `data`. */
function event(type: string, data: Record<string, unknown>): KeyledgerEvent {
  return { type, data } as unknown as KeyledgerEvent;
}

/** Whether the event comes after the checkpoint in commit order (transaction id, then global position). */
function isAfter(e: RecordedEvent, checkpoint: LogCheckpoint): boolean {
  const [t, p] = [BigInt(e.transactionId), BigInt(e.globalPosition)];
  const [ct, cp] = [BigInt(checkpoint.transactionId), BigInt(checkpoint.globalPosition)];
  return t > ct || (t === ct && p > cp);
}

function append(db: Kysely<unknown>, streamId: string, expectedVersion: number, events: KeyledgerEvent[]) {
  return db.transaction().execute((trx) => appendToStream(trx, streamId, expectedVersion, events, metadata));
}

/**
 * The event store's behaviour, run against any Kysely the store is meant to work on (Postgres through pg, and
 * PGlite). Stream and checkpoint names are unique, so the suite can share a database with other tests.
 */
export function describeEventStore(label: string, open: () => Promise<Kysely<unknown>>) {
  describe(`event store on ${label}`, () => {
    let db: Kysely<unknown>;
    beforeAll(async () => {
      db = await open();
      await runMigrations(db);
    });
    afterAll(async () => {
      await db?.destroy();
    });

    it("runMigrations leaves no migration pending and applies nothing twice", async () => {
      expect(await pendingMigrations(db)).toEqual([]);
      const again = await runMigrations(db);
      expect(again.applied).toEqual([]);
      expect(again.alreadyApplied.length).toBeGreaterThanOrEqual(2);
    });

    it("appends to a stream and reads it back in version order", async () => {
      const streamId = uniqueId("stream");
      const appendedAt = Date.now();
      const first = await append(db, streamId, 0, [event("Opened", { n: 1 }), event("Noted", { n: 2 })]);
      expect(first.map((e) => e.streamVersion)).toEqual([1, 2]);
      // Time-ordered ids (UUID version 7): appends add to the right edge of the event_id index.
      for (const recorded of first) {
        expect(recorded.eventId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
        const idTime = Number.parseInt(recorded.eventId.slice(0, 8) + recorded.eventId.slice(9, 13), 16);
        expect(Math.abs(idTime - appendedAt)).toBeLessThan(5_000);
      }
      expect(first[0]?.transactionId).toBe(first[1]?.transactionId);
      expect(BigInt(first[1]?.globalPosition ?? 0)).toBeGreaterThan(BigInt(first[0]?.globalPosition ?? 0));
      await append(db, streamId, 2, [event("Closed", { at: "2026-01-01T00:00:00.000Z" })]);

      const read = await readStream(db, streamId);
      expect(read.version).toBe(3);
      expect(read.events.map((e) => [e.type, e.streamVersion, e.data])).toEqual([
        ["Opened", 1, { n: 1 }],
        ["Noted", 2, { n: 2 }],
        ["Closed", 3, { at: "2026-01-01T00:00:00.000Z" }],
      ]);
      expect(read.events[0]?.metadata).toEqual(metadata);
      expect(read.events[0]?.occurredAt).toBeInstanceOf(Date);
      expect(typeof read.events[0]?.globalPosition).toBe("string");
      expect(typeof read.events[0]?.transactionId).toBe("string");
    });

    it("leaves skipped event types out but still reports the last version", async () => {
      const streamId = uniqueId("stream");
      await append(db, streamId, 0, [event("Opened", {}), event("Used", {}), event("Used", {})]);
      const read = await readStream(db, streamId, { skipTypes: ["Used"] });
      expect(read.version).toBe(3);
      expect(read.events.map((e) => e.type)).toEqual(["Opened"]);
    });

    it("reads an unknown stream as empty at version 0", async () => {
      expect(await readStream(db, uniqueId("stream"))).toEqual({ version: 0, events: [] });
    });

    it("rejects an append at a stale version with StreamVersionConflict and appends nothing", async () => {
      const streamId = uniqueId("stream");
      await append(db, streamId, 0, [event("Opened", {})]);
      await expect(append(db, streamId, 0, [event("Opened", { again: true })])).rejects.toBeInstanceOf(
        StreamVersionConflict,
      );
      const read = await readStream(db, streamId);
      expect(read.version).toBe(1);
      expect(read.events.map((e) => e.data)).toEqual([{}]);
    });

    it("keeps nothing of a transaction that rolls back", async () => {
      const streamId = uniqueId("stream");
      await expect(
        db.transaction().execute(async (trx) => {
          await appendToStream(trx, streamId, 0, [event("Opened", {})], metadata);
          throw new Error("command failed after appending");
        }),
      ).rejects.toThrow("command failed after appending");
      expect(await readStream(db, streamId)).toEqual({ version: 0, events: [] });
    });

    describe("appendToStreamInOneStatement", () => {
      const table = `one_statement_writes_${Date.now()}`;
      beforeAll(async () => {
        await sql`CREATE TABLE ${sql.id(table)} (stream_id text PRIMARY KEY, note text NOT NULL)`.execute(db);
      });
      const alsoWrite = (streamId: string, note: string) =>
        sql`INSERT INTO ${sql.id(table)} (stream_id, note)
            SELECT ${streamId}, ${note} WHERE EXISTS (SELECT 1 FROM ${sql.id(APPENDED_CTE)})`;
      const written = async (streamId: string) =>
        (await sql<{ note: string }>`SELECT note FROM ${sql.id(table)} WHERE stream_id = ${streamId}`.execute(db)).rows;
      const now = new Date("2026-01-02T03:04:05.678Z");

      it("appends the events and runs alsoWrite in the same statement", async () => {
        const streamId = uniqueId("stream");
        const recorded = await appendToStreamInOneStatement(
          db,
          streamId,
          0,
          [event("Opened", { n: 1 }), event("Noted", { n: 2 })],
          metadata,
          now,
          { onlyIf: sql`SELECT 1`, alsoWrite: [alsoWrite(streamId, "written")] },
        );
        expect(recorded?.map((e) => [e.type, e.streamVersion, e.data, e.occurredAt.toISOString()])).toEqual([
          ["Opened", 1, { n: 1 }, now.toISOString()],
          ["Noted", 2, { n: 2 }, now.toISOString()],
        ]);
        expect(recorded?.[0]?.metadata).toEqual(metadata);
        const read = await readStream(db, streamId);
        expect(read.events.map((e) => e.eventId)).toEqual(recorded?.map((e) => e.eventId));
        expect(await written(streamId)).toEqual([{ note: "written" }]);
        const next = await appendToStreamInOneStatement(db, streamId, 2, [event("Closed", {})], metadata, now);
        expect(next?.map((e) => e.streamVersion)).toEqual([3]);
      });

      it("writes nothing when the guard returns no row", async () => {
        const streamId = uniqueId("stream");
        const result = await appendToStreamInOneStatement(db, streamId, 0, [event("Opened", {})], metadata, now, {
          onlyIf: sql`SELECT 1 WHERE false`,
          alsoWrite: [alsoWrite(streamId, "must not be written")],
        });
        expect(result).toBeUndefined();
        expect(await readStream(db, streamId)).toEqual({ version: 0, events: [] });
        expect(await written(streamId)).toEqual([]);
      });

      it("rejects a stale version with StreamVersionConflict, and a version the stream has not reached", async () => {
        const streamId = uniqueId("stream");
        await append(db, streamId, 0, [event("Opened", {})]);
        await expect(
          appendToStreamInOneStatement(db, streamId, 0, [event("Opened", { again: true })], metadata, now),
        ).rejects.toBeInstanceOf(StreamVersionConflict);
        expect(await appendToStreamInOneStatement(db, streamId, 5, [event("Gap", {})], metadata, now)).toBeUndefined();
        expect((await readStream(db, streamId)).version).toBe(1);
      });

      it("keeps no event when a statement of alsoWrite fails", async () => {
        const streamId = uniqueId("stream");
        await expect(
          appendToStreamInOneStatement(db, streamId, 0, [event("Opened", {})], metadata, now, {
            alsoWrite: [sql`INSERT INTO ${sql.id(table)} (stream_id, note) SELECT ${streamId}, (1 / 0)::text`],
          }),
        ).rejects.toThrow(/division by zero/);
        expect(await readStream(db, streamId)).toEqual({ version: 0, events: [] });
      });
    });

    describe("appendToNewStreamsInOneStatement", () => {
      const table = `new_streams_writes_${Date.now()}`;
      beforeAll(async () => {
        await sql`CREATE TABLE ${sql.id(table)} (stream_id text PRIMARY KEY)`.execute(db);
      });
      const now = new Date("2026-01-02T03:04:05.678Z");
      const newStream = (streamId: string, n: number, by = metadata) => ({
        streamId,
        event: event("Opened", { n }),
        metadata: by,
        occurredAt: now,
      });
      const alsoWrite = sql`INSERT INTO ${sql.id(table)} (stream_id) SELECT stream_id FROM ${sql.id(APPENDED_CTE)}`;
      const written = async (streamIds: string[]) =>
        (
          await sql<{ stream_id: string }>`SELECT stream_id FROM ${sql.id(table)}
                                           WHERE stream_id = ANY(${streamIds}::text[]) ORDER BY stream_id`.execute(db)
        ).rows.map((row) => row.stream_id);

      it("writes the first event of each new stream, with its own metadata, and alsoWrite, in one transaction", async () => {
        const [a, b, c] = [uniqueId("new-a"), uniqueId("new-b"), uniqueId("new-c")];
        const other: EventMetadata = { ...metadata, actorUserId: "user-2", requestId: "req-2" };
        const recorded = await appendToNewStreamsInOneStatement(
          db,
          [newStream(a, 1), newStream(b, 2, other), newStream(c, 3)],
          { alsoWrite: [alsoWrite] },
        );
        expect(recorded.map((e) => [e?.streamId, e?.streamVersion, e?.data, e?.occurredAt.toISOString()])).toEqual([
          [a, 1, { n: 1 }, now.toISOString()],
          [b, 1, { n: 2 }, now.toISOString()],
          [c, 1, { n: 3 }, now.toISOString()],
        ]);
        expect(recorded[1]?.metadata).toEqual(other);
        expect(new Set(recorded.map((e) => e?.transactionId)).size).toBe(1);
        for (const [i, streamId] of [a, b, c].entries()) {
          expect((await readStream(db, streamId)).events.map((e) => e.eventId)).toEqual([recorded[i]?.eventId]);
        }
        expect(await written([a, b, c])).toEqual([a, b, c].sort());
      });

      it("skips, and only skips, a stream with history, a second append to one stream, and streams left out", async () => {
        const [old, fresh, twice, barred] = ["old", "fresh", "twice", "barred"].map((name) => uniqueId(name)) as [
          string,
          string,
          string,
          string,
        ];
        await append(db, old, 0, [event("Opened", { n: 0 })]);
        const recorded = await appendToNewStreamsInOneStatement(
          db,
          [newStream(old, 1), newStream(fresh, 2), newStream(twice, 3), newStream(twice, 4), newStream(barred, 5)],
          {
            onlyStreams: sql`SELECT unnest(${[old, fresh, twice]}::text[]) AS stream_id`,
            alsoWrite: [alsoWrite],
          },
        );
        expect(recorded.map((e) => (e === undefined ? undefined : e.data))).toEqual([
          undefined,
          { n: 2 },
          { n: 3 },
          undefined,
          undefined,
        ]);
        expect((await readStream(db, old)).events.map((e) => e.data)).toEqual([{ n: 0 }]);
        expect((await readStream(db, twice)).events.map((e) => e.data)).toEqual([{ n: 3 }]);
        expect(await readStream(db, barred)).toEqual({ version: 0, events: [] });
        expect(await written([old, fresh, twice, barred])).toEqual([fresh, twice].sort());
      });

      it("keeps no event when a statement of alsoWrite fails", async () => {
        const [a, b] = [uniqueId("new-a"), uniqueId("new-b")];
        await expect(
          appendToNewStreamsInOneStatement(db, [newStream(a, 1), newStream(b, 2)], {
            alsoWrite: [sql`INSERT INTO ${sql.id(table)} (stream_id) SELECT (1 / 0)::text`],
          }),
        ).rejects.toThrow(/division by zero/);
        expect(await readStream(db, a)).toEqual({ version: 0, events: [] });
        expect(await readStream(db, b)).toEqual({ version: 0, events: [] });
      });
    });

    it("reads the whole log after a checkpoint in commit order, up to the limit", async () => {
      const a = uniqueId("stream");
      const b = uniqueId("stream");
      const [start] = await append(db, a, 0, [event("Opened", { i: 0 })]);
      await append(db, b, 0, [event("Opened", { i: 1 })]);
      await append(db, a, 1, [event("Noted", { i: 2 }), event("Noted", { i: 3 })]);
      const checkpoint = checkpointOf(start as RecordedEvent);

      // Committed events become readable once every older transaction on the server has ended (other suites'
      // transactions included): wait for that, rather than assume the server is otherwise idle.
      let after: RecordedEvent[] = [];
      let mine: RecordedEvent[] = [];
      for (const deadline = Date.now() + 60_000; mine.length < 3 && Date.now() < deadline; ) {
        after = await readAllAfter(db, checkpoint, 10_000);
        mine = after.filter((e) => e.streamId === a || e.streamId === b);
        if (mine.length < 3) await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect(mine.map((e) => e.data)).toEqual([{ i: 1 }, { i: 2 }, { i: 3 }]);
      expect(after.every((e) => isAfter(e, checkpoint))).toBe(true);
      const order = after.map((e) => [BigInt(e.transactionId), BigInt(e.globalPosition)] as const);
      const sorted = [...order].sort(([t1, p1], [t2, p2]) => (t1 !== t2 ? (t1 < t2 ? -1 : 1) : p1 < p2 ? -1 : 1));
      expect(order).toEqual(sorted);

      const one = await readAllAfter(db, checkpoint, 1);
      expect(one).toHaveLength(1);
      expect(await readAllAfter(db, LOG_START, 1)).toHaveLength(1);
    });

    it("stores and loads checkpoints, starting at LOG_START", async () => {
      const name = uniqueId("reader");
      expect(await loadCheckpoint(db, name)).toEqual(LOG_START);
      const [first] = await append(db, uniqueId("stream"), 0, [event("Opened", {})]);
      await db.transaction().execute((trx) => storeCheckpoint(trx, name, checkpointOf(first as RecordedEvent)));
      expect(await loadCheckpoint(db, name)).toEqual(checkpointOf(first as RecordedEvent));
      const [second] = await append(db, uniqueId("stream"), 0, [event("Opened", {})]);
      await db.transaction().execute((trx) => storeCheckpoint(trx, name, checkpointOf(second as RecordedEvent)));
      expect(await loadCheckpoint(db, name)).toEqual(checkpointOf(second as RecordedEvent));
      expect(await readAllAfter(db, await loadCheckpoint(db, name), 10_000)).not.toContainEqual(
        expect.objectContaining({ eventId: second?.eventId }),
      );
    });
  });
}
