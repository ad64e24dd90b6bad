import {
  checkpointOf,
  type LogCheckpoint,
  loadCheckpoint,
  type RecordedEvent,
  readAllAfter,
  storeCheckpoint,
} from "@keyledger/event-store";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { type BusLogger, type NatsLink, silentLogger } from "./connection";
import { EventPublisher, type FastPathPublishes } from "./publisher";
import { ensureEventStream } from "./stream";
import { relayHeartbeatSubject } from "./subjects";

export type EventRelayOptions = {
  /**
   * Postgres: the relay opens its own session, which holds the advisory lock, LISTENs for appends (unless
   * `notifications` is given), reads and checkpoints. Give `db` instead only for a single-process database (the
   * embedded PGlite): no lock, no LISTEN (it polls, and `wake()` after commits).
   */
  databaseUrl?: string;
  db?: Kysely<unknown>;
  link: NatsLink;
  streamName: string;
  subjectPrefix: string;
  duplicateWindowMs?: number;
  /** Checkpoint row (and advisory lock) name; default `nats-relay:<streamName>`. */
  checkpointName?: string;
  batchSize?: number;
  /** Fallback poll when no notification arrives (default 500 ms). */
  pollIntervalMs?: number;
  /**
   * Least time between two reads of the log while it keeps growing (default 25 ms): commits of that time are
   * published as one batch with one checkpoint write. The API's fast path publishes each command's events at once;
   * the relay is the guarantee.
   */
  minBatchIntervalMs?: number;
  /** How often a standby relay tries to take the lock (default 1 s). */
  lockRetryMs?: number;
  /**
   * How long an active relay stays active while its NATS link is down (default 3 s): then it ends its session, so
   * the lock goes to a replica that reaches NATS (the verifiers' caches wait for its heartbeats), and it takes the
   * lock again only once its link is back. Only with `databaseUrl` (the embedded database has one relay).
   */
  handOverAfterMs?: number;
  /**
   * Longest `stop` waits for the batch under way (default 1 s). A batch whose acknowledgements do not come (a hung
   * server: each publish waits `publishTimeoutMs`) is left unacknowledged: its checkpoint is not stored, and the
   * next active relay publishes it again.
   */
  stopTimeoutMs?: number;
  /** Wait after a failed publish or database error before trying again (default 500 ms). */
  retryDelayMs?: number;
  publishTimeoutMs?: number;
  notifyChannel?: string;
  /**
   * Where the relay hears of appends instead of a LISTEN on its own session, e.g. the process's shared listener:
   * one listening connection fewer, and one backend fewer that Postgres wakes for every NOTIFY in the database.
   */
  notifications?: { subscribe(channel: string, handler: (payload: string) => void): () => void };
  /**
   * The fast path's publishes in this process (`EventPublisher`'s `fastPathPublishes`): an event the stream
   * acknowledged there counts as published, in its place in the batch, and is not published again (the relay waits
   * for an acknowledgement still under way). An event read before the fast path sent it is published by both.
   */
  fastPathPublishes?: Pick<FastPathPublishes, "take">;
  /**
   * Called with the events the relay is about to publish (not those it passes over for the fast path), for a
   * process whose subscribers share the relay's connection with `noEcho` and so never receive them over NATS.
   * Must not throw.
   */
  onPublishing?: (events: RecordedEvent[]) => void;
  /**
   * Least time between two heartbeats (default 250 ms). After each read that reached the end of the log, once
   * everything read is acknowledged, the relay publishes a heartbeat on `relayHeartbeatSubject`: every event
   * committed before that read has been published ahead of it on the same connection. Verifiers stop trusting their
   * caches when heartbeats stop (a relay cut off from NATS, a hung server, a relay far behind). An idle relay beats
   * once per `pollIntervalMs`.
   */
  heartbeatIntervalMs?: number;
  /** Called with each heartbeat published, for a process whose verifier shares the relay's `noEcho` connection. */
  onHeartbeat?: () => void;
  log?: BusLogger;
};

export type RelayStats = {
  /** Events published by the relay and acknowledged by the stream. */
  published: number;
  /** Events the fast path had already published with an acknowledgement: passed over, not published again. */
  acknowledgedByFastPath: number;
  duplicates: number;
  failedPublishes: number;
  /** Tries to take the lock (a standby makes one per `lockRetryMs`). */
  lockAttempts: number;
  /** Heartbeats published (the log was published up to a read of its end). */
  heartbeats: number;
};

/** The relay's NATS link stayed down: it ends its session so that a replica that reaches NATS takes the lock. */
class HandOver extends Error {
  constructor(downForMs: number) {
    super(`NATS unreachable from this replica for ${Math.round(downForMs)} ms: the relay lets another take over`);
    this.name = "HandOver";
  }
}

const ACKNOWLEDGED_BY_FAST_PATH = Promise.resolve("acknowledged by the fast path" as const);

/** First key of the two-key advisory lock; the second is `hashtext(checkpointName)`. */
const RELAY_LOCK_CLASS = 7_244_912;

