import { randomUUID } from "node:crypto";
import { hashKeyValue, type KeyledgerEvent, keyStreamId } from "@keyledger/domain";
import {
  appendToStream,
  checkpointOf,
  LOG_START,
  type LogCheckpoint,
  loadCheckpoint,
  notifyAppended,
  readAllAfter,
  storeCheckpoint,
} from "@keyledger/event-store";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniqueId } from "../../../test/support/api-harness";
import { type OwnNatsServer, readStreamEvents, startNatsServer, testEventStream } from "../../../test/support/nats";
import { TcpProxy } from "../../../test/support/tcp-proxy";
import { PgNotificationListener } from "../../projections/src/index";
import {
  EventPublisher,
  EventRelay,
  ensureEventStream,
  FastPathPublishes,
  NatsLink,
  organizationSubjectFilter,
} from "../src/index";

const databaseUrl = () => inject("databaseUrl");

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * A new checkpoint name set at the end of the log as it is now: the relay under test publishes what is appended from
 * here on, not the whole history other test files wrote into the run's database.
 */
async function checkpointAtHead(db: Kysely<unknown>): Promise<string> {
  const name = `relay-test:${randomUUID()}`;
  const head = await sql<{ transaction_id: string; global_position: string }>`
    SELECT transaction_id::text, global_position::text FROM events
     ORDER BY transaction_id DESC, global_position DESC LIMIT 1`.execute(db);
  const row = head.rows[0];
  if (row) await storeCheckpoint(db, name, { transactionId: row.transaction_id, globalPosition: row.global_position });
  return name;
}

function isBefore(a: LogCheckpoint, b: LogCheckpoint): boolean {
  const [at, bt] = [BigInt(a.transactionId), BigInt(b.transactionId)];
  return at < bt || (at === bt && BigInt(a.globalPosition) < BigInt(b.globalPosition));
}

function keyCreated(organizationId: string, name: string): KeyledgerEvent {
  return {
    type: "KeyCreated",
    data: {
      keyId: randomUUID(),
      organizationId,
      userId: "user-1",
      name,
      keyHash: hashKeyValue(randomUUID()),
      maskedValue: "dtn********************abc",
      permissions: [],
      createdAt: new Date().toISOString(),
      expiresAt: null,
    },
  };
}

