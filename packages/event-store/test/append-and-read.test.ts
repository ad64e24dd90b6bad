import type { EventMetadata, KeyledgerEvent } from "@keyledger/domain";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectTestDatabase } from "../../../test/support/database";
import {
  appendToStream,
  LOG_START,
  loadCheckpoint,
  readStream,
  StreamVersionConflict,
  storeCheckpoint,
} from "../src/index";

const metadata: EventMetadata = {
  actorUserId: "user-1",
  organizationId: "org-1",
  authMethod: "system",
  requestId: "req-1",
};

let counter = 0;
const uniqueStream = () => `test-stream:${process.pid}-${Date.now().toString(36)}-${++counter}`;

function used(n: number): KeyledgerEvent {
  return {
    type: "KeyUsed",
    data: { keyId: `k${n}`, organizationId: "org-1", userId: "user-1", name: "ci", usedAt: new Date(n).toISOString() },
  };
}
function removed(n: number): KeyledgerEvent {
  return {
    type: "MemberRemoved",
    data: { organizationId: "org-1", userId: `u${n}`, removedAt: new Date(n).toISOString() },
  };
}

describe("appendToStream / readStream", () => {
  let db: Kysely<unknown>;
  beforeAll(() => {
    db = connectTestDatabase(6);
  });
  afterAll(async () => {
    await db.destroy();
  });

  it("appends to a new stream at expected version 0, with consecutive versions and one transaction", async () => {
    const stream = uniqueStream();
    const occurredAt = new Date("2030-01-01T00:00:00.000Z");
    const recorded = await db
      .transaction()
      .execute((trx) => appendToStream(trx, stream, 0, [used(1), removed(2), used(3)], metadata, occurredAt));
    expect(recorded.map((e) => e.streamVersion)).toEqual([1, 2, 3]);
    expect(recorded.map((e) => e.type)).toEqual(["KeyUsed", "MemberRemoved", "KeyUsed"]);
    expect(new Set(recorded.map((e) => e.transactionId)).size).toBe(1);
    const positions = recorded.map((e) => BigInt(e.globalPosition));
    expect(positions[1]).toBeGreaterThan(positions[0] as bigint);
    expect(positions[2]).toBeGreaterThan(positions[1] as bigint);
    for (const event of recorded) {
      expect(event.streamId).toBe(stream);
      expect(event.eventId).toMatch(/^[0-9a-f-]{36}$/);
      expect(event.metadata).toEqual(metadata);
      expect(event.occurredAt.toISOString()).toBe(occurredAt.toISOString());
      expect(typeof event.globalPosition).toBe("string");
      expect(typeof event.transactionId).toBe("string");
    }

    const read = await readStream(db, stream);
    expect(read.version).toBe(3);
    expect(read.events.map((e) => e.eventId)).toEqual(recorded.map((e) => e.eventId));
    expect(read.events.map((e) => e.data)).toEqual([used(1).data, removed(2).data, used(3).data]);
  });

  it("appending nothing writes nothing and returns []", async () => {
    const stream = uniqueStream();
    expect(await appendToStream(db, stream, 0, [], metadata)).toEqual([]);
    expect(await readStream(db, stream)).toEqual({ version: 0, events: [] });
  });

  it("appends at the stream's current version and continues its numbering", async () => {
    const stream = uniqueStream();
    await appendToStream(db, stream, 0, [used(1)], metadata);
    const second = await appendToStream(db, stream, 1, [used(2), used(3)], metadata);
    expect(second.map((e) => e.streamVersion)).toEqual([2, 3]);
    expect((await readStream(db, stream)).version).toBe(3);
  });

  it("throws StreamVersionConflict on a stale expected version and writes nothing", async () => {
    const stream = uniqueStream();
    await appendToStream(db, stream, 0, [used(1), used(2)], metadata);
    for (const stale of [0, 1]) {
      const attempt = db
        .transaction()
        .execute((trx) => appendToStream(trx, stream, stale, [used(9), used(10)], metadata));
      await expect(attempt).rejects.toBeInstanceOf(StreamVersionConflict);
      await expect(attempt).rejects.toMatchObject({ streamId: stream });
    }
    const read = await readStream(db, stream);
    expect(read.version).toBe(2);
    expect(read.events).toHaveLength(2);
  });

  it("two concurrent appends at the same expected version: exactly one wins", async () => {
    const stream = uniqueStream();
    await appendToStream(db, stream, 0, [used(1)], metadata);
    const first = await db.startTransaction().execute();
    await appendToStream(first, stream, 1, [used(2)], metadata);
    // The second waits on the first's uncommitted row, then fails when the first commits.
    const second = db.transaction().execute((trx) => appendToStream(trx, stream, 1, [used(3)], metadata));
    const secondOutcome = second.then(
      () => "appended",
      (error: unknown) => error,
    );
    await first.commit().execute();
    expect(await secondOutcome).toBeInstanceOf(StreamVersionConflict);
    const read = await readStream(db, stream);
    expect(read.version).toBe(2);
    expect(read.events.map((e) => (e.data as { keyId: string }).keyId)).toEqual(["k1", "k2"]);
  });

  it("when the first of two concurrent appends rolls back, the second succeeds", async () => {
    const stream = uniqueStream();
    const first = await db.startTransaction().execute();
    await appendToStream(first, stream, 0, [used(1)], metadata);
    const second = db.transaction().execute((trx) => appendToStream(trx, stream, 0, [used(2)], metadata));
    await first.rollback().execute();
    const recorded = await second;
    expect(recorded.map((e) => e.streamVersion)).toEqual([1]);
    const read = await readStream(db, stream);
    expect(read.events.map((e) => (e.data as { keyId: string }).keyId)).toEqual(["k2"]);
  });

  it("refuses an expected version ahead of the stream (no gaps in a stream)", async () => {
    const stream = uniqueStream();
    await appendToStream(db, stream, 0, [used(1)], metadata);
    await expect(appendToStream(db, stream, 5, [used(2)], metadata)).rejects.toBeInstanceOf(StreamVersionConflict);
    await expect(appendToStream(db, uniqueStream(), 1, [used(2)], metadata)).rejects.toBeInstanceOf(
      StreamVersionConflict,
    );
    expect((await readStream(db, stream)).version).toBe(1);
  });

  it("readStream with skipTypes leaves those events out but still reports the last version", async () => {
    const stream = uniqueStream();
    await appendToStream(db, stream, 0, [removed(1), used(2), removed(3), used(4)], metadata);
    const read = await readStream(db, stream, { skipTypes: ["KeyUsed"] });
    expect(read.version).toBe(4);
    expect(read.events.map((e) => e.streamVersion)).toEqual([1, 3]);
    expect(read.events.every((e) => e.type === "MemberRemoved")).toBe(true);

    const all = await readStream(db, stream, { skipTypes: [] });
    expect(all.events.map((e) => e.streamVersion)).toEqual([1, 2, 3, 4]);
    const none = await readStream(db, stream, { skipTypes: ["KeyUsed", "MemberRemoved"] });
    expect(none).toEqual({ version: 4, events: [] });
  });

  it("readStream's version and events come from one snapshot while another writer appends", async () => {
    const stream = uniqueStream();
    let stop = false;
    let written = 0;
    const writer = (async () => {
      while (!stop) {
        await db.transaction().execute((trx) => appendToStream(trx, stream, written, [used(written + 1)], metadata));
        written += 1;
      }
    })();
    const inconsistent: string[] = [];
    try {
      for (let i = 0; i < 400 && inconsistent.length === 0; i++) {
        // Inside a transaction, as the command handlers read (READ COMMITTED: each statement its own snapshot).
        const read = await db.transaction().execute((trx) => readStream(trx, stream, { skipTypes: ["MemberRemoved"] }));
        const versions = read.events.map((e) => e.streamVersion);
        if (read.version !== read.events.length || versions.some((v, j) => v !== j + 1)) {
          inconsistent.push(`version ${read.version} with ${read.events.length} events`);
        }
      }
    } finally {
      stop = true;
      await writer;
    }
    expect(inconsistent).toEqual([]);
    expect(written).toBeGreaterThan(0);
  });

  it("readStream reads only its own stream", async () => {
    const a = uniqueStream();
    const b = uniqueStream();
    await appendToStream(db, a, 0, [used(1)], metadata);
    await appendToStream(db, b, 0, [used(2), used(3)], metadata);
    expect((await readStream(db, a)).events.map((e) => e.streamId)).toEqual([a]);
    expect((await readStream(db, b)).version).toBe(2);
  });

  it("a rolled-back append leaves no trace", async () => {
    const stream = uniqueStream();
    await expect(
      db.transaction().execute(async (trx) => {
        await appendToStream(trx, stream, 0, [used(1)], metadata);
        throw new Error("abort");
      }),
    ).rejects.toThrow("abort");
    expect(await readStream(db, stream)).toEqual({ version: 0, events: [] });
  });
});

describe("checkpoints", () => {
  let db: Kysely<unknown>;
  beforeAll(() => {
    db = connectTestDatabase(2);
  });
  afterAll(async () => {
    await db.destroy();
  });

  it("an unknown reader starts at LOG_START; a stored checkpoint is loaded back and can move", async () => {
    const name = uniqueStream();
    expect(await loadCheckpoint(db, name)).toEqual(LOG_START);
    await storeCheckpoint(db, name, { transactionId: "12345", globalPosition: "678" });
    expect(await loadCheckpoint(db, name)).toEqual({ transactionId: "12345", globalPosition: "678" });
    await storeCheckpoint(db, name, { transactionId: "9007199254740993", globalPosition: "9007199254740995" });
    expect(await loadCheckpoint(db, name)).toEqual({
      transactionId: "9007199254740993",
      globalPosition: "9007199254740995",
    });
  });
});
