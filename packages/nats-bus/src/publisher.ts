import type { RecordedEvent } from "@keyledger/event-store";
import { type JetStreamClient, jetstream, type PubAck } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { type BusLogger, type NatsLink, silentLogger } from "./connection";
import { eventSubject } from "./subjects";
import { encodeEventMessage } from "./wire";

export type EventPublisherOptions = {
  subjectPrefix: string;
  /** How long to wait for a PubAck (default 5 s). */
  publishTimeoutMs?: number;
  log?: BusLogger;
};

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
   * Fast path: publishes events right after their command committed, as plain core publishes with the same
   * `Nats-Msg-Id` the relay uses: the stream stores (and de-duplicates) them as it does the relay's, core
   * subscribers get them at once, and nothing waits for a PubAck (no reply inbox, no timer per event). Nothing
   * tells whether one arrived: the relay publishes every event from the log anyway, with acknowledgements. Nothing
   * is attempted while NATS is down.
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
    for (const event of events) {
      try {
        const h = natsHeaders();
        h.set("Nats-Msg-Id", event.eventId);
        nc.publish(
          eventSubject(this.options.subjectPrefix, organizationOf(event), event.type),
          encodeEventMessage(event),
          {
            headers: h,
          },
        );
      } catch (error) {
        this.log.debug({ err: error, eventId: event.eventId }, "fast-path publish failed; the relay will publish it");
      }
    }
  }
}
