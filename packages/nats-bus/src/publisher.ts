import type { RecordedEvent } from "@keyledger/event-store";
import { type JetStreamClient, jetstream, type PubAck } from "@nats-io/jetstream";
import { type MsgHdrs, headers as natsHeaders } from "@nats-io/transport-node";
import { type BusLogger, type NatsLink, silentLogger } from "./connection";
import { eventSubject } from "./subjects";
import { encodeEventMessage } from "./wire";

export type EventPublisherOptions = {
  subjectPrefix: string;
  /** How long to wait for a PubAck (default 5 s). */
  publishTimeoutMs?: number;
  /**
   * Given: the fast path asks for the stream's acknowledgement of each creation and use (the bulk of the events) and
   * records those publishes here, so that a relay in this process does not publish acknowledged events again.
   * Omitted: the fast path publishes without asking (no relay here could use the answer).
   */
  fastPathPublishes?: FastPathPublishes;
  log?: BusLogger;
};

/** How many fast-path publishes are remembered for the relay by default (the oldest are forgotten first). */
const FAST_PATH_CAPACITY = 16_384;

/**
 * The fast path's JetStream publishes in this process, each with the promise of its outcome (whether the stream
 * acknowledged it), until the relay in the same process reads the event from the log: an acknowledged event is
 * stored in the stream, so the relay counts it as published instead of publishing it again, which every core
 * subscriber (every gateway among them) would receive and decode a second time. Bounded: past `capacity` the
 * oldest are forgotten, and the relay publishes those events again, which the stream drops as duplicates; nothing
 * is lost either way.
 */
export class FastPathPublishes {
  private readonly outcomes = new Map<string, Promise<boolean>>();

  constructor(private readonly capacity = FAST_PATH_CAPACITY) {}

  /** Records the publish of `eventId`; `acknowledgement` settles with the stream's answer. */
  track(eventId: string, acknowledgement: Promise<unknown>): void {
    if (this.outcomes.size >= this.capacity) {
      const oldest = this.outcomes.keys().next().value;
      if (oldest !== undefined) this.outcomes.delete(oldest);
    }
    this.outcomes.set(
      eventId,
      acknowledgement.then(
        () => true,
        () => false,
      ),
    );
  }

  /**
   * Whether the stream acknowledged the fast path's publish of `eventId`, once it is known; undefined when the fast
   * path here did not publish it (or it was forgotten). The event is forgotten either way: the relay asks once.
   */
  take(eventId: string): Promise<boolean> | undefined {
    const outcome = this.outcomes.get(eventId);
    this.outcomes.delete(eventId);
    return outcome;
  }

  get size(): number {
    return this.outcomes.size;
  }
}

type CoreMessage = { subject: string; payload: Uint8Array; headers: MsgHdrs };

/** Events no cache is waiting for: the fast path may hold them until the end of the event loop's turn. */
const DEFERRABLE_EVENT_TYPES: ReadonlySet<string> = new Set(["KeyCreated", "KeyUsed"]);

/** The organization an event belongs to: every event carries it in its data and metadata. */
export function organizationOf(event: RecordedEvent): string {
  const fromData = (event.data as { organizationId?: unknown }).organizationId;
  return typeof fromData === "string" ? fromData : event.metadata.organizationId;
}

/**
 * Publishes log events to JetStream with `msgID` = event id, so a republish (relay after fast path, or after a
 * crash before the checkpoint) is dropped by the stream's duplicate window.
 */
export class EventPublisher {
  private js: JetStreamClient | undefined;
  private readonly log: BusLogger;
  private fastPathQueue: RecordedEvent[] = [];
  private fastPathScheduled: NodeJS.Immediate | undefined;
  private readonly preparedMessages = new WeakMap<RecordedEvent, CoreMessage>();

  constructor(
    private readonly link: NatsLink,
    private readonly options: EventPublisherOptions,
  ) {
    this.log = options.log ?? silentLogger;
  }

  private client(): JetStreamClient {
    const nc = this.link.connection;
    if (!nc || !this.link.connected) throw new Error("NATS is not connected");
    if (!this.js) this.js = jetstream(nc, { timeout: this.options.publishTimeoutMs ?? 5_000 });
    return this.js;
  }

  /** Publishes one event and resolves with the stream's acknowledgement. Rejects if NATS is not connected. */
  publish(event: RecordedEvent): Promise<PubAck> {
    let js: JetStreamClient;
    try {
      js = this.client();
    } catch (error) {
      return Promise.reject(error);
    }
    return js.publish(
      eventSubject(this.options.subjectPrefix, organizationOf(event), event.type),
      encodeEventMessage(event),
      {
        msgID: event.eventId,
        retries: 1,
      },
    );
  }

