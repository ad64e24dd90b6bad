import { type Kysely, sql } from "kysely";
import {
  canonicalEvent,
  chainHash,
  GENESIS_HASH,
  organizationOf,
  SEALABLE_COLUMNS,
  type SealableRow,
  toSealableEvent,
  UnhashableEventError,
} from "./event-hash";
import { type ChainHead, EMPTY_CHAIN, loadChainHead } from "./sealer";

export type LogProblemKind =
  | "hash-mismatch"
  | "missing-event"
  | "commit-order-changed"
  | "unsealed-in-chain"
  | "stream-gap"
  | "stream-order"
  | "unhashable"
  | "organization-mismatch"
  | "missing-seal";

/** The first place where the log does not match its chain or its streams. */
export type LogProblem = { position: string; kind: LogProblemKind; message: string };

export type VerifyLogResult = {
  ok: boolean;
  /** Sealed events whose hash was recomputed and matched. */
  eventsVerified: number;
  head: ChainHead;
  /** Committed events after the head, not sealed yet (the commit → seal window). */
  unsealed: number;
  problem: LogProblem | null;
};

/** `--from` names a position that has no seal. */
export class UnsealedStartError extends Error {
  constructor(readonly position: string) {
    super(`position ${position} is not sealed: start from a sealed position`);
    this.name = "UnsealedStartError";
  }
}

type SealRow = {
  chain_index: string;
  global_position: string;
  transaction_id: string;
  organization_id: string;
  hash: string;
};
type Cursor = { transactionId: string; globalPosition: string };

const before = (a: Cursor, b: Cursor) => {
  const [at, bt] = [BigInt(a.transactionId), BigInt(b.transactionId)];
  return at < bt || (at === bt && BigInt(a.globalPosition) < BigInt(b.globalPosition));
};

/**
 * Recomputes the hash chain and checks every stream's versions, in one repeatable-read snapshot. The log, read in
 * commit-safe order (transaction id, position), must hold exactly the sealed events in chain order, each hashing to
 * its seal; every stream's versions must run 1, 2, 3... in position order. Reports the problem that comes first in
 * that order, which need not be at the changed event (docs/projections.md). `fromPosition` starts at that sealed
 * position, trusting the seal before it.
 */
