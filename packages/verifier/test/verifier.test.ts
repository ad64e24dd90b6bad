import { randomBytes, randomUUID } from "node:crypto";
import { hashKeyValue, KEY_RANDOM_BYTES, keyValueFromRandomBytes } from "@keyledger/domain";
import { eventSubject, NatsLink, relayHeartbeatSubject } from "@keyledger/nats-bus";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type OwnNatsServer, SHARED_NATS_URL, startNatsServer } from "../../../test/support/nats";
import { createVerifier, type LookupResult, type Verifier } from "../src/index";

const newKey = () => keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The source of truth for these tests: a table of answers by key hash, counting how often it is asked. */
function lookupTable() {
  const answers = new Map<string, LookupResult>();
  const table = {
    calls: 0,
    gate: undefined as Promise<void> | undefined,
    set(value: string, answer: LookupResult) {
      answers.set(hashKeyValue(value), answer);
    },
    lookup: async (_bearer: string, keyHash: string): Promise<LookupResult> => {
      table.calls += 1;
      if (table.gate) await table.gate;
      return answers.get(keyHash) ?? { valid: false, code: "NOT_FOUND" };
    },
  };
  return table;
}

/**
 * Stands in for the API's relay: its heartbeats on `prefix` every 100 ms (verifiers trust their caches only while
 * they arrive) until stopped.
 */
