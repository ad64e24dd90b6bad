import {
  canonicalEvent,
  chainHash,
  GENESIS_HASH,
  listOrganizationEvents,
  type SealableEvent,
  sealPending,
  verifyLog,
} from "@keyledger/audit-log";
import { Projector } from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";
import { writeKeyHistory } from "../support/key-history";

/** Seals until every committed event is in the chain (other databases' transactions can hold the sealer back). */
async function sealAll(db: Kysely<unknown>): Promise<void> {
  for (let attempt = 0; attempt < 600; attempt++) {
    const result = await sealPending(db, { batchSize: 50, wait: true });
    const unsealed = await sql<{ n: string }>`
      SELECT count(*)::text AS n FROM events e
       WHERE NOT EXISTS (SELECT 1 FROM event_seals s WHERE s.global_position = e.global_position)`.execute(db);
    if (Number(unsealed.rows[0]?.n) === 0 && !result.heldBack) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error("the log did not get sealed");
}

/** Positions in commit order: (transaction id, position). */
async function positions(db: Kysely<unknown>): Promise<{ position: string; transactionId: string; stream: string }[]> {
  const result = await sql<{ position: string; transaction_id: string; stream_id: string }>`
    SELECT global_position::text AS position, transaction_id::text AS transaction_id, stream_id
      FROM events e ORDER BY e.transaction_id, e.global_position`.execute(db);
  return result.rows.map((r) => ({ position: r.position, transactionId: r.transaction_id, stream: r.stream_id }));
}

describe("the hash chain over the log", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  beforeEach(async () => {
    scratch = await createScratchDatabase(16);
    db = scratch.db;
    await writeKeyHistory(db, {
      organizations: ["org-x", "org-y"],
      usersPerOrganization: 2,
      writers: 4,
      operationsPerWriter: 15,
      seed: 7,
    });
  });
  afterEach(async () => {
    await scratch?.drop();
  });

  it("seals every event in commit order, each hash chaining the previous one", async () => {
    // Writers keep appending while the sealer runs: nobody waits for the chain.
    const more = writeKeyHistory(db, {
      organizations: ["org-z"],
      usersPerOrganization: 2,
      writers: 3,
      operationsPerWriter: 15,
      seed: 8,
    });
    while ((await sealPending(db, { batchSize: 7 })).sealed === 0) await new Promise((r) => setTimeout(r, 10));
    await more;
    await sealAll(db);

    const seals = await sql<{ chain_index: string; global_position: string; hash: string }>`
      SELECT chain_index::text AS chain_index, global_position::text AS global_position, hash
        FROM event_seals s ORDER BY s.chain_index`.execute(db);
    const log = await positions(db);
    expect(seals.rows.map((s) => s.global_position)).toEqual(log.map((e) => e.position));
    expect(seals.rows.map((s) => s.chain_index)).toEqual(log.map((_, i) => String(i + 1)));

    // Recompute the first two hashes by hand from the stored rows.
    const first = await sql<SealableEvent & { data: unknown }>`
      SELECT global_position::text AS "globalPosition", transaction_id::text AS "transactionId",
             event_id::text AS "eventId", stream_id AS "streamId", stream_version AS "streamVersion",
             event_type AS type, data, metadata,
             to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "occurredAt"
        FROM events WHERE global_position = ANY(${[log[0]?.position, log[1]?.position]}::bigint[])`.execute(db);
    const byPosition = new Map(first.rows.map((e) => [e.globalPosition, e]));
    const h1 = chainHash(GENESIS_HASH, byPosition.get(log[0]?.position as string) as SealableEvent);
    const h2 = chainHash(h1, byPosition.get(log[1]?.position as string) as SealableEvent);
    expect([seals.rows[0]?.hash, seals.rows[1]?.hash]).toEqual([h1, h2]);
    expect(canonicalEvent(byPosition.get(log[0]?.position as string) as SealableEvent)).toMatch(
      /^\{"data":\{.*\},"eventId":"[0-9a-f-]{36}","globalPosition":"\d+","metadata":\{.*\},"occurredAt":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z","streamId":".*","streamVersion":\d+,"type":"\w+"\}$/,
    );

    const verified = await verifyLog(db);
    expect(verified).toMatchObject({ ok: true, eventsVerified: log.length, unsealed: 0, problem: null });
    expect(verified.head.globalPosition).toBe(log[log.length - 1]?.position);

    // Sealing again adds nothing; the chain is append-only and idempotent.
    expect((await sealPending(db)).sealed).toBe(0);
  });

  it("names the position of an edited event", async () => {
    await sealAll(db);
    const log = await positions(db);
    const target = log[Math.floor(log.length / 2)]?.position as string;
    await sql`UPDATE events SET data = jsonb_set(data, '{name}', '"renamed"') WHERE global_position = ${target}::bigint`.execute(
      db,
    );
    const result = await verifyLog(db);
    expect(result.ok).toBe(false);
    expect(result.problem).toMatchObject({ position: target, kind: "hash-mismatch" });
  });

  it("names the position of a deleted event", async () => {
    await sealAll(db);
    const log = await positions(db);
    // The last event of its stream: deleting an earlier one would also leave a version gap at the stream's next
    // event, which can come first in the log's order (transaction id, position) and so be the first problem.
    const isLastOfStream = (e: (typeof log)[number]) =>
      !log.some((o) => o.stream === e.stream && BigInt(o.position) > BigInt(e.position));
    const target = log.slice(Math.floor(log.length / 3)).find(isLastOfStream)?.position as string;
    expect(target).toBeDefined();
    await sql`DELETE FROM events WHERE global_position = ${target}::bigint`.execute(db);
    const result = await verifyLog(db);
    expect(result.problem).toMatchObject({ position: target, kind: "missing-event" });
  });

  it("names the first position of two reordered events", async () => {
    await sealAll(db);
    const log = await positions(db);
    // Swap the contents of two events of different streams (positions stay): each is now where the other was.
    // They are neighbours both by position and in commit order: the log's order is (transaction id, position), in
    // which a stream's later version can come first, so with an event of a's stream between them the swap would also
    // put that stream's versions out of position order at an event before a, and that would be the first problem.
    const i = log.findIndex((e, j) => {
      const next = log[j + 1];
      return (
        j >= Math.floor(log.length / 2) &&
        next !== undefined &&
        next.stream !== e.stream &&
        BigInt(next.position) === BigInt(e.position) + 1n
      );
    });
    expect(i).toBeGreaterThanOrEqual(0);
    const [a, b] = [log[i], log[i + 1]] as [(typeof log)[number], (typeof log)[number]];
    await db.transaction().execute(async (trx) => {
      const rows = await sql<{ global_position: string; event_id: string; stream_id: string; stream_version: number }>`
        SELECT global_position::text AS global_position, event_id::text AS event_id, stream_id, stream_version
          FROM events WHERE global_position IN (${a.position}::bigint, ${b.position}::bigint)`.execute(trx);
      const [ra, rb] = [a.position, b.position].map((p) => rows.rows.find((r) => r.global_position === p)) as [
        (typeof rows.rows)[number],
        (typeof rows.rows)[number],
      ];
      await sql`UPDATE events SET event_id = gen_random_uuid(), stream_id = 'moving', stream_version = 1
                 WHERE global_position = ${a.position}::bigint`.execute(trx);
      await sql`UPDATE events x SET event_id = ${ra.event_id}::uuid, stream_id = ${ra.stream_id},
                       stream_version = ${ra.stream_version}, event_type = y.event_type, data = y.data,
                       metadata = y.metadata, occurred_at = y.occurred_at
                  FROM events y WHERE x.global_position = ${b.position}::bigint AND y.global_position = ${a.position}::bigint`.execute(
        trx,
      );
      await sql`UPDATE events SET event_id = ${rb.event_id}::uuid, stream_id = ${rb.stream_id},
                       stream_version = ${rb.stream_version}
                 WHERE global_position = ${a.position}::bigint`.execute(trx);
    });
    // (The swap above moved a's type/data/time to b but left b's at a: put b's original content at a.)
    const result = await verifyLog(db);
    expect(result.problem?.position).toBe(a.position);

    // Reordering by commit order instead: swap the two events' transaction ids.
    const c = log[1] as (typeof log)[number];
    const d = log.slice(2).find((e) => e.transactionId !== c.transactionId) as (typeof log)[number];
    expect(log.filter((e) => e.transactionId === c.transactionId || e.transactionId === d.transactionId).length).toBe(
      log.filter((e) => e.transactionId === c.transactionId).length +
        log.filter((e) => e.transactionId === d.transactionId).length,
    );
    await sql`UPDATE events SET transaction_id = CASE global_position WHEN ${c.position}::bigint THEN ${d.transactionId}::xid8
                                                                     ELSE ${c.transactionId}::xid8 END
               WHERE global_position IN (${c.position}::bigint, ${d.position}::bigint)`.execute(db);
    const reordered = await verifyLog(db);
    expect(reordered.problem?.position).toBe(c.position);
  });

  it("checks from a sealed position on, and reports a stream version gap", async () => {
    await sealAll(db);
    const log = await positions(db);
    const early = log[2]?.position as string;
    const later = log[log.length - 3]?.position as string;
    await sql`UPDATE events SET data = jsonb_set(data, '{name}', '"renamed"') WHERE global_position = ${early}::bigint`.execute(
      db,
    );
    expect((await verifyLog(db, { fromPosition: later })).ok).toBe(true);
    expect((await verifyLog(db, { fromPosition: log[1]?.position })).problem?.position).toBe(early);

    // An unsealed event appended with a version gap (v+2) is a stream problem even though the chain is intact.
    const last = await sql<{ stream_id: string; v: number }>`
      SELECT stream_id, max(stream_version) AS v FROM events GROUP BY stream_id ORDER BY 2 DESC LIMIT 1`.execute(db);
    const stream = last.rows[0] as { stream_id: string; v: number };
    const inserted = await sql<{ global_position: string }>`
      INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
      VALUES (gen_random_uuid(), ${stream.stream_id}, ${stream.v + 2}, 'KeyUsed', '{}', '{}', now())
      RETURNING global_position::text AS global_position`.execute(db);
    const gap = await verifyLog(db, { fromPosition: later });
    expect(gap.problem).toMatchObject({ position: inserted.rows[0]?.global_position, kind: "stream-gap" });
    expect(gap.unsealed).toBe(1);
  });

  it("names the position of an event whose seal was deleted, and the missing chain index", async () => {
    await sealAll(db);
    const log = await positions(db);
    const target = log[Math.floor(log.length / 2)]?.position as string;
    const removed = await sql<{ chain_index: string }>`
      DELETE FROM event_seals WHERE global_position = ${target}::bigint
      RETURNING chain_index::text AS chain_index`.execute(db);
    const index = removed.rows[0]?.chain_index as string;
    const result = await verifyLog(db);
    expect(result.ok).toBe(false);
    expect(result.problem).toMatchObject({ position: target, kind: "missing-seal" });
    expect(result.problem?.message).toContain(`chain index ${index} is missing`);
  });

  it("names the position of a seal moved to another organization (the auditors' API scopes by it)", async () => {
    await sealAll(db);
    const log = await positions(db);
    const target = log[Math.floor(log.length / 2)]?.position as string;
    const sealed = await sql<{ organization_id: string }>`
      SELECT organization_id FROM event_seals WHERE global_position = ${target}::bigint`.execute(db);
    const organization = sealed.rows[0]?.organization_id as string;
    const elsewhere = organization === "org-x" ? "org-y" : "org-x";
    // The hash does not cover the seal's organization: the chain still hashes, but the event would now be served
    // to the other organization's auditors and hidden from its own.
    await sql`UPDATE event_seals SET organization_id = ${elsewhere} WHERE global_position = ${target}::bigint`.execute(
      db,
    );
    const result = await verifyLog(db);
    expect(result.ok).toBe(false);
    expect(result.problem).toMatchObject({ position: target, kind: "organization-mismatch" });
    expect(result.problem?.message).toContain(
      `sealed as organization "${elsewhere}" but the event is of "${organization}"`,
    );
    expect((await verifyLog(db, { fromPosition: target })).problem).toMatchObject({ kind: "organization-mismatch" });
    // Meanwhile the auditors' event reader gives the event to neither organization's auditors.
    for (const organizationId of [organization, elsewhere]) {
      const served = await listOrganizationEvents(db, { organizationId, after: "0", limit: 10_000 });
      expect(served.length).toBeGreaterThan(0);
      expect(served.map((e) => e.position)).not.toContain(target);
    }
  });

  it("names the position of a sealed event edited to hold a number no hash can cover", async () => {
    await sealAll(db);
    const log = await positions(db);
    const target = log[Math.floor(log.length / 2)]?.position as string;
    // jsonb takes 1e400; JavaScript reads it as Infinity, which has no canonical JSON form.
    await sql`UPDATE events SET data = data || '{"x": 1e400}' WHERE global_position = ${target}::bigint`.execute(db);
    const result = await verifyLog(db);
    expect(result.ok).toBe(false);
    expect(result.problem).toMatchObject({ position: target, kind: "unhashable" });
    expect(result.problem?.message).toMatch(/cannot be hashed \(JCS: Infinity is not a JSON number\)/);
  });

  it("seals up to an event it cannot hash, says so once, and goes on once it is repaired", async () => {
    await sealAll(db);
    const append = async (version: number, data: string) => {
      const inserted = await sql<{ global_position: string }>`
        INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
        VALUES (gen_random_uuid(), 'raw-stream', ${version}, 'KeyUsed', ${data}::jsonb, '{}', now())
        RETURNING global_position::text AS global_position`.execute(db);
      return inserted.rows[0]?.global_position as string;
    };
    const before = await append(1, '{"n": 1}');
    const bad = await append(2, '{"n": -1e400}');
    const after = await append(3, '{"n": 3}');

    // The pass that reaches it seals what comes before and says where the chain stops, and why.
    let blocked = await sealPending(db, { wait: true });
    for (let attempt = 0; attempt < 600 && blocked.blocked === null; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      blocked = await sealPending(db, { wait: true });
    }
    expect(blocked.blocked).toEqual({ position: bad, reason: "JCS: -Infinity is not a JSON number" });
    const sealedPositions = async () =>
      (await sql<{ p: string }>`SELECT global_position::text AS p FROM event_seals`.execute(db)).rows.map((r) => r.p);
    expect(await sealedPositions()).toContain(before);
    expect(await sealedPositions()).not.toContain(bad);

    // A projector logs it once, as an error, however many passes find it.
    const errors: object[] = [];
    const quiet = () => {};
    const projector = new Projector({
      db,
      log: { info: quiet, warn: quiet, error: (object) => errors.push(object) },
      projections: [],
    });
    for (let pass = 0; pass < 3; pass++) await projector.runOnce();
    expect(errors).toEqual([{ position: bad, reason: "JCS: -Infinity is not a JSON number" }]);
    // Later passes say the same, and do not ask to be retried at once.
    const again = await sealPending(db, { wait: true });
    expect(again).toMatchObject({ sealed: 0, heldBack: false, blocked: { position: bad } });
    expect(again.head.globalPosition).toBe(before);
    const verified = await verifyLog(db);
    expect(verified.problem).toMatchObject({ position: bad, kind: "unhashable" });
    expect(verified.unsealed).toBe(2);

    await sql`UPDATE events SET data = '{"n": 2}' WHERE global_position = ${bad}::bigint`.execute(db);
    let repaired = await sealPending(db, { wait: true });
    for (let attempt = 0; attempt < 600 && !(await sealedPositions()).includes(after); attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      repaired = await sealPending(db, { wait: true });
    }
    expect(repaired.blocked).toBeNull();
    expect(await sealedPositions()).toContain(after);
    expect(await verifyLog(db)).toMatchObject({ ok: true, unsealed: 0, problem: null });
  });
});