export async function verifyLog(
  db: Kysely<unknown>,
  options: { fromPosition?: string; pageSize?: number } = {},
): Promise<VerifyLogResult> {
  const pageSize = options.pageSize ?? 5000;
  return db
    .transaction()
    .setIsolationLevel("repeatable read")
    .setAccessMode("read only")
    .execute(async (trx) => {
      await sql`SET LOCAL statement_timeout = 0`.execute(trx);
      const head = await loadChainHead(trx);
      let previousHash = GENESIS_HASH;
      let lastIndex = "0";
      let eventCursor: Cursor = { transactionId: "0", globalPosition: "0" };
      let start: Cursor = eventCursor;
      if (options.fromPosition !== undefined) {
        const seal = await sql<SealRow>`
          SELECT chain_index::text AS chain_index, global_position::text AS global_position,
                 transaction_id::text AS transaction_id, organization_id, hash
            FROM event_seals WHERE global_position = ${options.fromPosition}::bigint`.execute(trx);
        const row = seal.rows[0];
        if (!row) throw new UnsealedStartError(options.fromPosition);
        lastIndex = (BigInt(row.chain_index) - 1n).toString();
        const prior = await sql<{ hash: string }>`
          SELECT hash FROM event_seals WHERE chain_index = ${lastIndex}::bigint`.execute(trx);
        previousHash = prior.rows[0]?.hash ?? GENESIS_HASH;
        start = { transactionId: row.transaction_id, globalPosition: row.global_position };
        eventCursor = {
          transactionId: row.transaction_id,
          globalPosition: (BigInt(row.global_position) - 1n).toString(),
        };
      }

      let verified = 0;
      let chainProblem: (LogProblem & { at: Cursor }) | null = null;
      let events: SealableRow[] = [];
      let nextEvent = 0;
      const peekEvent = async (): Promise<SealableRow | undefined> => {
        if (nextEvent < events.length) return events[nextEvent];
        const page = await sql<SealableRow>`
          SELECT ${SEALABLE_COLUMNS} FROM events e
           WHERE (e.transaction_id, e.global_position) > (${eventCursor.transactionId}::xid8, ${eventCursor.globalPosition}::bigint)
           ORDER BY e.transaction_id, e.global_position LIMIT ${pageSize}`.execute(trx);
        events = page.rows;
        nextEvent = 0;
        const last = events[events.length - 1];
        if (last) eventCursor = { transactionId: last.transaction_id, globalPosition: last.global_position };
        return events[0];
      };

      chain: for (;;) {
        const seals = await sql<SealRow>`
          SELECT chain_index::text AS chain_index, global_position::text AS global_position,
                 transaction_id::text AS transaction_id, organization_id, hash
            FROM event_seals s WHERE s.chain_index > ${lastIndex}::bigint ORDER BY s.chain_index LIMIT ${pageSize}`.execute(
          trx,
        );
        if (seals.rows.length === 0) break;
        for (const seal of seals.rows) {
          const at = { transactionId: seal.transaction_id, globalPosition: seal.global_position };
          const event = await peekEvent();
          const expectedIndex = (BigInt(lastIndex) + 1n).toString();
          if (seal.chain_index !== expectedIndex) {
            // The sealer numbers seals 1, 2, 3... with no gap: one is gone (with its event, or leaving the event
            // unsealed where the chain says it was sealed), which would otherwise read as an inserted event.
            const position = event?.global_position ?? seal.global_position;
            chainProblem = {
              at: event ? { transactionId: event.transaction_id, globalPosition: event.global_position } : at,
              position,
              kind: "missing-seal",
              message: `chain index ${expectedIndex} is missing (the seals go from ${lastIndex} to ${seal.chain_index}) where the log now has position ${position}: a seal was deleted`,
            };
            break chain;
          }
          if (event?.global_position !== seal.global_position) {
            chainProblem = await diagnose(trx, seal, event);
            break chain;
          }
          if (event.transaction_id !== seal.transaction_id) {
            chainProblem = {
              at,
              position: seal.global_position,
              kind: "commit-order-changed",
              message: `position ${seal.global_position} was sealed in transaction ${seal.transaction_id} but the log now says ${event.transaction_id}`,
            };
            break chain;
          }
          const sealable = toSealableEvent(event);
          let hash: string;
          try {
            hash = chainHash(previousHash, sealable);
          } catch (error) {
            if (!(error instanceof UnhashableEventError)) throw error;
            chainProblem = {
              at,
              position: seal.global_position,
              kind: "unhashable",
              message: `position ${seal.global_position} (chain index ${seal.chain_index}) cannot be hashed (${error.reason}): the event was changed after it was sealed`,
            };
            break chain;
          }
          if (hash !== seal.hash) {
            chainProblem = {
              at,
              position: seal.global_position,
              kind: "hash-mismatch",
              message: `position ${seal.global_position} (chain index ${seal.chain_index}) does not hash to its seal: the event was changed`,
            };
            break chain;
          }
          // The seal's organization is not hashed, but it is what the auditors' event API scopes by: a changed one
          // would serve the event to another organization's auditors and hide it from its own.
          const organization = organizationOf(sealable);
          if (organization !== seal.organization_id) {
            chainProblem = {
              at,
              position: seal.global_position,
              kind: "organization-mismatch",
              message: `position ${seal.global_position} (chain index ${seal.chain_index}) is sealed as organization ${JSON.stringify(seal.organization_id)} but the event is of ${JSON.stringify(organization)}: the seal was changed`,
            };
            break chain;
          }
          previousHash = seal.hash;
          lastIndex = seal.chain_index;
          nextEvent += 1;
          verified += 1;
        }
      }

      const streamProblem = await firstStreamProblem(trx, start);
      const tailProblem = chainProblem ? null : await firstUnhashableAfter(trx, head, pageSize);
      let problem: (LogProblem & { at: Cursor }) | null = null;
      for (const candidate of [chainProblem, streamProblem, tailProblem]) {
        if (candidate && (problem === null || before(candidate.at, problem.at))) problem = candidate;
      }
      const tail = await sql<{ n: string }>`
        SELECT count(*)::text AS n FROM events
         WHERE (transaction_id, global_position) > (${head.transactionId}::xid8, ${head.globalPosition}::bigint)`.execute(
        trx,
      );
      return {
        ok: problem === null,
        eventsVerified: verified,
        head: head ?? EMPTY_CHAIN,
        unsealed: Number(tail.rows[0]?.n ?? 0),
        problem: problem ? { position: problem.position, kind: problem.kind, message: problem.message } : null,
      };
    });
}

/**
 * The first committed event past the chain's head (commit order) that cannot be hashed: the sealer stops before
 * it, so it and every event after it stay unsealed until it is repaired.
 */
