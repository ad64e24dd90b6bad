import { hasEventsAfter } from "@keyledger/event-store";
import { type Kysely, sql } from "kysely";
import {
  chainHash,
  GENESIS_HASH,
  organizationOf,
  SEALABLE_COLUMNS,
  type SealableRow,
  toSealableEvent,
  UnhashableEventError,
} from "./event-hash";

/** Notified (payload: the new head's chain index) after the sealer extends the chain. */
export const SEALED_CHANNEL = "keyledger_sealed";

/** The last seal: where the chain ends and where the sealer resumes. */
export type ChainHead = { chainIndex: string; globalPosition: string; transactionId: string; hash: string };

export const EMPTY_CHAIN: ChainHead = { chainIndex: "0", globalPosition: "0", transactionId: "0", hash: GENESIS_HASH };

export async function loadChainHead(db: Kysely<unknown>): Promise<ChainHead> {
  const result = await sql<{ chain_index: string; global_position: string; transaction_id: string; hash: string }>`
    SELECT chain_index::text AS chain_index, global_position::text AS global_position,
           transaction_id::text AS transaction_id, hash
      FROM event_seals s ORDER BY s.chain_index DESC LIMIT 1`.execute(db);
  const row = result.rows[0];
  return row
    ? {
        chainIndex: row.chain_index,
        globalPosition: row.global_position,
        transactionId: row.transaction_id,
        hash: row.hash,
      }
    : EMPTY_CHAIN;
}

export type SealResult = {
  /** Events sealed by this call. */
  sealed: number;
  head: ChainHead;
  /** Another process was sealing (with `wait: false`): nothing was done. */
  busy: boolean;
  /** Committed events are waiting for an older transaction to finish before they can be sealed. */
  heldBack: boolean;
  /**
   * The next event in commit order cannot be hashed (`UnhashableEventError`): the chain stops before it, and
   * nothing after it is sealed until the event is repaired. Null otherwise.
   */
  blocked: { position: string; reason: string } | null;
};

const SEALER_LOCK = sql`hashtextextended('keyledger.sealer', 0)`;

/**
 * Extends the hash chain over every event committed so far, in the log's commit-safe order (transaction id, then
 * global position; only transactions older than every running one, as `readAllAfter` reads). Writers never wait
 * for it: it runs after their commit. Each batch stores its seals — which are also the sealer's checkpoint — in
 * one transaction, under an advisory lock so that one process at a time extends the chain. An event it cannot hash
 * (`UnhashableEventError`) stops the chain before it: the events before it are sealed, nothing after it is, and
 * the result says where and why (`blocked`) until the event is repaired.
 */
export async function sealPending(
  db: Kysely<unknown>,
  options: { batchSize?: number; wait?: boolean } = {},
): Promise<SealResult> {
  const batchSize = options.batchSize ?? 1000;
  let sealed = 0;
  for (;;) {
    const batch = await db.transaction().execute(async (trx) => {
      if (options.wait) {
        await sql`SELECT pg_advisory_xact_lock(${SEALER_LOCK})`.execute(trx);
      } else {
        const locked = await sql<{
          locked: boolean;
        }>`SELECT pg_try_advisory_xact_lock(${SEALER_LOCK}) AS locked`.execute(trx);
        if (!locked.rows[0]?.locked) return null;
      }
      const head = await loadChainHead(trx);
      const rows = await sql<SealableRow>`
        SELECT ${SEALABLE_COLUMNS} FROM events e
         WHERE (e.transaction_id, e.global_position) > (${head.transactionId}::xid8, ${head.globalPosition}::bigint)
           AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.transaction_id, e.global_position
         LIMIT ${batchSize}`.execute(trx);
      if (rows.rows.length === 0) return { count: 0, head, blocked: null };
      const indexes: string[] = [];
      const positions: string[] = [];
      const transactions: string[] = [];
      const organizations: string[] = [];
      const hashes: string[] = [];
      let previous = head.hash;
      let index = BigInt(head.chainIndex);
      let last: SealableRow | undefined;
      let blocked: UnhashableEventError | null = null;
      for (const row of rows.rows) {
        const event = toSealableEvent(row);
        try {
          previous = chainHash(previous, event);
        } catch (error) {
          if (!(error instanceof UnhashableEventError)) throw error;
          // The chain cannot include what it cannot hash, nor skip it (the chain is the commit order): stop here.
          blocked = error;
          break;
        }
        last = row;
        index += 1n;
        indexes.push(index.toString());
        positions.push(event.globalPosition);
        transactions.push(event.transactionId);
        organizations.push(organizationOf(event));
        hashes.push(previous);
      }
      const reason = blocked === null ? null : { position: blocked.position, reason: blocked.reason };
      if (last === undefined) return { count: 0, head, blocked: reason };
      await sql`
        INSERT INTO event_seals (chain_index, global_position, transaction_id, organization_id, hash)
        SELECT * FROM unnest(${indexes}::bigint[], ${positions}::bigint[], ${transactions}::text[]::xid8[],
                             ${organizations}::text[], ${hashes}::text[])`.execute(trx);
      await sql`SELECT pg_notify(${SEALED_CHANNEL}, ${index.toString()})`.execute(trx);
      return {
        count: indexes.length,
        blocked: reason,
        head: {
          chainIndex: index.toString(),
          globalPosition: last.global_position,
          transactionId: last.transaction_id,
          hash: previous,
        },
      };
    });
    if (batch === null) return { sealed, head: await loadChainHead(db), busy: true, heldBack: false, blocked: null };
    sealed += batch.count;
    if (batch.blocked !== null) {
      // Not heldBack: nothing will unblock it soon, the caller's usual wake-ups and polls are enough.
      return { sealed, head: batch.head, busy: false, heldBack: false, blocked: batch.blocked };
    }
    if (batch.count < batchSize) {
      // Committed events past the head were held back by an older transaction (or have just been released by
      // it, after the batch read): either way, look again soon.
      return { sealed, head: batch.head, busy: false, heldBack: await hasEventsAfter(db, batch.head), blocked: null };
    }
  }
}
