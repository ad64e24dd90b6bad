import { hash } from "node:crypto";
import { isWellFormedKey } from "@keyledger/domain";
import {
  type BusLogger,
  DEFAULT_SUBJECT_PREFIX,
  decodeEventMessage,
  eventSubjectFilter,
  KeyUseReporter,
  NatsLink,
  relayHeartbeatSubject,
  silentLogger,
} from "@keyledger/nats-bus";
import type { Subscription } from "@nats-io/transport-node";
import { apiLookup } from "./api-lookup";
import type { InvalidatingEvent, KeyLookup, LookupResult, VerifiedKey, VerifyResult } from "./types";

export type VerifierCacheOptions = {
  /** Most keys kept (default 100,000); the oldest entry is dropped first. */
  maxEntries?: number;
  /** How long a valid key is trusted without asking again (default 60 s; never past the key's `expiresAt`). */
  ttlMs?: number;
  /** How long a negative answer (unknown, expired, revoked) is kept (default 2 s, at most `ttlMs`). */
  negativeTtlMs?: number;
  /**
   * How long the cache is trusted after the relay's last heartbeat (default 2 s). The relay beats after publishing
   * the log up to a read of its end; when beats stop (the API cut off from NATS, a hung server, a relay far
   * behind), events may be missing here, so the cache is flushed and bypassed until they are back.
   */
  relayHeartbeatTimeoutMs?: number;
};

export type VerifierOptions<K extends VerifiedKey = VerifiedKey> = {
  /** Base URL of the API, used for cache misses unless `lookup` is given. */
  apiUrl?: string;
  /** The authoritative lookup on a miss (the API passes a database lookup). */
  lookup?: KeyLookup<K>;
  /** NATS for invalidation events. Without it (or `natsLink`) nothing is cached: every verify asks `lookup`. */
  natsUrl?: string;
  /**
   * A connection to share instead of `natsUrl`; the verifier subscribes on it and never closes it. The API shares
   * its publisher's, created with `noEcho`: the events the API publishes are not delivered back to it (one process
   * fewer for NATS to wake on each revocation), so it gives them to `applyEvent` itself.
   */
  natsLink?: NatsLink;
  subjectPrefix?: string;
  cache?: VerifierCacheOptions;
  lookupTimeoutMs?: number;
  /** Publish verified uses over NATS in batches so the API records `KeyUsed` (gateways turn this on). */
  keyUseReports?: { intervalMs?: number };
  /**
   * For caches of values that change on use (the API caches rows with `lastUsedAt`): the key's id, so a `KeyUsed`
   * event drops it. Gateways leave it out (a use changes nothing they cache).
   */
  keyIdOf?: (key: K) => string;
  /**
   * Called with every event the subscription delivers, after the verifier applied it (the API invalidates its
   * membership cache with it).
   */
  onEvent?: (event: InvalidatingEvent) => void;
  /** Client name on the NATS server. */
  name?: string;
  log?: BusLogger;
};

export type VerifierStats = {
  hits: number;
  misses: number;
  lookups: number;
  invalidations: number;
  flushes: number;
};

export type VerifyOptions = {
  /** Ask the lookup even when subscribed (the API does so for gateways' misses). */
  bypassCache?: boolean;
  /** The client's address, passed to the lookup on a miss (gateways forward it as `X-Forwarded-For`). */
  clientIp?: string;
};

