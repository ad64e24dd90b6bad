import { type Kysely, sql } from "kysely";

/** One event of an organization as auditors see it: sealed, in chain (commit) order, without key hashes. */
export type AuditEvent = {
  /** Opaque cursor: pass it as `after` to read on from this event. */
  cursor: string;
  position: string;
  eventId: string;
  type: string;
  occurredAt: string;
  actor: { userId: string | null; authMethod: string | null; requestId: string | null };
  stream: { id: string; version: number };
  /** A JSON object, except on a log changed in the database (see `damaged`): then whatever the row holds. */
  data: unknown;
  /** The event's hash in the chain (see `pnpm keyledger verify-log`). */
  hash: string;
  /** Present only when the stored event cannot be as written (`damageOf`): what is wrong with it. */
  damaged?: string;
};

const CURSOR_PREFIX = "kl1:";

/** The cursor after chain index `chainIndex` (0: from the start). */
export function encodeCursor(chainIndex: string): string {
  return Buffer.from(`${CURSOR_PREFIX}${chainIndex}`, "utf8").toString("base64url");
}

/** The chain index a cursor stands for, or undefined when it is not one of ours. */
export function decodeCursor(cursor: string): string | undefined {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(cursor)) return undefined;
  const text = Buffer.from(cursor, "base64url").toString("utf8");
  if (!text.startsWith(CURSOR_PREFIX)) return undefined;
  const index = text.slice(CURSOR_PREFIX.length);
  if (!/^(0|[1-9]\d{0,17})$/.test(index)) return undefined;
  return index;
}

/** Data with every `...Hash` member removed, at any depth: key hashes are what a stolen value is checked against. */
export function withoutHashes(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutHashes);
  if (value === null || typeof value !== "object") return value;
  const result: Record<string, unknown> = {};
  for (const [name, member] of Object.entries(value)) {
    if (/hash$/i.test(name)) continue;
    result[name] = withoutHashes(member);
  }
  return result;
}

function describeJson(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

const isJsonObject = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === "object" && !Array.isArray(value);

/**
 * What is wrong with a stored event whose `data` or `metadata` is not a JSON object (every event is written with
 * both as objects, so the row was changed in the database), or undefined. Readers of the log serve such an event
 * as it is stored, flagged with this, rather than fail or leave it out; `verify-log` tells what else changed.
 */
export function damageOf(event: { data: unknown; metadata: unknown }): string | undefined {
  const wrong = [
    isJsonObject(event.data) ? undefined : `data is ${describeJson(event.data)}`,
    isJsonObject(event.metadata) ? undefined : `metadata is ${describeJson(event.metadata)}`,
  ].filter((part) => part !== undefined);
  if (wrong.length === 0) return undefined;
  return `${wrong.join(" and ")}, not a JSON object: the event was changed in the database (run \`pnpm keyledger verify-log\`)`;
}

/** Who an event's metadata says acted; nulls where it does not say (or is not an object: a damaged event). */
export function actorOf(metadata: unknown): {
  userId: string | null;
  authMethod: string | null;
  requestId: string | null;
} {
  const record = isJsonObject(metadata) ? metadata : {};
  const text = (value: unknown) => (typeof value === "string" ? value : null);
  return { userId: text(record.actorUserId), authMethod: text(record.authMethod), requestId: text(record.requestId) };
}

type Row = {
  chain_index: string;
  hash: string;
  global_position: string;
  event_id: string;
  stream_id: string;
  stream_version: number;
  event_type: string;
  data: unknown;
  metadata: unknown;
  occurred_at: Date;
};

/**
 * An organization's sealed events after chain index `after`, oldest first. Scoped by the seal's organization (the
 * index) and, as `organizationOf`, by the event's own: the hash does not cover the seal's, so a seal changed in the
 * database must not hand the event to another organization (`verify-log` reports it as organization-mismatch).
 */
export async function listOrganizationEvents(
  db: Kysely<unknown>,
  options: { organizationId: string; after: string; limit: number },
): Promise<AuditEvent[]> {
  const result = await sql<Row>`
    SELECT s.chain_index::text AS chain_index, s.hash, e.global_position::text AS global_position,
           e.event_id::text AS event_id, e.stream_id, e.stream_version, e.event_type, e.data, e.metadata,
           e.occurred_at
      FROM event_seals s JOIN events e ON e.global_position = s.global_position
     WHERE s.organization_id = ${options.organizationId} AND s.chain_index > ${options.after}::bigint
       AND CASE WHEN jsonb_typeof(e.data -> 'organizationId') = 'string' THEN e.data ->> 'organizationId'
                WHEN jsonb_typeof(e.metadata -> 'organizationId') = 'string' THEN e.metadata ->> 'organizationId'
                ELSE '' END = ${options.organizationId}
     ORDER BY s.chain_index
     LIMIT ${options.limit}`.execute(db);
  return result.rows.map((row) => {
    const damaged = damageOf(row);
    return {
      cursor: encodeCursor(row.chain_index),
      position: row.global_position,
      eventId: row.event_id,
      type: row.event_type,
      occurredAt: row.occurred_at.toISOString(),
      actor: actorOf(row.metadata),
      stream: { id: row.stream_id, version: row.stream_version },
      data: withoutHashes(row.data),
      hash: row.hash,
      ...(damaged === undefined ? {} : { damaged }),
    };
  });
}
