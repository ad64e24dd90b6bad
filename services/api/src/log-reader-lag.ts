import { type Kysely, sql } from "kysely";

/**
 * How far one reader of the whole log is behind its head: committed events it has not handled, and the age of the
 * next one it handles (the first in commit order).
 */
export type LogReaderLag = { reader: string; events: number; seconds: number };

/** Counting stops here: past it, "very far behind" is all an operator needs to know. */
const MAX_COUNTED = 1_000_000;

/**
 * The lag of every reader of the log: the relays (their `checkpoints` rows, e.g. `nats-relay:KEYLEDGER`), the
 * sealer (events after the last seal in commit order) and each projection (events its snapshot does not cover).
 * Each count is a walk of the commit-order index from the reader's position (ORDER BY: so it stays one without
 * statistics, on a young table), stopping at `MAX_COUNTED`.
 */
export async function measureLogReaderLag(db: Kysely<unknown>): Promise<LogReaderLag[]> {
  const result = await sql<{ reader: string; events: string; seconds: string | null }>`
    SELECT c.name AS reader,
           (SELECT count(*) FROM (SELECT 1 FROM events e
              WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)
              ORDER BY e.transaction_id, e.global_position
              LIMIT ${MAX_COUNTED}) behind) AS events,
           (SELECT EXTRACT(EPOCH FROM now() - e.occurred_at) FROM events e
              WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)
              ORDER BY e.transaction_id, e.global_position
              LIMIT 1) AS seconds
      FROM checkpoints c
    UNION ALL
    SELECT 'sealer',
           (SELECT count(*) FROM (SELECT 1 FROM events e
              WHERE (e.transaction_id, e.global_position) > (coalesce(last.transaction_id, '0'::xid8), coalesce(last.global_position, 0))
              ORDER BY e.transaction_id, e.global_position
              LIMIT ${MAX_COUNTED}) behind),
           (SELECT EXTRACT(EPOCH FROM now() - e.occurred_at) FROM events e
              WHERE (e.transaction_id, e.global_position) > (coalesce(last.transaction_id, '0'::xid8), coalesce(last.global_position, 0))
              ORDER BY e.transaction_id, e.global_position
              LIMIT 1)
      FROM (SELECT NULL) AS one
      LEFT JOIN LATERAL (SELECT transaction_id, global_position FROM event_seals ORDER BY chain_index DESC LIMIT 1) last ON true
    UNION ALL
    SELECT 'projection:' || p.name,
           (SELECT count(*) FROM (SELECT 1 FROM events e
              WHERE e.transaction_id >= pg_snapshot_xmin(p.snapshot) AND NOT pg_visible_in_snapshot(e.transaction_id, p.snapshot)
              ORDER BY e.transaction_id, e.global_position
              LIMIT ${MAX_COUNTED}) behind),
           (SELECT EXTRACT(EPOCH FROM now() - e.occurred_at) FROM events e
              WHERE e.transaction_id >= pg_snapshot_xmin(p.snapshot) AND NOT pg_visible_in_snapshot(e.transaction_id, p.snapshot)
              ORDER BY e.transaction_id, e.global_position
              LIMIT 1)
      FROM projection_state p
     WHERE p.snapshot IS NOT NULL`.execute(db);
  return result.rows.map((row) => ({
    reader: row.reader,
    events: Number(row.events),
    seconds: row.seconds === null ? 0 : Math.max(0, Number(row.seconds)),
  }));
}