describe("event relay", () => {
  const stream = testEventStream();
  let db: Kysely<unknown>;
  let link: NatsLink;

  beforeAll(async () => {
    db = new Kysely({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: databaseUrl(), max: 4 }) }),
    });
    link = new NatsLink({ servers: stream.natsUrl, name: "relay-test" });
    await link.whenConnected();
  });
  afterAll(async () => {
    await stream.cleanup();
    await link.close();
    await db.destroy();
  });

  async function appendKeys(organizationId: string, count: number) {
    for (let i = 0; i < count; i++) {
      await db.transaction().execute(async (trx) => {
        const event = keyCreated(organizationId, `k${i}`);
        await appendToStream(trx, keyStreamId(organizationId, "user-1", `k${i}`), 0, [event], {
          actorUserId: "user-1",
          organizationId,
          authMethod: "jwt",
          requestId: null,
        });
        await notifyAppended(trx);
      });
    }
  }

  async function eventIdsInLog(organizationId: string): Promise<string[]> {
    const result = await sql<{ event_id: string }>`
      SELECT event_id FROM events WHERE data->>'organizationId' = ${organizationId}
       ORDER BY transaction_id, global_position`.execute(db);
    return result.rows.map((r) => r.event_id);
  }

  async function eventIdsInStream(organizationId: string): Promise<string[]> {
    const messages = await readStreamEvents(
      stream.natsUrl,
      stream.streamName,
      organizationSubjectFilter(stream.subjectPrefix, organizationId),
    );
    return messages.map((m) => m.event?.eventId ?? "?");
  }

  /**
   * The organization's events after `checkpointName` as the relay reads the log (commit-safe: it may wait for other
   * test files' transactions to end), once all `count` are readable.
   */
  async function readableEvents(organizationId: string, checkpointName: string, count: number) {
    let events: Awaited<ReturnType<typeof readAllAfter>> = [];
    await until(async () => {
      const all = await readAllAfter(db, await loadCheckpoint(db, checkpointName), 100_000);
      events = all.filter((e) => (e.data as { organizationId?: string }).organizationId === organizationId);
      return events.length === count;
    }, "the appended events to be readable");
    return events;
  }

  /** A core subscription to the organization's subjects, recording the event id of every message it receives. */
  async function subscribeToOrganization(organizationId: string) {
    const nc = link.connection;
    if (!nc) throw new Error("not connected");
    const seen: string[] = [];
    const sub = nc.subscribe(organizationSubjectFilter(stream.subjectPrefix, organizationId), {
      callback: (_error, msg) => {
        seen.push((msg.json() as { eventId: string }).eventId);
      },
    });
    await nc.flush();
    return { nc, seen, sub };
  }

  it("publishes every event of the log in commit order, once, and a republish is a duplicate", async () => {
    const org = uniqueId("org.with dots");
    const checkpointName = await checkpointAtHead(db);
    await appendKeys(org, 5);
    const relay = new EventRelay({ databaseUrl: databaseUrl(), link, ...stream, checkpointName, pollIntervalMs: 50 });
    relay.start();
    try {
      const expected = await eventIdsInLog(org);
      expect(expected).toHaveLength(5);
      await until(async () => (await eventIdsInStream(org)).length >= 5, "the relay to publish");
      expect(await eventIdsInStream(org)).toEqual(expected);

      // Republishing an event already in the stream (what the fast path and a restarted relay do) is dropped.
      const publisher = new EventPublisher(link, { subjectPrefix: stream.subjectPrefix });
      const again = (await readAllAfter(db, LOG_START, 100_000)).find((e) => e.eventId === expected[0]);
      if (!again) throw new Error("event not in the log");
      const ack = await publisher.publish(again);
      expect(ack.duplicate).toBe(true);
      expect(await eventIdsInStream(org)).toEqual(expected);
    } finally {
      await relay.stop();
    }
  });

  it("is woken through a shared notification listener (no LISTEN of its own) when one is given", async () => {
    const org = uniqueId("org.shared-listener");
    const checkpointName = await checkpointAtHead(db);
    const listener = new PgNotificationListener({ connectionString: databaseUrl(), reconnectDelayMs: 100 });
    // The relay asks for keyledger_events; this source hands it a channel nobody else uses, so only a wake-up
    // through the source (not a LISTEN on the relay's own session) can make it publish soon: it polls once an hour.
    const wakeChannel = `relay_test_${randomUUID().replaceAll("-", "")}`;
    const asked: string[] = [];
    const relay = new EventRelay({
      databaseUrl: databaseUrl(),
      link,
      ...stream,
      checkpointName,
      pollIntervalMs: 3_600_000,
      notifications: {
        subscribe: (channel, handler) => {
          asked.push(channel);
          return listener.subscribe(wakeChannel, handler);
        },
      },
    });
    relay.start();
    try {
      await listener.ready();
      await until(() => relay.isActive, "the relay to take the lock");
      await new Promise((resolve) => setTimeout(resolve, 200)); // its first read has found nothing
      for (let i = 0; i < 2; i++) {
        await appendToStream(db, keyStreamId(org, "user-1", `k${i}`), 0, [keyCreated(org, `k${i}`)], {
          actorUserId: "user-1",
          organizationId: org,
          authMethod: "jwt",
          requestId: null,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await eventIdsInStream(org)).toEqual([]);
      await sql`SELECT pg_notify(${wakeChannel}, '')`.execute(db);
      await until(async () => (await eventIdsInStream(org)).length >= 2, "the relay to publish", 10_000);
      expect(await eventIdsInStream(org)).toEqual(await eventIdsInLog(org));
      expect(asked).toEqual(["keyledger_events"]);
    } finally {
      await relay.stop();
      await listener.close();
    }
  });

  it("stores a fast-path (core) publish in the stream under its message id, so the relay's copy is a duplicate", async () => {
    const org = uniqueId("org.fast");
    const checkpointName = await checkpointAtHead(db);
    await appendKeys(org, 3);
    const events = await readableEvents(org, checkpointName, 3);
    const publisher = new EventPublisher(link, { subjectPrefix: stream.subjectPrefix });
    // Seen by a core subscriber at once, without a PubAck.
    const { seen, sub } = await subscribeToOrganization(org);
    publisher.publishCommitted(events);
    await until(() => seen.length >= 3, "the fast-path messages");
    await until(async () => (await eventIdsInStream(org)).length >= 3, "the stream to store them");
    expect(await eventIdsInStream(org)).toEqual(events.map((e) => e.eventId));
    const relay = new EventRelay({ databaseUrl: databaseUrl(), link, ...stream, checkpointName, pollIntervalMs: 50 });
    relay.start();
    try {
      // The relay publishes the same three again (core subscribers see them twice); the stream keeps one copy each.
      await until(() => seen.length >= 6, "the relay's publishes");
      expect(await eventIdsInStream(org)).toEqual(events.map((e) => e.eventId));
      const ack = await publisher.publish(events[0] as (typeof events)[number]);
      expect(ack.duplicate).toBe(true);
    } finally {
      sub.unsubscribe();
      await relay.stop();
    }
  });

  it("encodes a revocation before its commit: nothing goes out until it is published, then the same message", async () => {
    const org = uniqueId("org.prepared");
    const checkpointName = await checkpointAtHead(db);
    await appendKeys(org, 1);
    const [created] = await readableEvents(org, checkpointName, 1);
    if (created === undefined) throw new Error("no KeyCreated");
    const key = created.data as { keyId: string; userId: string; name: string; keyHash: string };
    await db.transaction().execute(async (trx) => {
      const revoked: KeyledgerEvent = {
        type: "KeyRevoked",
        data: {
          ...key,
          organizationId: org,
          previousKeyHash: null,
          reason: "deleted",
          revokedAt: new Date().toISOString(),
        },
      };
      await appendToStream(trx, created.streamId, 1, [revoked], {
        actorUserId: "user-1",
        organizationId: org,
        authMethod: "jwt",
        requestId: null,
      });
    });
    const [, revoked] = await readableEvents(org, checkpointName, 2);
    if (revoked?.type !== "KeyRevoked") throw new Error("no KeyRevoked");
    const nc = link.connection;
    if (!nc) throw new Error("not connected");
    const received: { subject: string; msgId: string | undefined; body: string }[] = [];
    const sub = nc.subscribe(organizationSubjectFilter(stream.subjectPrefix, org), {
      callback: (_error, msg) => {
        received.push({ subject: msg.subject, msgId: msg.headers?.get("Nats-Msg-Id"), body: msg.string() });
      },
    });
    await nc.flush();
    const prepared = new EventPublisher(link, { subjectPrefix: stream.subjectPrefix });
    const unprepared = new EventPublisher(link, { subjectPrefix: stream.subjectPrefix });
    try {
      prepared.prepareCommitting([revoked]);
      await nc.flush();
      expect(received).toEqual([]);
      prepared.publishCommitted([revoked]);
      await until(() => received.length === 1, "the prepared publish");
      unprepared.publishCommitted([revoked]);
      await until(() => received.length === 2, "the unprepared publish");
      const [fromPrepared, fromUnprepared] = received;
      expect(fromPrepared).toEqual(fromUnprepared);
      expect(fromPrepared?.msgId).toBe(revoked.eventId);
      expect(JSON.parse(fromPrepared?.body ?? "{}")).toMatchObject({ eventId: revoked.eventId, type: "KeyRevoked" });
      // A message is sent once per publish: publishing the event again encodes it again, as the relay does.
      prepared.publishCommitted([revoked]);
      await until(() => received.length === 3, "the second publish");
      expect(received[2]).toEqual(fromPrepared);
    } finally {
      sub.unsubscribe();
    }
  });

  it("passes over the events the stream acknowledged for the fast path: subscribers get each event once", async () => {
    const org = uniqueId("org.acked");
    const checkpointName = await checkpointAtHead(db);
    await appendKeys(org, 4);
    const events = await readableEvents(org, checkpointName, 4);
    const { nc, seen, sub } = await subscribeToOrganization(org);
    const fastPathPublishes = new FastPathPublishes();
    const publisher = new EventPublisher(link, { subjectPrefix: stream.subjectPrefix, fastPathPublishes });
    const relay = new EventRelay({
      databaseUrl: databaseUrl(),
      link,
      ...stream,
      checkpointName,
      pollIntervalMs: 50,
      fastPathPublishes,
    });
    // Three go out on the fast path (creations at the end of the event loop's turn), the relay starting right after,
    // before their acknowledgements are back; the last event never goes out on the fast path (as when its command's
    // process had lost NATS).
    publisher.publishCommitted(events.slice(0, 3));
    await new Promise((resolve) => setImmediate(resolve));
    expect(fastPathPublishes.size).toBe(3);
    relay.start();
    const last = events[3] as (typeof events)[number];
    try {
      await until(async () => {
        const stored = await loadCheckpoint(db, checkpointName);
        return !isBefore(stored, checkpointOf(last));
      }, "the relay's checkpoint to pass the four events");
      // The relay's publishes reach this subscription before their acknowledgements reach the relay (same server,
      // same connection), so by now a second copy would have arrived.
      await nc.flush();
      expect(relay.stats.acknowledgedByFastPath).toBe(3);
      expect(relay.stats.published).toBeGreaterThanOrEqual(1);
      expect(fastPathPublishes.size).toBe(0);
      expect(seen).toEqual(events.map((e) => e.eventId));
      expect(await eventIdsInStream(org)).toEqual(events.map((e) => e.eventId));
    } finally {
      sub.unsubscribe();
      await relay.stop();
    }
  });

  it("fast-path publishes: the outcome of each (acknowledged or not), taken once, the oldest forgotten", async () => {
    const publishes = new FastPathPublishes(2);
    publishes.track("a", Promise.resolve());
    publishes.track("b", Promise.reject(new Error("no acknowledgement")));
    publishes.track("c", Promise.resolve());
    expect(publishes.size).toBe(2);
    expect(publishes.take("a")).toBeUndefined();
    await expect(publishes.take("b")).resolves.toBe(false);
    expect(publishes.take("b")).toBeUndefined();
    await expect(publishes.take("c")).resolves.toBe(true);
    expect(publishes.size).toBe(0);
  });

  it("runs one active relay per checkpoint; a standby takes over when the active one stops", async () => {
    const checkpointName = await checkpointAtHead(db);
    const options = {
      databaseUrl: databaseUrl(),
      link,
      ...stream,
      checkpointName,
      pollIntervalMs: 50,
      lockRetryMs: 100,
    };
    const first = new EventRelay(options);
    const second = new EventRelay(options);
    first.start();
    await until(() => first.isActive, "the first relay to take the lock");
    second.start();
    const org = uniqueId("org");
    await appendKeys(org, 3);
    await until(async () => (await eventIdsInStream(org)).length >= 3, "the active relay to publish");
    expect(first.isActive).toBe(true);
    expect(second.isActive).toBe(false);

    await first.stop();
    await until(() => second.isActive, "the standby relay to take over");
    const more = uniqueId("org");
    await appendKeys(more, 2);
    await until(async () => (await eventIdsInStream(more)).length >= 2, "the new active relay to publish");
    expect(await eventIdsInStream(more)).toEqual(await eventIdsInLog(more));
    expect(await eventIdsInStream(org)).toEqual(await eventIdsInLog(org));
    await second.stop();
  });

  it("an active relay cut off from NATS hands the lock to a standby that reaches it, and does not take it back meanwhile", async () => {
    const checkpointName = await checkpointAtHead(db);
    const proxy = new TcpProxy("127.0.0.1", Number(new URL(stream.natsUrl).port || 4222));
    const proxiedLink = new NatsLink({
      servers: `nats://127.0.0.1:${await proxy.start()}`,
      name: "relay-test-proxied",
    });
    await proxiedLink.whenConnected();
    const options = { databaseUrl: databaseUrl(), ...stream, checkpointName, pollIntervalMs: 50, lockRetryMs: 100 };
    const cutOff = new EventRelay({ ...options, link: proxiedLink, handOverAfterMs: 500 });
    const standby = new EventRelay({ ...options, link });
    try {
      cutOff.start();
      await until(() => cutOff.isActive, "the proxied relay to take the lock");
      standby.start();
      await until(() => standby.stats.lockAttempts >= 1, "the standby to try");
      proxy.cut();
      await until(() => standby.isActive, "the standby to take over");
      expect(cutOff.isActive).toBe(false);
      const org = uniqueId("org");
      await appendKeys(org, 2);
      await until(async () => (await eventIdsInStream(org)).length >= 2, "the new active relay to publish");
      expect(await eventIdsInStream(org)).toEqual(await eventIdsInLog(org));
      // Its link back, the relay that handed over waits as a standby.
      proxy.restore();
      await proxiedLink.whenConnected();
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(standby.isActive).toBe(true);
      expect(cutOff.isActive).toBe(false);
    } finally {
      await cutOff.stop();
      await standby.stop();
      await proxiedLink.close();
      await proxy.close();
    }
  });

  it("a standby asks for the lock once per lockRetryMs, however often it is woken", async () => {
    const checkpointName = await checkpointAtHead(db);
    const options = { databaseUrl: databaseUrl(), link, ...stream, checkpointName, pollIntervalMs: 50 };
    const active = new EventRelay(options);
    const standby = new EventRelay({ ...options, lockRetryMs: 300 });
    active.start();
    try {
      await until(() => active.isActive, "the first relay to take the lock");
      standby.start();
      await until(() => standby.stats.lockAttempts >= 1, "the standby's first try");
      const before = standby.stats.lockAttempts;
      // What every commit and NOTIFY does to the relay of each replica: 40 wake-ups in about 400 ms.
      for (let i = 0; i < 40; i++) {
        standby.wake();
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(standby.isActive).toBe(false);
      expect(standby.stats.lockAttempts - before).toBeLessThanOrEqual(3);
    } finally {
      await active.stop();
      await standby.stop();
    }
  });

  it("creates the stream when missing and leaves an existing one as it is", async () => {
    const nc = link.connection;
    if (!nc) throw new Error("not connected");
    const own = testEventStream();
    try {
      const created = await ensureEventStream(nc, own);
      expect(created.config.subjects).toEqual([`${own.subjectPrefix}.*.*`]);
      expect(created.config.duplicate_window).toBe(120_000 * 1_000_000);
      const again = await ensureEventStream(nc, own);
      expect(again.config.subjects).toEqual(created.config.subjects);
    } finally {
      await own.cleanup();
    }
  });
});

describe("event relay across a NATS outage", () => {
  let server: OwnNatsServer;
  let db: Kysely<unknown>;
  let link: NatsLink;
  let stream: ReturnType<typeof testEventStream>;

  beforeAll(async () => {
    server = await startNatsServer();
    stream = testEventStream(server.url);
    db = new Kysely({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: databaseUrl(), max: 2 }) }),
    });
    link = new NatsLink({ servers: server.url, name: "relay-outage-test" });
    await link.whenConnected();
  });
  afterAll(async () => {
    await link.close();
    await server.close();
    await db.destroy();
  });

  it("keeps its checkpoint while NATS is down and publishes every missed event once it is back", async () => {
    const org = uniqueId("org");
    const append = async (name: string) =>
      db.transaction().execute(async (trx) => {
        await appendToStream(trx, keyStreamId(org, "user-1", name), 0, [keyCreated(org, name)], {
          actorUserId: "user-1",
          organizationId: org,
          authMethod: "jwt",
          requestId: null,
        });
        await notifyAppended(trx);
      });
    const inStream = async () =>
      (await readStreamEvents(server.url, stream.streamName, organizationSubjectFilter(stream.subjectPrefix, org))).map(
        (m) => m.event?.eventId,
      );
    const inLog = async () =>
      (
        await sql<{ event_id: string }>`
          SELECT event_id FROM events WHERE data->>'organizationId' = ${org}
           ORDER BY transaction_id, global_position`.execute(db)
      ).rows.map((r) => r.event_id);

    const relay = new EventRelay({
      databaseUrl: databaseUrl(),
      link,
      ...stream,
      checkpointName: await checkpointAtHead(db),
      pollIntervalMs: 50,
      retryDelayMs: 50,
      publishTimeoutMs: 1_000,
    });
    relay.start();
    try {
      await append("before");
      await until(async () => (await inStream()).length === 1, "the first event");

      await server.stop();
      await until(() => !link.connected, "the link to notice the outage");
      for (const name of ["during-1", "during-2", "during-3"]) await append(name);
      const [firstMissed] = (
        await sql<{ transaction_id: string; global_position: string }>`
          SELECT transaction_id::text, global_position::text FROM events
           WHERE data->>'organizationId' = ${org} AND data->>'name' = 'during-1'`.execute(db)
      ).rows;
      if (!firstMissed) throw new Error("outage event not in the log");
      // Nothing of the outage was acknowledged, so the checkpoint stays before its first event.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const checkpoint = relay.checkpoint;
      expect(checkpoint).toBeDefined();
      expect(
        isBefore(checkpoint as LogCheckpoint, {
          transactionId: firstMissed.transaction_id,
          globalPosition: firstMissed.global_position,
        }),
      ).toBe(true);

      await server.start();
      await until(async () => (await inStream()).length >= 4, "the missed events", 30_000);
      const published = await inStream();
      expect(published).toEqual(await inLog());
      expect(new Set(published).size).toBe(4);
    } finally {
      await relay.stop();
    }
  });
});