/** Kysely over one dedicated client, so every relay query runs in the session that holds the lock. */
function sessionDatabase(client: pg.Client): Kysely<unknown> {
  const pooled = { query: client.query.bind(client), release() {} };
  return new Kysely<unknown>({
    dialect: new PostgresDialect({
      pool: {
        connect: async () => pooled as unknown as pg.PoolClient,
        end: async () => {},
      } as unknown as pg.Pool,
    }),
  });
}

/**
 * Publishes the whole log to JetStream, in commit-safe order, at least once. The checkpoint advances only after
 * the PubAcks of everything before it. One relay is active per checkpoint name (a session advisory lock); the
 * others wait and take over when its session ends.
 */
export class EventRelay {
  private running = false;
  private loop: Promise<void> | undefined;
  private active = false;
  private wakeRequested = false;
  private wakeUp: (() => void) | undefined;
  private current: LogCheckpoint | undefined;
  private readonly publisher: EventPublisher;
  private readonly log: BusLogger;
  private readonly checkpointName: string;
  private readonly unsubscribeLink: () => void;
  private readonly unsubscribeNotifications: () => void;
  private lastHeartbeatAt = Number.NEGATIVE_INFINITY;
  readonly stats: RelayStats = {
    published: 0,
    acknowledgedByFastPath: 0,
    duplicates: 0,
    failedPublishes: 0,
    lockAttempts: 0,
    heartbeats: 0,
  };

  constructor(private readonly options: EventRelayOptions) {
    this.log = options.log ?? silentLogger;
    this.checkpointName = options.checkpointName ?? `nats-relay:${options.streamName}`;
    this.publisher = new EventPublisher(options.link, {
      subjectPrefix: options.subjectPrefix,
      publishTimeoutMs: options.publishTimeoutMs,
      log: this.log,
    });
    this.unsubscribeLink = options.link.onChange(() => this.wake());
    this.unsubscribeNotifications =
      options.notifications?.subscribe(options.notifyChannel ?? "keyledger_events", () => this.wake()) ?? (() => {});
  }

  /** True while this relay holds the lock and publishes. */
  get isActive(): boolean {
    return this.active;
  }

