import { createHash } from "node:crypto";
import { sql } from "kysely";
import { canonicalJson } from "./canonical-json";

/** An event as the chain covers it: every stored column except the transaction id (checked separately). */
export type SealableEvent = {
  globalPosition: string;
  transactionId: string;
  eventId: string;
  streamId: string;
  streamVersion: number;
  type: string;
  /** UTC, microseconds, as stored: `2025-01-02T03:04:05.678901Z`. */
  occurredAt: string;
  data: unknown;
  metadata: unknown;
};

/** The previous hash of the first event in the chain. */
export const GENESIS_HASH = "0".repeat(64);

/** The RFC 8785 canonical form of a stored event (jsonb keeps no key order, so the stored text is not hashed). */
export function canonicalEvent(event: SealableEvent): string {
  return canonicalJson({
    globalPosition: event.globalPosition,
    eventId: event.eventId,
    streamId: event.streamId,
    streamVersion: event.streamVersion,
    type: event.type,
    occurredAt: event.occurredAt,
    data: event.data,
    metadata: event.metadata,
  });
}

/**
 * A stored event that has no canonical form, so no hash: its jsonb holds what JSON data as JavaScript reads it
 * cannot (a number beyond a double, e.g. `1e400`, which reads as Infinity). Postgres accepts such numbers; the
 * API never writes them, so one is there only if the log was written around it.
 */
export class UnhashableEventError extends Error {
  constructor(
    readonly position: string,
    readonly reason: string,
  ) {
    super(`position ${position} cannot be hashed: ${reason}`);
    this.name = "UnhashableEventError";
  }
}

/** SHA-256(previous hash's 32 bytes || UTF-8 canonical event), lowercase hex; `UnhashableEventError` if none. */
export function chainHash(previousHash: string, event: SealableEvent): string {
  let canonical: string;
  try {
    canonical = canonicalEvent(event);
  } catch (error) {
    if (error instanceof TypeError) throw new UnhashableEventError(event.globalPosition, error.message);
    throw error;
  }
  return createHash("sha256").update(Buffer.from(previousHash, "hex")).update(canonical, "utf8").digest("hex");
}

/** The organization an event is about: its data's `organizationId`, else its metadata's; "" when neither. */
export function organizationOf(event: Pick<SealableEvent, "data" | "metadata">): string {
  const fromData = (event.data as { organizationId?: unknown } | null)?.organizationId;
  if (typeof fromData === "string") return fromData;
  const fromMetadata = (event.metadata as { organizationId?: unknown } | null)?.organizationId;
  return typeof fromMetadata === "string" ? fromMetadata : "";
}

export type SealableRow = {
  global_position: string;
  transaction_id: string;
  event_id: string;
  stream_id: string;
  stream_version: number;
  event_type: string;
  data: string;
  metadata: string;
  occurred_at: string;
};

/** The columns of `events` (alias `e`) as the sealer and the verifier read them: exact text, no lossy types. */
export const SEALABLE_COLUMNS = sql`e.global_position::text AS global_position, e.transaction_id::text AS transaction_id,
  e.event_id::text AS event_id, e.stream_id, e.stream_version, e.event_type, e.data::text AS data,
  e.metadata::text AS metadata,
  to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS occurred_at`;

export function toSealableEvent(row: SealableRow): SealableEvent {
  return {
    globalPosition: row.global_position,
    transactionId: row.transaction_id,
    eventId: row.event_id,
    streamId: row.stream_id,
    streamVersion: row.stream_version,
    type: row.event_type,
    occurredAt: row.occurred_at,
    data: JSON.parse(row.data),
    metadata: JSON.parse(row.metadata),
  };
}