async function relayHeartbeats(servers: string, prefix: string) {
  const connection = await connect({ servers, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  const beat = () => {
    try {
      connection.publish(relayHeartbeatSubject(prefix), JSON.stringify({ relay: "test", position: "0" }));
    } catch {
      // closed
    }
  };
  beat();
  let timer: NodeJS.Timeout | undefined = setInterval(beat, 100);
  return {
    pause() {
      clearInterval(timer);
      timer = undefined;
    },
    resume() {
      beat();
      timer ??= setInterval(beat, 100);
    },
    async close() {
      clearInterval(timer);
      await connection.close();
    },
  };
}

function activeKey(organizationId: string, userId: string, name = "k", expiresAt: string | null = null): LookupResult {
  return { valid: true, key: { name, userId, organizationId, permissions: ["write:sandboxes"], expiresAt } };
}

describe("verifier with NATS", () => {
  const prefix = `kltest${randomBytes(5).toString("hex")}`;
  let nc: NatsConnection;
  let heartbeats: Awaited<ReturnType<typeof relayHeartbeats>>;
  const verifiers: Verifier[] = [];

  function publish(organizationId: string, type: string, data: Record<string, unknown>) {
    nc.publish(
      eventSubject(prefix, organizationId, type),
      JSON.stringify({ eventId: randomUUID(), type, data: { organizationId, ...data } }),
    );
  }

  /** A verifier on its own connection to the shared server, or on `connection` when given. */
  async function subscribedVerifier(
    table: ReturnType<typeof lookupTable>,
    connection: { natsUrl: string } | { natsLink: NatsLink } = { natsUrl: SHARED_NATS_URL },
  ) {
    const verifier = createVerifier({
      lookup: table.lookup,
      ...connection,
      subjectPrefix: prefix,
      cache: { maxEntries: 1000, ttlMs: 600_000, negativeTtlMs: 600_000 },
    });
    verifiers.push(verifier);
    expect(await verifier.whenSubscribed()).toBe(true);
    return verifier;
  }

  beforeAll(async () => {
    nc = await connect({ servers: SHARED_NATS_URL });
    heartbeats = await relayHeartbeats(SHARED_NATS_URL, prefix);
  });
  afterAll(async () => {
    await Promise.all(verifiers.map((v) => v.close()));
    await heartbeats.close();
    await nc.close();
  });

  it("rejects a malformed or mistyped key without a lookup", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    const typo = `${key.slice(0, 10)}${key[10] === "a" ? "b" : "a"}${key.slice(11)}`;
    for (const bearer of ["", "nope", "dtn_123", typo, `${key} `, key.toUpperCase(), "a.b.c"]) {
      expect(await verifier.verify(bearer)).toEqual({ valid: false, code: "MALFORMED" });
    }
    expect(table.calls).toBe(0);
  });

  it("caches answers and shares one lookup between concurrent misses", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    table.set(key, activeKey("org-a", "user-a"));
    const results = await Promise.all(Array.from({ length: 20 }, () => verifier.verify(key)));
    expect(results.every((r) => r.valid)).toBe(true);
    expect(table.calls).toBe(1);
    expect(await verifier.verify(key)).toMatchObject({ valid: true, key: { organizationId: "org-a", name: "k" } });
    expect(table.calls).toBe(1);
    expect(verifier.stats.hits).toBeGreaterThan(0);
  });

  it("peek answers synchronously from the cache only: nothing on a miss, the cached answer after a verify", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    table.set(key, activeKey("org-p", "user-p"));
    expect(verifier.peek(key)).toBeUndefined(); // a miss: no lookup, nothing cached
    expect(verifier.peek("")).toBeUndefined();
    expect(table.calls).toBe(0);
    expect((await verifier.verify(key)).valid).toBe(true);
    const hits = verifier.stats.hits;
    expect(verifier.peek(key)).toMatchObject({ valid: true, key: { organizationId: "org-p", userId: "user-p" } });
    expect(verifier.stats.hits).toBe(hits + 1);
    expect(table.calls).toBe(1);
    publish("org-p", "KeyRevoked", { userId: "user-p", name: "k", keyHash: hashKeyValue(key), reason: "deleted" });
    await until(() => verifier.peek(key)?.valid === false, "the revocation to arrive");
    expect(verifier.peek(key)).toEqual({ valid: false, code: "REVOKED" });
  });

  it("drops a key on KeyRevoked, with its previous value in a rotation grace: the next verify says REVOKED", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const [key, previous] = [newKey(), newKey()];
    table.set(key, activeKey("org-r", "user-r"));
    table.set(previous, activeKey("org-r", "user-r"));
    expect((await verifier.verify(key)).valid).toBe(true);
    expect((await verifier.verify(previous)).valid).toBe(true);
    publish("org-r", "KeyRevoked", {
      userId: "user-r",
      name: "k",
      keyHash: hashKeyValue(key),
      previousKeyHash: hashKeyValue(previous),
      reason: "deleted",
    });
    // The lookup still answers "valid": only the event can turn the answer.
    await until(async () => !(await verifier.verify(key)).valid, "the revocation to arrive");
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
    expect(await verifier.verify(previous)).toEqual({ valid: false, code: "REVOKED" });
    expect(table.calls).toBe(2);
  });

  it("does not cache a lookup that was under way when the key was revoked", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    table.set(key, activeKey("org-f", "user-f"));
    let open = () => {};
    table.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const pending = verifier.verify(key);
    const before = verifier.stats.invalidations;
    publish("org-f", "KeyRevoked", { userId: "user-f", name: "k", keyHash: hashKeyValue(key), reason: "deleted" });
    await until(() => verifier.stats.invalidations > before, "the revocation to arrive");
    table.gate = undefined;
    open();
    // The answer read before the revocation is returned to the request that asked, but never cached.
    expect((await pending).valid).toBe(true);
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
  });

  it("drops a member's keys in that organization on membership events, and only theirs", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const [a1, a2, b1, other] = [newKey(), newKey(), newKey(), newKey()];
    table.set(a1, activeKey("org-m", "user-a", "a1"));
    table.set(a2, activeKey("org-m", "user-a", "a2"));
    table.set(b1, activeKey("org-m", "user-b", "b1"));
    table.set(other, activeKey("org-other", "user-a", "x"));
    for (const key of [a1, a2, b1, other]) expect((await verifier.verify(key)).valid).toBe(true);
    expect(table.calls).toBe(4);
    const before = verifier.stats.invalidations;
    publish("org-m", "MemberRemoved", { userId: "user-a", removedAt: new Date().toISOString() });
    await until(() => verifier.stats.invalidations > before, "the membership event to arrive");
    for (const key of [b1, other]) await verifier.verify(key);
    expect(table.calls).toBe(4);
    await verifier.verify(a1);
    await verifier.verify(a2);
    expect(table.calls).toBe(6);

    publish("org-m", "MemberAccessChanged", { userId: "user-b", role: "member", permissions: [] });
    await until(() => verifier.stats.invalidations > before + 1, "the access change to arrive");
    await verifier.verify(b1);
    expect(table.calls).toBe(7);
  });

  it("keeps a negative answer briefly and drops it when the key is created", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "NOT_FOUND" });
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "NOT_FOUND" });
    expect(table.calls).toBe(1);
    table.set(key, activeKey("org-n", "user-n"));
    publish("org-n", "KeyCreated", { userId: "user-n", name: "k", keyHash: hashKeyValue(key) });
    await until(async () => (await verifier.verify(key)).valid, "the creation to arrive");
    expect(table.calls).toBe(2);
  });

  it("keeps a cached valid key when its creation arrives (again) after it was looked up", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    table.set(key, activeKey("org-c", "user-c"));
    expect((await verifier.verify(key)).valid).toBe(true);
    const before = verifier.stats.invalidations;
    publish("org-c", "KeyCreated", { userId: "user-c", name: "k", keyHash: hashKeyValue(key) });
    await until(() => verifier.stats.invalidations > before, "the creation to arrive");
    expect((await verifier.verify(key)).valid).toBe(true);
    expect(table.calls).toBe(1);
  });

  it("drops every key hash named by other events (e.g. a rotation)", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const key = newKey();
    table.set(key, activeKey("org-x", "user-x"));
    await verifier.verify(key);
    publish("org-x", "KeyRotated", { userId: "user-x", name: "k", oldKeyHash: hashKeyValue(key) });
    table.set(key, { valid: false, code: "REVOKED" });
    await until(async () => !(await verifier.verify(key)).valid, "the rotation to arrive");
  });

  it("never keeps a key past its expiresAt; then the source of truth says why (expired, or a rotation's grace over)", async () => {
    const table = lookupTable();
    const verifier = await subscribedVerifier(table);
    const [key, rotatedOut] = [newKey(), newKey()];
    const expiresAt = new Date(Date.now() + 300).toISOString();
    table.set(key, activeKey("org-e", "user-e", "k", expiresAt));
    // A rotated-out value in its grace period: its `expiresAt` is the end of the grace, then it is revoked.
    table.set(rotatedOut, activeKey("org-e", "user-e", "r", expiresAt));
    expect((await verifier.verify(key)).valid).toBe(true);
    expect((await verifier.verify(rotatedOut)).valid).toBe(true);
    expect(verifier.peek(key)?.valid).toBe(true);
    await until(() => Date.now() > Date.parse(expiresAt), "the key to expire");
    expect(verifier.peek(key)).toBeUndefined();
    table.set(rotatedOut, { valid: false, code: "REVOKED" });
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "EXPIRED" });
    expect(await verifier.verify(rotatedOut)).toEqual({ valid: false, code: "REVOKED" });
    expect(table.calls).toBe(4);
    // The refusals are kept briefly, as any.
    expect(await verifier.verify(key)).toEqual({ valid: false, code: "EXPIRED" });
    expect(table.calls).toBe(4);
  });

  it("trusts its cache only while the relay's heartbeats arrive: flushed and bypassed when they stop, on again when back", async () => {
    const beatPrefix = `kltest${randomBytes(5).toString("hex")}`;
    const beats = await relayHeartbeats(SHARED_NATS_URL, beatPrefix);
    const table = lookupTable();
    const verifier = createVerifier({
      lookup: table.lookup,
      natsUrl: SHARED_NATS_URL,
      subjectPrefix: beatPrefix,
      cache: { maxEntries: 100, ttlMs: 600_000, relayHeartbeatTimeoutMs: 400 },
    });
    verifiers.push(verifier);
    try {
      expect(await verifier.whenSubscribed()).toBe(true);
      const key = newKey();
      table.set(key, activeKey("org-h", "user-h"));
      await verifier.verify(key);
      expect(verifier.peek(key)?.valid).toBe(true);
      expect(table.calls).toBe(1);

      beats.pause();
      await until(() => !verifier.cacheOn, "the heartbeats to be missed");
      expect(verifier.subscribed).toBe(true); // still subscribed: a gateway stays ready, and asks the API
      expect(verifier.cacheSize).toBe(0);
      expect(verifier.peek(key)).toBeUndefined();
      // Revoked while no heartbeat arrives (say, the API lost NATS): asked every time, never cached.
      table.set(key, { valid: false, code: "REVOKED" });
      expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
      table.set(key, activeKey("org-h", "user-h"));
      const concurrent = await Promise.all(Array.from({ length: 10 }, () => verifier.verify(key)));
      expect(concurrent.every((result) => result.valid)).toBe(true);
      expect(table.calls).toBe(3); // concurrent misses still share one lookup
      expect(verifier.cacheSize).toBe(0);

      beats.resume();
      expect(await verifier.whenSubscribed()).toBe(true);
      await verifier.verify(key);
      await verifier.verify(key);
      expect(table.calls).toBe(4);
    } finally {
      await beats.close();
    }
  });

  it("without NATS caches nothing: every verify asks the lookup", async () => {
    const table = lookupTable();
    const verifier = createVerifier({ lookup: table.lookup, cache: { maxEntries: 10, ttlMs: 600_000 } });
    verifiers.push(verifier);
    expect(await verifier.whenSubscribed()).toBe(false);
    const key = newKey();
    table.set(key, activeKey("org-0", "user-0"));
    await verifier.verify(key);
    await verifier.verify(key);
    expect(table.calls).toBe(2);
    expect(verifier.peek(key)).toBeUndefined();
  });

  it("on a shared no-echo link: events from others arrive, its own do not; closing leaves the link open", async () => {
    const link = new NatsLink({ servers: SHARED_NATS_URL, name: "verifier-test-shared", noEcho: true });
    try {
      // Created once the link is already connected: it subscribes at once.
      const shared = await link.whenConnected();
      if (!shared) throw new Error("not connected");
      const table = lookupTable();
      const verifier = await subscribedVerifier(table, { natsLink: link });
      const [own, others] = [newKey(), newKey()];
      table.set(own, activeKey("org-shared", "user-shared"));
      table.set(others, activeKey("org-shared", "user-shared"));
      expect((await verifier.verify(own)).valid).toBe(true);
      expect((await verifier.verify(others)).valid).toBe(true);
      const revoke = (value: string) =>
        JSON.stringify({
          eventId: randomUUID(),
          type: "KeyRevoked",
          data: { organizationId: "org-shared", userId: "user-shared", name: "k", keyHash: hashKeyValue(value) },
        });
      // Published on the shared link itself: not delivered back (its publisher applies it).
      shared.publish(eventSubject(prefix, "org-shared", "KeyRevoked"), revoke(own));
      publish("org-shared", "KeyRevoked", { userId: "user-shared", name: "k", keyHash: hashKeyValue(others) });
      await until(() => verifier.peek(others)?.valid === false, "the other connection's revocation");
      await shared.flush();
      expect(verifier.peek(own)?.valid).toBe(true);
      await verifier.close();
      expect(link.connected).toBe(true);
      // Still usable by its owner.
      await shared.flush();
    } finally {
      await link.close();
    }
  });

  it("evicts the oldest entry beyond maxEntries", async () => {
    const table = lookupTable();
    const verifier = createVerifier({
      lookup: table.lookup,
      natsUrl: SHARED_NATS_URL,
      subjectPrefix: prefix,
      cache: { maxEntries: 3, ttlMs: 600_000 },
    });
    verifiers.push(verifier);
    await verifier.whenSubscribed();
    const keys = [newKey(), newKey(), newKey(), newKey()];
    for (const key of keys) {
      table.set(key, activeKey("org-l", "user-l"));
      await verifier.verify(key);
    }
    expect(verifier.cacheSize).toBe(3);
    await verifier.verify(keys[3] as string);
    expect(table.calls).toBe(4);
    await verifier.verify(keys[0] as string);
    expect(table.calls).toBe(5);
  });
});