  /** The last checkpoint this relay stored (undefined before it became active). */
  get checkpoint(): LogCheckpoint | undefined {
    return this.current;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /**
   * Stops publishing and ends the session, which releases the lock for a standby relay. Waits for the batch under
   * way at most `stopTimeoutMs`; the loop then ends by itself once its publishes fail or time out (closing the
   * NATS link makes them fail at once), storing no checkpoint past what was acknowledged.
   */
  async stop(): Promise<void> {
    this.running = false;
    this.unsubscribeLink();
    this.unsubscribeNotifications();
    this.wake();
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([
      (this.loop ?? Promise.resolve()).then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), this.options.stopTimeoutMs ?? 1_000);
      }),
    ]);
    clearTimeout(timer);
    if (!stopped) this.log.warn({ checkpoint: this.checkpointName }, "event relay stopped with a batch unacknowledged");
  }

  /** Makes the loop look at the log now (called on NOTIFY and NATS reconnects). */
  wake(): void {
    this.wakeRequested = true;
    this.wakeUp?.();
  }

  private pause(ms: number): Promise<void> {
    if (this.wakeRequested || !this.running) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = done;
    }).finally(() => {
      this.wakeUp = undefined;
    });
  }

  private async run(): Promise<void> {
    const retryDelay = this.options.retryDelayMs ?? 500;
    const { databaseUrl, db } = this.options;
    if (databaseUrl === undefined) {
      if (db === undefined) throw new TypeError("EventRelay needs databaseUrl or db");
      while (this.running) {
        try {
          this.active = true;
          await this.publishLoop(db, () => undefined);
        } catch (error) {
          if (this.running) this.log.warn({ err: error }, "event relay interrupted; retrying");
          await this.pause(retryDelay);
        } finally {
          this.active = false;
        }
      }
      return;
    }
    while (this.running) {
      const client = new pg.Client({ connectionString: databaseUrl, statement_timeout: 30_000 });
      let broken: Error | undefined;
      client.on("error", (error) => {
        broken = error;
        this.wake();
      });
      try {
        await client.connect();
        if (!(await this.acquireLock(client, () => broken))) continue;
        this.active = true;
        this.log.info({ checkpoint: this.checkpointName }, "event relay active");
        if (!this.options.notifications) {
          client.on("notification", () => this.wake());
          await client.query(`LISTEN ${client.escapeIdentifier(this.options.notifyChannel ?? "keyledger_events")}`);
        }
        await this.publishLoop(sessionDatabase(client), () => broken, this.options.handOverAfterMs ?? 3_000);
      } catch (error) {
        if (error instanceof HandOver) this.log.warn({ reason: error.message }, "event relay handing over");
        else if (this.running) this.log.warn({ err: error }, "event relay interrupted; retrying");
        await this.pause(retryDelay);
      } finally {
        if (this.active) this.log.info({ checkpoint: this.checkpointName }, "event relay inactive");
        this.active = false;
        await client.end().catch(() => {});
      }
    }
  }

  private async acquireLock(client: pg.Client, broken: () => Error | undefined): Promise<boolean> {
    const retry = this.options.lockRetryMs ?? 1_000;
    while (this.running) {
      const err = broken();
      if (err) throw err;
      if (!this.options.link.connected) {
        // A relay that cannot publish does not take the lock from one that could.
        await this.pause(retry);
        this.wakeRequested = false;
        continue;
      }
      this.stats.lockAttempts += 1;
      const result = await client.query<{ locked: boolean }>(
        "SELECT pg_try_advisory_lock($1, hashtext($2)) AS locked",
        [RELAY_LOCK_CLASS, this.checkpointName],
      );
      if (result.rows[0]?.locked) return true;
      // Wake-ups (every commit's, every NOTIFY's) are for an active relay: a standby waits out its retry interval
      // instead of asking Postgres for the lock at the rate commits happen. A broken session or stop() ends it.
      const retryAt = performance.now() + retry;
      while (this.running && !broken() && performance.now() < retryAt) {
        await this.pause(retryAt - performance.now());
        this.wakeRequested = false;
      }
    }
    return false;
  }

  private async publishLoop(
    db: Kysely<unknown>,
    broken: () => Error | undefined,
    handOverAfterMs = Number.POSITIVE_INFINITY,
  ): Promise<void> {
    const { link } = this.options;
    let checkpoint = await loadCheckpoint(db, this.checkpointName);
    this.current = checkpoint;
    let streamReady = false;
    let downSince: number | undefined;
    while (this.running) {
      const err = broken();
      if (err) throw err;
      if (!link.connected) {
        downSince ??= performance.now();
        if (performance.now() - downSince >= handOverAfterMs) throw new HandOver(performance.now() - downSince);
        streamReady = false;
        await this.pause(this.options.pollIntervalMs ?? 500);
        this.wakeRequested = false;
        continue;
      }
      downSince = undefined;
      if (!streamReady) {
        const nc = link.connection;
        if (!nc) continue;
        await ensureEventStream(nc, this.options);
        streamReady = true;
      }
      this.wakeRequested = false;
      const batchSize = this.options.batchSize ?? 500;
      const readAt = performance.now();
      const events = await readAllAfter(db, checkpoint, batchSize);
      if (events.length === 0) {
        this.heartbeat();
        await this.pause(this.options.pollIntervalMs ?? 500);
        continue;
      }
      const acked = await this.publishInOrder(events);
      if (acked > 0) {
        checkpoint = checkpointOf(events[acked - 1] as RecordedEvent);
        await storeCheckpoint(db, this.checkpointName, checkpoint);
        this.current = checkpoint;
      }
      if (acked < events.length) await this.pause(this.options.retryDelayMs ?? 500);
      else if (events.length < batchSize) {
        // That read reached the end of the log, and all of it is acknowledged.
        this.heartbeat();
        const wait = (this.options.minBatchIntervalMs ?? 25) - (performance.now() - readAt);
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  /** Says on NATS that every event committed before the last read is published (at most once per interval). */
  private heartbeat(): void {
    const now = performance.now();
    if (now - this.lastHeartbeatAt < (this.options.heartbeatIntervalMs ?? 250)) return;
    const nc = this.options.link.connection;
    if (!nc || !this.options.link.connected) return;
    try {
      nc.publish(
        relayHeartbeatSubject(this.options.subjectPrefix),
        JSON.stringify({ relay: this.checkpointName, position: this.current?.globalPosition ?? "0" }),
      );
    } catch {
      return; // the connection is closing: no heartbeat, and verifiers stop trusting their caches
    }
    this.lastHeartbeatAt = now;
    this.stats.heartbeats += 1;
    this.options.onHeartbeat?.();
  }

  /**
   * Publishes a batch pipelined on one connection (the server stores it in send order) and returns how many
   * events from the start of the batch were acknowledged without a gap. Events the stream acknowledged for the fast
   * path count as acknowledged where they are, unpublished.
   */
  private async publishInOrder(events: RecordedEvent[]): Promise<number> {
    const fastPath = this.options.fastPathPublishes;
    // First every fast-path outcome of the batch (an acknowledgement takes about a round trip to NATS), then the
    // publishes of the rest in log order, pipelined.
    const inStream = await Promise.all(events.map((event) => fastPath?.take(event.eventId) ?? false));
    this.options.onPublishing?.(events.filter((_, i) => !inStream[i]));
    const results = await Promise.allSettled(
      events.map((event, i) => (inStream[i] ? ACKNOWLEDGED_BY_FAST_PATH : this.publisher.publish(event))),
    );
    let acked = 0;
    for (const result of results) {
      if (result.status !== "fulfilled") break;
      acked += 1;
      if (result.value === "acknowledged by the fast path") {
        this.stats.acknowledgedByFastPath += 1;
        continue;
      }
      this.stats.published += 1;
      if (result.value.duplicate) this.stats.duplicates += 1;
    }
    if (acked < events.length) {
      this.stats.failedPublishes += 1;
      const failure = results[acked] as PromiseRejectedResult;
      this.log.warn({ err: failure.reason, pending: events.length - acked }, "relay publish failed; will retry");
    }
    return acked;
  }
}