export interface Verifier<K extends VerifiedKey = VerifiedKey> {
  /**
   * Verifies an API key. A cache hit is a SHA-256 and a map lookup. `bypassCache` asks the lookup even when
   * subscribed (the API does so for gateways' misses). Rejects only when the lookup cannot be done.
   */
  verify(bearer: string, options?: VerifyOptions): Promise<VerifyResult<K>>;
  /**
   * The cached answer, synchronously, when the cache holds a live one (counted and reported as a hit of
   * `verify`); `undefined` otherwise: call `verify`. For callers that can skip a promise on the hot path.
   */
  peek(bearer: string): VerifyResult<K> | undefined;
  /** True while the invalidation subscription is live (a gateway is ready then: without the cache it asks the API). */
  readonly subscribed: boolean;
  /**
   * True while the cache is used: subscribed, and the relay's last heartbeat is at most `relayHeartbeatTimeoutMs`
   * old (the relay has published every event committed before then).
   */
  readonly cacheOn: boolean;
  /** Whether invalidations come over NATS at all ("none": no `natsUrl`, nothing is ever cached). */
  readonly invalidation: "nats" | "none";
  /** Resolves true once the cache is on (false if closed first, or at once when there is no NATS). */
  whenSubscribed(): Promise<boolean>;
  /** Applies an event directly (the API does so right after its own commits). */
  applyEvent(event: InvalidatingEvent): void;
  /** A relay heartbeat that did not come over this verifier's subscription (the API's own relay, `noEcho`). */
  applyRelayHeartbeat(): void;
  readonly stats: VerifierStats;
  readonly cacheSize: number;
  close(): Promise<void>;
}

type CacheEntry<K extends VerifiedKey> = {
  result: VerifyResult<K>;
  promise: Promise<VerifyResult<K>>;
  expiresAtMs: number;
  /** `organizationId \0 userId` of a valid key, to drop a member's keys. */
  owner: string | undefined;
  /** The key's id, when `keyIdOf` is given, to drop it on `KeyUsed`. */
  keyId: string | undefined;
  /** When this entry's use was last handed to the key-use reporter. */
  reportedAtMs: number;
};

type Flight<K extends VerifiedKey> = { promise: Promise<VerifyResult<K>>; stale: boolean; epoch: number };

const MALFORMED: VerifyResult<never> = Object.freeze({ valid: false, code: "MALFORMED" });
const MALFORMED_PROMISE: Promise<VerifyResult<never>> = Promise.resolve(MALFORMED);

function ownerOf(organizationId: string, userId: string): string {
  return `${organizationId}\u0000${userId}`;
}

function sha256Hex(value: string): string {
  return hash("sha256", value);
}

const KEY_HASH_FIELD = /keyhash$/i;
const RECENT_EVENT_IDS = 10_000;

function addToIndex(index: Map<string, Set<string>>, id: string, keyHash: string): void {
  let hashes = index.get(id);
  if (hashes === undefined) {
    hashes = new Set();
    index.set(id, hashes);
  }
  hashes.add(keyHash);
}

function removeFromIndex(index: Map<string, Set<string>>, id: string, keyHash: string): void {
  const hashes = index.get(id);
  hashes?.delete(keyHash);
  if (hashes?.size === 0) index.delete(id);
}

class KeyVerifier<K extends VerifiedKey> implements Verifier<K> {
  private readonly cache = new Map<string, CacheEntry<K>>();
  private readonly byOwner = new Map<string, Set<string>>();
  private readonly byKeyId = new Map<string, Set<string>>();
  /** Ids of events applied lately: the fast path and the relay both publish each event; apply it once. */
  private readonly recentEventIds = new Set<string>();
  private readonly keyIdOf: ((key: K) => string) | undefined;
  private readonly onEvent: ((event: InvalidatingEvent) => void) | undefined;
  private readonly inFlight = new Map<string, Flight<K>>();
  private readonly lookup: KeyLookup<K>;
  private readonly maxEntries: number;
  private readonly ttlMs: number;
  private readonly negativeTtlMs: number;
  private readonly heartbeatTimeoutMs: number;
  private lastHeartbeatMs = Number.NEGATIVE_INFINITY;
  /** Whether the cache is on: subscribed, and a heartbeat came within the timeout (as last checked). */
  private trusting = false;
  private readonly link: NatsLink | undefined;
  private readonly ownsLink: boolean;
  private offLinkChange: (() => void) | undefined;
  private readonly reporter: KeyUseReporter | undefined;
  private readonly reportIntervalMs: number;
  private readonly log: BusLogger;
  private subscription: Subscription | undefined;
  private heartbeats: Subscription | undefined;
  private isSubscribed = false;
  private closed = false;
  /** Changes whenever the cache becomes (un)trustworthy; a lookup begun in another epoch is not cached. */
  private epoch = 0;
  private readonly subscribedWaiters = new Set<(value: boolean) => void>();
  readonly stats: VerifierStats = { hits: 0, misses: 0, lookups: 0, invalidations: 0, flushes: 0 };

