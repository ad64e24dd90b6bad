import type { RecordedEvent } from "@keyledger/event-store";
import {
  type BusLogger,
  EventPublisher,
  EventRelay,
  FastPathPublishes,
  type KeyUseReport,
  NatsLink,
  subscribeKeyUseReports,
} from "@keyledger/nats-bus";
import type { NotificationSource } from "@keyledger/projections";
import type { FastifyBaseLogger } from "fastify";
import type { Kysely } from "kysely";
import type { ApiKeyVerifier } from "./api-key-verifier";
import type { KeyCommands } from "./commands/key-commands";
import { type MembershipConsumerConfig, startMembershipConsumer } from "./membership-consumer";

declare module "fastify" {
  interface FastifyInstance {
    /** The in-process API-key verifier (cache invalidated over NATS when `nats` is configured). */
    apiKeyVerifier: ApiKeyVerifier;
    /** The NATS side, when configured (e.g. for the membership consumer to share its connection). */
    eventBus: ApiEventBus | undefined;
  }
}

/** How the API talks to NATS. Absent (`NATS_URL` unset): no publishing, no relay, no cache in the verifier. */
export type EventBusOptions = {
  url: string;
  streamName: string;
  subjectPrefix: string;
  duplicateWindowMs?: number;
  /**
   * The relay: `{ databaseUrl }` gives it its own Postgres session (advisory lock; it LISTENs there unless the
   * app has a notification listener); `{ db: "shared" }` runs it on the app's database without a lock (the
   * single-process embedded database); false: no relay here.
   */
  relay: { databaseUrl: string } | { db: "shared" } | false;
  /** Membership changes from the organizations service, consumed by a durable consumer; null/absent: off. */
  membership?: MembershipConsumerConfig | null;
  /** The in-process verifier's cache. */
  verifierCache?: { maxEntries?: number; ttlMs?: number; negativeTtlMs?: number };
};

/** How long after a commit the relay is woken (the fast path has published the events by then). */
const RELAY_WAKE_DELAY_MS = 5;

/**
 * The API's NATS side: one connection for the fast-path publisher, the relay and gateways' key-use reports.
 * Starting it never waits for NATS; while NATS is down commands still commit and the relay catches up later.
 */
export class ApiEventBus {
  readonly link: NatsLink;
  readonly relay: EventRelay | undefined;
  private readonly publisher: EventPublisher;
  /** What `stopReceiving` stops: the key-use report subscription and the membership consumer. */
  private readonly receivers: (() => Promise<void>)[] = [];
  private relayWake: NodeJS.Timeout | undefined;
  private relayPublishing: (events: RecordedEvent[]) => void = () => {};
  private relayHeartbeat: () => void = () => {};

  /** `notifications`: the process's Postgres listener, which wakes the relay (instead of a LISTEN of its own). */
  constructor(options: EventBusOptions, db: Kysely<unknown>, log: BusLogger, notifications?: NotificationSource) {
    // No echo: the in-process verifier shares this connection (app.ts) and gets this process's events directly,
    // the fast path's at commit and the relay's as it publishes them (`onRelayPublishing`).
    this.link = new NatsLink({ servers: options.url, name: "keyledger-api", log, noEcho: true });
    // With a relay here, it passes over the events the stream acknowledged for the fast path: each is published once.
    const fastPathPublishes = options.relay !== false ? new FastPathPublishes() : undefined;
    this.publisher = new EventPublisher(this.link, { subjectPrefix: options.subjectPrefix, fastPathPublishes, log });
    if (options.relay !== false) {
      this.relay = new EventRelay({
        ...("databaseUrl" in options.relay ? { databaseUrl: options.relay.databaseUrl, notifications } : { db }),
        link: this.link,
        streamName: options.streamName,
        subjectPrefix: options.subjectPrefix,
        duplicateWindowMs: options.duplicateWindowMs,
        fastPathPublishes,
        onPublishing: (events) => this.relayPublishing(events),
        onHeartbeat: () => this.relayHeartbeat(),
        log,
      });
      this.relay.start();
    }
  }

  /**
   * `handler` gets the events the relay here publishes: this connection does not echo them back, and the
   * in-process subscribers (verifier, membership cache) must see them as every other process does.
   */
  onRelayPublishing(handler: (events: RecordedEvent[]) => void): void {
    this.relayPublishing = handler;
  }

  /** `handler` is called at each heartbeat of the relay here (not echoed either): the verifier's cache lease. */
  onRelayHeartbeat(handler: () => void): void {
    this.relayHeartbeat = handler;
  }

  /** Before a command's transaction commits: its urgent events are encoded now (`EventPublisher.prepareCommitting`). */
  prepareCommitting(events: RecordedEvent[]): void {
    this.publisher.prepareCommitting(events);
  }

  /**
   * Fast path, called after a command commits: publish now rather than at the relay's next read. The relay is
   * woken `RELAY_WAKE_DELAY_MS` later, so its read and republish do not compete with this delivery for the CPU.
   */
  publishCommitted(events: RecordedEvent[]): void {
    this.publisher.publishCommitted(events);
    if (this.relay && this.relayWake === undefined) {
      this.relayWake = setTimeout(() => {
        this.relayWake = undefined;
        this.relay?.wake();
      }, RELAY_WAKE_DELAY_MS);
      this.relayWake.unref();
    }
  }

  /** Receives gateways' key-use reports (one replica per batch, by queue group) until `stopReceiving`. */
  onKeyUseReports(subjectPrefix: string, handler: (report: KeyUseReport) => void): void {
    this.receivers.push(subscribeKeyUseReports(this.link, { subjectPrefix }, handler));
  }

  /**
   * First step of a shutdown: stops taking work from NATS (key-use reports, membership changes) and resolves once
   * every report already sent to this replica has been handed to its handler and the membership consumer has
   * finished the message it was applying. The fast path and the relay keep publishing until `close`.
   */
  async stopReceiving(): Promise<void> {
    const receivers = this.receivers.splice(0);
    await Promise.all(receivers.map((stop) => stop()));
  }

  /**
   * Starts consuming membership changes once NATS is connected (the durable consumer survives reconnects and
   * replicas share it). Failures to set it up are logged and retried on the next connection.
   */
  consumeMembership(config: MembershipConsumerConfig, commands: KeyCommands, log: FastifyBaseLogger): void {
    let consumer: Promise<{ stop(): Promise<void> } | undefined> | undefined;
    const start = () => {
      const nc = this.link.connection;
      if (consumer !== undefined || nc === undefined) return;
      consumer = startMembershipConsumer(nc, commands, config, log).catch((error: unknown) => {
        log.warn({ err: error }, "could not start the membership consumer; retrying on reconnect");
        consumer = undefined;
        return undefined;
      });
    };
    const off = this.link.onChange((state) => {
      if (state === "connected") start();
    });
    start();
    this.receivers.push(async () => {
      off();
      await consumer?.then((c) => c?.stop());
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.relayWake);
    await this.stopReceiving();
    await this.relay?.stop();
    await this.link.close();
  }
}
