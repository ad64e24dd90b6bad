import type { EventMetadata } from "@keyledger/domain";
import type { RecordedEvent } from "@keyledger/event-store";

/**
 * An event as published on NATS (JSON, UTF-8). The same fields as in the log; `occurredAt` is an ISO string.
 * Consumers must ignore fields and event types they do not know.
 */
export type EventMessage = {
  eventId: string;
  type: string;
  streamId: string;
  streamVersion: number;
  globalPosition: string;
  transactionId: string;
  occurredAt: string;
  data: Record<string, unknown>;
  metadata: EventMetadata;
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function toEventMessage(event: RecordedEvent): EventMessage {
  return {
    eventId: event.eventId,
    type: event.type,
    streamId: event.streamId,
    streamVersion: event.streamVersion,
    globalPosition: event.globalPosition,
    transactionId: event.transactionId,
    occurredAt: event.occurredAt.toISOString(),
    data: event.data as Record<string, unknown>,
    metadata: event.metadata,
  };
}

export function encodeEventMessage(event: RecordedEvent): Uint8Array {
  return encoder.encode(JSON.stringify(toEventMessage(event)));
}

/** Parses a message body; undefined when it is not an event message (consumers skip it). */
export function decodeEventMessage(bytes: Uint8Array): EventMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const m = value as Partial<EventMessage>;
  if (typeof m.type !== "string" || typeof m.eventId !== "string") return undefined;
  if (typeof m.data !== "object" || m.data === null) return undefined;
  return m as EventMessage;
}

/** A batch of key uses seen by a gateway: the key's SHA-256 hex and when it was last used in the batch window. */
export type KeyUseReport = { uses: { keyHash: string; usedAt: string }[] };

const KEY_HASH = /^[0-9a-f]{64}$/;

export function encodeKeyUseReport(report: KeyUseReport): Uint8Array {
  return encoder.encode(JSON.stringify(report));
}

/** Parses a report, keeping only well-formed entries. */
export function decodeKeyUseReport(bytes: Uint8Array): KeyUseReport {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch {
    return { uses: [] };
  }
  const uses = (value as { uses?: unknown } | null)?.uses;
  if (!Array.isArray(uses)) return { uses: [] };
  return {
    uses: uses.filter(
      (u): u is { keyHash: string; usedAt: string } =>
        typeof u === "object" &&
        u !== null &&
        typeof u.keyHash === "string" &&
        KEY_HASH.test(u.keyHash) &&
        typeof u.usedAt === "string" &&
        !Number.isNaN(Date.parse(u.usedAt)),
    ),
  };
}