  constructor(options: VerifierOptions<K>) {
    this.log = options.log ?? silentLogger;
    if (options.lookup) this.lookup = options.lookup;
    else if (options.apiUrl)
      this.lookup = apiLookup(options.apiUrl, { timeoutMs: options.lookupTimeoutMs }) as KeyLookup<K>;
    else throw new TypeError("createVerifier needs apiUrl or lookup");
    this.maxEntries = options.cache?.maxEntries ?? 100_000;
    this.ttlMs = options.cache?.ttlMs ?? 60_000;
    this.negativeTtlMs = Math.min(options.cache?.negativeTtlMs ?? 2_000, this.ttlMs);
    this.heartbeatTimeoutMs = options.cache?.relayHeartbeatTimeoutMs ?? 2_000;
    this.reportIntervalMs = options.keyUseReports?.intervalMs ?? 1_000;
    this.keyIdOf = options.keyIdOf;
    this.onEvent = options.onEvent;
    this.ownsLink = options.natsLink === undefined;
    this.link =
      options.natsLink ??
      (options.natsUrl
        ? new NatsLink({ servers: options.natsUrl, name: options.name ?? "keyledger-verifier", log: this.log })
        : undefined);
    if (this.link) {
      const prefix = options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX;
      this.offLinkChange = this.link.onChange((state) => {
        if (state === "connected") void this.subscribe(prefix);
        else this.unsubscribed(state);
      });
      if (this.link.connected) void this.subscribe(prefix);
      if (options.keyUseReports) {
        this.reporter = new KeyUseReporter(this.link, { subjectPrefix: prefix, intervalMs: this.reportIntervalMs });
      }
    }
  }

  get subscribed(): boolean {
    return this.isSubscribed;
  }

  get cacheOn(): boolean {
    return this.trusted(Date.now());
  }

  get invalidation(): "nats" | "none" {
    return this.link === undefined ? "none" : "nats";
  }

  get cacheSize(): number {
    return this.cache.size;
  }

  whenSubscribed(): Promise<boolean> {
    if (this.trusted(Date.now())) return Promise.resolve(true);
    if (!this.link || this.closed) return Promise.resolve(false);
    return new Promise((resolve) => this.subscribedWaiters.add(resolve));
  }

  verify(bearer: string, options?: VerifyOptions): Promise<VerifyResult<K>> {
    if (typeof bearer !== "string" || bearer.length === 0) return MALFORMED_PROMISE;
    const now = Date.now();
    if (!this.trusted(now)) {
      // Nothing cached can be trusted: ask, sharing a lookup with concurrent misses of the same key (its answer is
      // not cached).
      return this.miss(bearer, sha256Hex(bearer), options);
    }
    if (options?.bypassCache) {
      if (!isWellFormedKey(bearer)) return MALFORMED_PROMISE;
      this.stats.misses += 1;
      const keyHash = sha256Hex(bearer);
      return this.callLookup(bearer, keyHash, options).then((result) => {
        if (result.valid && this.reporter) this.reporter.record(keyHash);
        return result;
      });
    }
    const keyHash = sha256Hex(bearer);
    const entry = this.cache.get(keyHash);
    if (entry !== undefined) {
      if (entry.expiresAtMs > now) return this.hit(keyHash, entry, now).promise;
      // Past its time the source of truth says why: the key expired, or (a rotated-out value, whose `expiresAt` is
      // the end of its grace period) it is revoked.
      this.remove(keyHash, entry);
    }
    return this.miss(bearer, keyHash, options);
  }