async function firstUnhashableAfter(
  trx: Kysely<unknown>,
  head: ChainHead,
  pageSize: number,
): Promise<(LogProblem & { at: Cursor }) | null> {
  let cursor: Cursor = { transactionId: head.transactionId, globalPosition: head.globalPosition };
  for (;;) {
    const page = await sql<SealableRow>`
      SELECT ${SEALABLE_COLUMNS} FROM events e
       WHERE (e.transaction_id, e.global_position) > (${cursor.transactionId}::xid8, ${cursor.globalPosition}::bigint)
       ORDER BY e.transaction_id, e.global_position LIMIT ${pageSize}`.execute(trx);
    for (const row of page.rows) {
      try {
        canonicalEvent(toSealableEvent(row));
      } catch (error) {
        if (!(error instanceof TypeError)) throw error;
        return {
          at: { transactionId: row.transaction_id, globalPosition: row.global_position },
          position: row.global_position,
          kind: "unhashable",
          message: `position ${row.global_position} is not sealed and cannot be hashed (${error.message}): the chain stops before it, so no event after it is sealed`,
        };
      }
    }
    const last = page.rows[page.rows.length - 1];
    if (last === undefined || page.rows.length < pageSize) return null;
    cursor = { transactionId: last.transaction_id, globalPosition: last.global_position };
  }
}

/** Why the log's next event (in commit order) is not the sealed one. */
async function diagnose(
  trx: Kysely<unknown>,
  seal: SealRow,
  event: SealableRow | undefined,
): Promise<LogProblem & { at: Cursor }> {
  const at = { transactionId: seal.transaction_id, globalPosition: seal.global_position };
  const sealed = await sql`SELECT 1 FROM events WHERE global_position = ${seal.global_position}::bigint`.execute(trx);
  if (sealed.rows.length === 0) {
    return {
      at,
      position: seal.global_position,
      kind: "missing-event",
      message: `position ${seal.global_position} (chain index ${seal.chain_index}) is sealed but no longer in the log: the event was deleted`,
    };
  }
  if (event) {
    const eventSeal = await sql`
      SELECT 1 FROM event_seals WHERE global_position = ${event.global_position}::bigint`.execute(trx);
    if (eventSeal.rows.length === 0) {
      return {
        at: { transactionId: event.transaction_id, globalPosition: event.global_position },
        position: event.global_position,
        kind: "unsealed-in-chain",
        message: `position ${event.global_position} is not in the chain but comes before sealed position ${seal.global_position}: the event was inserted`,
      };
    }
  }
  return {
    at,
    position: seal.global_position,
    kind: "commit-order-changed",
    message: `position ${seal.global_position} was sealed at chain index ${seal.chain_index}, but in commit order the log now has position ${event?.global_position} there: events were reordered`,
  };
}

/** The first event (commit order, from `start`) whose stream version does not follow its predecessor's. */
async function firstStreamProblem(trx: Kysely<unknown>, start: Cursor): Promise<(LogProblem & { at: Cursor }) | null> {
  const result = await sql<{
    global_position: string;
    transaction_id: string;
    stream_id: string;
    stream_version: number;
    previous_version: number | null;
    previous_position: string | null;
  }>`
    WITH ordered AS (
      SELECT global_position, transaction_id, stream_id, stream_version,
             lag(stream_version) OVER w AS previous_version, lag(global_position) OVER w AS previous_position
        FROM events WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version))
    SELECT global_position::text AS global_position, transaction_id::text AS transaction_id, stream_id,
           stream_version, previous_version, previous_position::text AS previous_position
      FROM ordered o
     WHERE ((previous_version IS NULL AND stream_version <> 1)
            OR stream_version <> previous_version + 1
            OR global_position < previous_position)
       AND (transaction_id, global_position) >= (${start.transactionId}::xid8, ${start.globalPosition}::bigint)
     ORDER BY o.transaction_id, o.global_position LIMIT 1`.execute(trx);
  const row = result.rows[0];
  if (!row) return null;
  const at = { transactionId: row.transaction_id, globalPosition: row.global_position };
  const gap =
    row.previous_version === null ? row.stream_version !== 1 : row.stream_version !== row.previous_version + 1;
  return gap
    ? {
        at,
        position: row.global_position,
        kind: "stream-gap",
        message: `position ${row.global_position} is version ${row.stream_version} of ${row.stream_id}, but the version before it is ${row.previous_version ?? "missing"}`,
      }
    : {
        at,
        position: row.global_position,
        kind: "stream-order",
        message: `position ${row.global_position} is version ${row.stream_version} of ${row.stream_id} but comes before version ${row.previous_version} (position ${row.previous_position})`,
      };
}
