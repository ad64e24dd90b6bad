import type { Kysely } from "kysely";
import { findMember, type MemberRow } from "./read-model-queries";

/** What tells the cache whether it may be used: the API-key verifier's NATS subscription and relay heartbeats. */
export type InvalidationFeed = {
  /** True while every event reaches this process (only then is anything cached or answered from the cache). */
  readonly cacheOn: boolean;
  /** Counts the times the feed was lost: an answer read across a loss is not kept (an event may have been missed). */
  readonly stats: { readonly flushes: number };
};

const DEFAULT_TTL_MS = 30_000;
const DEFAULT_MAX_ENTRIES = 10_000;

type Entry = { member: MemberRow | undefined; until: number };

/**
 * Organization memberships as JWT authentication reads them, cached while the event feed is live: every
 * `MemberAccessChanged` / `MemberRemoved` (this replica's own commits at once, other replicas' over NATS) drops the
 * member's entry, and losing NATS empties the cache and bypasses it until the feed is back, as the API-key cache
 * does. A lookup that an invalidation (or a feed loss) overtook is answered but not kept. Entries also end after
 * `ttlMs`. Commands never decide on these entries alone: a create re-checks the grantor's row in its own statement.
 */
export class MemberCache {
  private readonly entries = new Map<string, Entry>();
  /** Bumped by every invalidation: a lookup started before one is not stored. */
  private generation = 0;
  private flushesSeen: number;

  constructor(
    private readonly db: Kysely<unknown>,
    private readonly feed: InvalidationFeed,
    private readonly ttlMs = DEFAULT_TTL_MS,
    private readonly maxEntries = DEFAULT_MAX_ENTRIES,
  ) {
    this.flushesSeen = feed.stats.flushes;
  }

  private live(): boolean {
    if (this.feed.stats.flushes !== this.flushesSeen) {
      this.flushesSeen = this.feed.stats.flushes;
      this.entries.clear();
      this.generation += 1;
    }
    return this.feed.cacheOn;
  }

  async find(organizationId: string, userId: string): Promise<MemberRow | undefined> {
    if (!this.live()) return findMember(this.db, organizationId, userId);
    const key = keyOf(organizationId, userId);
    const now = Date.now();
    const cached = this.entries.get(key);
    if (cached !== undefined && cached.until > now) return cached.member;
    const generation = this.generation;
    const member = await findMember(this.db, organizationId, userId);
    if (this.live() && generation === this.generation) {
      if (cached !== undefined) this.entries.delete(key);
      else if (this.entries.size >= this.maxEntries) {
        const oldest = this.entries.keys().next().value;
        if (oldest !== undefined) this.entries.delete(oldest);
      }
      this.entries.set(key, { member, until: now + this.ttlMs });
    }
    return member;
  }

  /** Applies an event: a membership change drops that member's entry. Other events change nothing here. */
  applyEvent(event: { type: string; data: Record<string, unknown> }): void {
    if (event.type !== "MemberAccessChanged" && event.type !== "MemberRemoved") return;
    const { organizationId, userId } = event.data;
    this.generation += 1;
    if (typeof organizationId === "string" && typeof userId === "string") {
      this.entries.delete(keyOf(organizationId, userId));
    } else {
      this.entries.clear();
    }
  }

  get size(): number {
    return this.entries.size;
  }
}

function keyOf(organizationId: string, userId: string): string {
  return JSON.stringify([organizationId, userId]);
}