describe("verifier when NATS goes away", () => {
  let server: OwnNatsServer;
  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it("flushes and bypasses the cache until it is subscribed again", async () => {
    const beats = await relayHeartbeats(server.url, "kltestfault");
    const table = lookupTable();
    const verifier = createVerifier({
      lookup: table.lookup,
      natsUrl: server.url,
      subjectPrefix: "kltestfault",
      cache: { maxEntries: 100, ttlMs: 600_000 },
    });
    try {
      expect(await verifier.whenSubscribed()).toBe(true);
      const key = newKey();
      table.set(key, activeKey("org-d", "user-d"));
      await verifier.verify(key);
      await verifier.verify(key);
      expect(table.calls).toBe(1);

      await server.stop();
      await until(() => !verifier.subscribed, "the verifier to notice the outage");
      expect(verifier.cacheSize).toBe(0);
      // Revoked while NATS is down: the event is lost, but the verifier asks the source of truth every time.
      table.set(key, { valid: false, code: "REVOKED" });
      expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
      expect(await verifier.verify(key)).toEqual({ valid: false, code: "REVOKED" });
      expect(table.calls).toBe(3);

      await server.start();
      expect(await verifier.whenSubscribed()).toBe(true);
      await verifier.verify(key);
      await verifier.verify(key);
      expect(table.calls).toBe(4);
    } finally {
      await verifier.close();
      await beats.close();
    }
  });
});