  peek(bearer: string): VerifyResult<K> | undefined {
    if (typeof bearer !== "string" || bearer.length === 0 || !this.trusting) return undefined;
    const keyHash = sha256Hex(bearer);
    const entry = this.cache.get(keyHash);
    if (entry === undefined) return undefined;
    const now = Date.now();
    if (!this.trusted(now)) return undefined;
    return entry.expiresAtMs > now ? this.hit(keyHash, entry, now).result : undefined;
  }

  /** A live cache entry answers: counted, and its use reported at most once per report interval. */
  private hit(keyHash: string, entry: CacheEntry<K>, now: number): CacheEntry<K> {
    this.stats.hits += 1;
    if (this.reporter !== undefined && entry.result.valid && now - entry.reportedAtMs >= this.reportIntervalMs) {
      entry.reportedAtMs = now;
      this.reporter.record(keyHash);
    }
    return entry;
  }

  private callLookup(bearer: string, keyHash: string, options: VerifyOptions | undefined): Promise<VerifyResult<K>> {
    this.stats.lookups += 1;
    const context = options?.clientIp === undefined ? {} : { clientIp: options.clientIp };
    return this.lookup(bearer, keyHash, context).then((result) => {
      if (result.valid && result.key.expiresAt !== null && Date.parse(result.key.expiresAt) <= Date.now()) {
        return { valid: false, code: "EXPIRED" } as LookupResult<K>;
      }
      return result;
    });
  }

  private miss(bearer: string, keyHash: string, options: VerifyOptions | undefined): Promise<VerifyResult<K>> {
    const pending = this.inFlight.get(keyHash);
    if (pending !== undefined) return pending.promise;
    if (!isWellFormedKey(bearer)) return MALFORMED_PROMISE;
    this.stats.misses += 1;
    const flight: Flight<K> = { promise: undefined as never, stale: false, epoch: this.epoch };
    flight.promise = this.callLookup(bearer, keyHash, options).then(
      (result) => {
        if (this.inFlight.get(keyHash) === flight) this.inFlight.delete(keyHash);
        if (!flight.stale && flight.epoch === this.epoch && this.trusted(Date.now())) {
          const entry = this.store(keyHash, result);
          if (result.valid && this.reporter) {
            entry.reportedAtMs = Date.now();
            this.reporter.record(keyHash);
          }
        } else if (result.valid && this.reporter) {
          this.reporter.record(keyHash);
        }
        return result;
      },
      (error: unknown) => {
        if (this.inFlight.get(keyHash) === flight) this.inFlight.delete(keyHash);
        throw error;
      },
    );
    this.inFlight.set(keyHash, flight);
    return flight.promise;
  }

  private store(keyHash: string, result: VerifyResult<K>): CacheEntry<K> {
    const now = Date.now();
    let expiresAtMs = now + (result.valid ? this.ttlMs : this.negativeTtlMs);
    if (result.valid && result.key.expiresAt !== null) {
      expiresAtMs = Math.min(expiresAtMs, Date.parse(result.key.expiresAt));
    }
    const frozen = Object.freeze(result) as VerifyResult<K>;
    const entry: CacheEntry<K> = {
      result: frozen,
      promise: Promise.resolve(frozen),
      expiresAtMs,
      owner: result.valid ? ownerOf(result.key.organizationId, result.key.userId) : undefined,
      keyId: result.valid && this.keyIdOf !== undefined ? this.keyIdOf(result.key) : undefined,
      reportedAtMs: 0,
    };
    if (expiresAtMs <= now) return entry;
    const previous = this.cache.get(keyHash);
    if (previous !== undefined) this.remove(keyHash, previous);
    while (this.cache.size >= this.maxEntries) {
      const oldest = this.cache.entries().next().value;
      if (oldest === undefined) break;
      this.remove(oldest[0], oldest[1]);
    }
    this.cache.set(keyHash, entry);
    if (entry.owner !== undefined) addToIndex(this.byOwner, entry.owner, keyHash);
    if (entry.keyId !== undefined) addToIndex(this.byKeyId, entry.keyId, keyHash);
    return entry;
  }