  /**
   * Fast path: publishes events right after their command committed, with the same `Nats-Msg-Id` the relay uses:
   * core subscribers get them at once, and the stream stores (and de-duplicates) them as it does the relay's. With
   * `fastPathPublishes`, creations and uses (nearly all the events) are JetStream publishes recorded there with
   * their acknowledgements for the relay (the reply comes after subscribers have the message, and only the relay
   * waits for it). Revocations, rotations and membership changes, and every event without `fastPathPublishes`, are
   * plain core publishes, the shortest path to the gateways (a side run put the acknowledged kind 0.1-0.3 ms later
   * at the median, within this host's noise; these events are rare, so the relay's second copy costs nothing that
   * matters). A publish that fails or is not acknowledged is left to the relay. Nothing is attempted while NATS is
   * down.
   */
  publishCommitted(events: readonly RecordedEvent[]): void {
    if (!this.link.connection || !this.link.connected) return;
    for (const event of events) this.fastPathQueue.push(event);
    // A revocation, rotation or membership change goes out at once (with whatever is queued before it, in order):
    // gateways must drop keys within milliseconds. Creations and uses wait for the end of this turn of the event
    // loop, so the commands that commit in one turn share one socket write (the client writes after each callback
    // otherwise); about 0.2 ms later here.
    if (events.some((event) => !DEFERRABLE_EVENT_TYPES.has(event.type))) this.sendFastPath();
    else this.fastPathScheduled ??= setImmediate(() => this.sendFastPath());
  }

  private sendFastPath(): void {
    if (this.fastPathScheduled) clearImmediate(this.fastPathScheduled);
    this.fastPathScheduled = undefined;
    const events = this.fastPathQueue;
    this.fastPathQueue = [];
    const nc = this.link.connection;
    if (!nc || !this.link.connected) return;
    const fastPathPublishes = this.options.fastPathPublishes;
    for (const event of events) {
      if (fastPathPublishes !== undefined && DEFERRABLE_EVENT_TYPES.has(event.type)) {
        this.publishAcknowledged(event, fastPathPublishes);
        continue;
      }
      try {
        const message = this.preparedMessages.get(event) ?? this.coreMessage(event);
        this.preparedMessages.delete(event);
        nc.publish(message.subject, message.payload, { headers: message.headers });
      } catch (error) {
        this.log.debug({ err: error, eventId: event.eventId }, "fast-path publish failed; the relay will publish it");
      }
    }
  }

  /** An event as the fast path's core publish sends it: subject, JSON body, `Nats-Msg-Id` header. */
  private coreMessage(event: RecordedEvent): CoreMessage {
    const headers = natsHeaders();
    headers.set("Nats-Msg-Id", event.eventId);
    return {
      subject: eventSubject(this.options.subjectPrefix, organizationOf(event), event.type),
      payload: encodeEventMessage(event),
      headers,
    };
  }

  /**
   * Called before the events' transaction commits: encodes the ones the fast path sends at once (revocations,
   * rotations, membership changes), so that after the commit only the publish itself stands between it and the
   * gateways. A revocation is rare, so this code runs cold: the encoding took about 45 µs of the 110 µs from the
   * COMMIT's reply to the socket write (BENCHMARKS.md). Kept by event object: the events of a transaction that
   * does not commit are never published, and their messages go with them. Never throws (it runs inside the
   * transaction): an event it cannot encode is encoded again, or logged, at the publish.
   */
  prepareCommitting(events: readonly RecordedEvent[]): void {
    if (!this.link.connection || !this.link.connected) return;
    for (const event of events) {
      if (DEFERRABLE_EVENT_TYPES.has(event.type)) continue;
      try {
        this.preparedMessages.set(event, this.coreMessage(event));
      } catch {
        // Encoded again at the publish, which logs what fails.
      }
    }
  }

  private publishAcknowledged(event: RecordedEvent, fastPathPublishes: FastPathPublishes): void {
    // The relay's own publish (one attempt: the relay is the retry), its acknowledgement kept for the relay.
    const acknowledgement = this.publish(event);
    acknowledgement.catch((error: unknown) => {
      this.log.debug(
        { err: error, eventId: event.eventId },
        "fast-path publish not acknowledged; the relay will publish it",
      );
    });
    fastPathPublishes.track(event.eventId, acknowledgement);
  }
}