  private remove(keyHash: string, entry: CacheEntry<K>): void {
    this.cache.delete(keyHash);
    if (entry.owner !== undefined) removeFromIndex(this.byOwner, entry.owner, keyHash);
    if (entry.keyId !== undefined) removeFromIndex(this.byKeyId, entry.keyId, keyHash);
  }

  private removeAll(hashes: Set<string> | undefined): void {
    if (hashes === undefined) return;
    for (const keyHash of [...hashes]) {
      const entry = this.cache.get(keyHash);
      if (entry !== undefined) this.remove(keyHash, entry);
    }
  }

  /** A lookup of `keyHash` under way (returned) is neither shared further nor cached. */
  private abandonFlight(keyHash: string): Flight<K> | undefined {
    const flight = this.inFlight.get(keyHash);
    if (flight !== undefined) {
      flight.stale = true;
      this.inFlight.delete(keyHash);
    }
    return flight;
  }

  /** Forgets a key; a lookup for it that is under way is neither shared further nor cached. */
  private invalidate(keyHash: string, tombstone?: "REVOKED"): void {
    this.stats.invalidations += 1;
    const flight = this.abandonFlight(keyHash);
    const entry = this.cache.get(keyHash);
    if (entry !== undefined) this.remove(keyHash, entry);
    // A revoked value never becomes valid again: remember it (for a TTL) if it was in use here.
    if (tombstone !== undefined && (entry !== undefined || flight !== undefined) && this.trusting) {
      const revoked = this.store(keyHash, { valid: false, code: tombstone });
      revoked.expiresAtMs = Date.now() + this.ttlMs;
    }
  }

  /**
   * A new key's value: a cached refusal of it ("not found") is dropped, and so is a lookup under way (it may have
   * read before the commit). A cached valid answer stays: a creation never makes a value invalid, and that answer
   * was read after the commit (a copy of the event arriving late, e.g. the relay's, must not cost a lookup).
   */
  private forgetRefusal(keyHash: string): void {
    this.stats.invalidations += 1;
    this.abandonFlight(keyHash);
    const entry = this.cache.get(keyHash);
    if (entry !== undefined && !entry.result.valid) this.remove(keyHash, entry);
  }

  private invalidateOwner(organizationId: string, userId: string): void {
    this.stats.invalidations += 1;
    this.removeAll(this.byOwner.get(ownerOf(organizationId, userId)));
    // Lookups under way may belong to this member: none of them is cached.
    this.abandonFlights();
  }

  private abandonFlights(): void {
    for (const flight of this.inFlight.values()) flight.stale = true;
    this.inFlight.clear();
  }

  applyEvent(event: InvalidatingEvent): void {
    if (event.eventId !== undefined) {
      if (this.recentEventIds.has(event.eventId)) return;
      if (this.recentEventIds.size >= RECENT_EVENT_IDS) {
        const oldest = this.recentEventIds.values().next().value;
        if (oldest !== undefined) this.recentEventIds.delete(oldest);
      }
      this.recentEventIds.add(event.eventId);
    }
    const data = event.data;
    if (event.type === "KeyUsed") {
      if (this.keyIdOf !== undefined && typeof data.keyId === "string") this.removeAll(this.byKeyId.get(data.keyId));
      return;
    }
    switch (event.type) {
      case "KeyRevoked":
        // The current value and, during a rotation grace, the previous one (`previousKeyHash`).
        for (const [field, value] of Object.entries(data)) {
          if (KEY_HASH_FIELD.test(field) && typeof value === "string") this.invalidate(value, "REVOKED");
        }
        return;
      case "KeyCreated":
        if (typeof data.keyHash === "string") this.forgetRefusal(data.keyHash);
        return;
      case "MemberAccessChanged":
      case "MemberRemoved":
        if (typeof data.organizationId === "string" && typeof data.userId === "string") {
          this.invalidateOwner(data.organizationId, data.userId);
        }
        return;
      default:
        // Any other event (e.g. `KeyRotated`) drops every key hash it names; the next verify asks again.
        for (const [field, value] of Object.entries(data)) {
          if (KEY_HASH_FIELD.test(field) && typeof value === "string") this.invalidate(value);
        }
    }
  }

  private async subscribe(prefix: string): Promise<void> {
    const nc = this.link?.connection;
    if (!nc || this.closed) return;
    if (this.subscription === undefined) {
      // A core subscription: every verifier sees every event, with no stream hop. The client resubscribes on
      // reconnect; the flush below confirms the server has the subscription before the cache is trusted.
      this.subscription = nc.subscribe(eventSubjectFilter(prefix), {
        callback: (error, msg) => {
          if (error) return;
          const event = decodeEventMessage(msg.data);
          if (event === undefined) return;
          this.applyEvent(event);
          this.onEvent?.(event);
        },
      });
    }
    this.heartbeats ??= nc.subscribe(relayHeartbeatSubject(prefix), {
      callback: (error) => {
        if (!error) this.applyRelayHeartbeat();
      },
    });
    try {
      await nc.flush();
    } catch {
      return;
    }
    if (!this.link?.connected || this.closed || this.isSubscribed) return;
    this.isSubscribed = true;
    this.log.info({}, "verifier subscribed: cache on with the relay's heartbeats");
    this.trusted(Date.now());
  }

  applyRelayHeartbeat(): void {
    this.lastHeartbeatMs = Date.now();
    if (!this.trusting) this.trusted(this.lastHeartbeatMs);
  }

  /**
   * Whether the cache may answer at `now`: subscribed, and the relay's last heartbeat within the timeout. Turning
   * on starts a new epoch (lookups begun before are not cached); turning off (heartbeats stopped) flushes the cache.
   */
  private trusted(now: number): boolean {
    const trusted = this.isSubscribed && now - this.lastHeartbeatMs <= this.heartbeatTimeoutMs;
    if (trusted === this.trusting) return trusted;
    this.trusting = trusted;
    this.epoch += 1;
    if (trusted) {
      this.log.info({}, "verifier cache on: subscribed, and the relay's heartbeats arrive");
      for (const resolve of this.subscribedWaiters) resolve(true);
      this.subscribedWaiters.clear();
    } else if (this.isSubscribed) {
      this.flush();
      this.log.warn(
        { silentForMs: Number.isFinite(this.lastHeartbeatMs) ? now - this.lastHeartbeatMs : null },
        "verifier heard no relay heartbeat: cache flushed and bypassed until they are back",
      );
    }
    return trusted;
  }

  private flush(): void {
    this.cache.clear();
    this.byOwner.clear();
    this.byKeyId.clear();
    this.abandonFlights();
    this.stats.flushes += 1;
  }

  /** NATS is gone: events may be missed from now on, so nothing cached can be trusted. */
  private unsubscribed(state: string): void {
    this.epoch += 1;
    const wasSubscribed = this.isSubscribed;
    this.isSubscribed = false;
    this.trusting = false;
    this.flush();
    if (wasSubscribed) this.log.warn({ state }, "verifier lost NATS: cache flushed and bypassed until resubscribed");
    if (state === "closed") {
      for (const resolve of this.subscribedWaiters) resolve(false);
      this.subscribedWaiters.clear();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reporter?.close();
    this.offLinkChange?.();
    this.unsubscribed("closed");
    if (this.ownsLink) await this.link?.close();
    else if (this.link?.connected) {
      try {
        this.subscription?.unsubscribe();
        this.heartbeats?.unsubscribe();
      } catch {
        // The shared connection is closing: the subscription goes with it.
      }
    }
  }
}

/**
 * Creates a verifier: a cache of key answers, invalidated by the event subjects on NATS, in front of an
 * authoritative lookup (the API over HTTP by default).
 */
export function createVerifier<K extends VerifiedKey = VerifiedKey>(options: VerifierOptions<K>): Verifier<K> {
  return new KeyVerifier(options);
}
