import { StreamVersionConflict } from "@keyledger/event-store";
import type { FastifyBaseLogger } from "fastify";
import type { CommandContext, KeyCommands } from "./commands/key-commands";
import { isDatabaseUnavailable, isRetryableConflict } from "./database-errors";
import type { ApiKeyRow } from "./read-model-queries";

/**
 * Longest a use waits before its batch is written. Short, so that each batch is small: the API handles a batch's
 * results, publishes and acknowledgements in one go, and the requests arriving meanwhile wait behind it. With
 * 1,000,000 keys and one cold miss after another, 15 ms against 50 ms took the misses' p99 from 5.2-5.3 to
 * 3.9-4.4 ms (medians of 4 alternating rounds, three sets) for about 10 % more CPU per use (BENCHMARKS.md).
 */
const DEFAULT_BATCH_WINDOW_MS = 15;
/** Most uses written together. */
const MAX_BATCH = 500;
/**
 * After a batch fails because Postgres cannot take it now (unreachable, a timeout, a conflict that outlived the
 * command's own retries), its uses are tried again this long later, doubling.
 */
const FIRST_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 10_000;
/** Most uses held while Postgres cannot take them; later uses beyond this are not recorded (and counted). */
const MAX_HELD_USES = 50_000;

/** A use, with the key's read-model row as the request read it (the use is decided on it). */
type PendingUse = { row: ApiKeyRow; context: CommandContext };

/**
 * Records successful API-key uses as `KeyUsed`, off the request path, at most once per key per throttle window (of
 * the uses' own times: a use reported by a gateway is recorded at when it happened, not when it arrived).
 * Uses are collected for up to `batchWindowMs` and written together (`recordKeyUsesAsRead`: one statement for the
 * batch, decided on the rows the requests read), so a stream of first uses (a gateway's cold cache, many keys)
 * costs the database one statement per batch rather than a transaction per key. The domain decides the throttle
 * (so replicas agree); this only avoids asking when the answer is known.
 *
 * A batch that fails because the database cannot take it now is not lost: its uses are held (up to `maxHeldUses`)
 * and tried again with a growing delay, each at the time it happened, so a Postgres outage delays `KeyUsed` rather
 * than dropping it (any other failure drops the batch, logged as an error, so that it cannot block the next ones). A use held across
 * a change of its key (revoked, used through another replica meanwhile) is decided again on the key's stream.
 */
export class KeyUsageRecorder {
  /** Keys waiting for the next batch, by key id: the first use in a window is the one the throttle keeps. */
  private queued = new Map<string, PendingUse>();
  /** Keys in the batch being written, with the time of the use being written. */
  private writing = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> = Promise.resolve();
  /** While batches fail: how long until the next try (0: the last batch was written). */
  private retryDelayMs = 0;
  /** Uses not recorded because `maxHeldUses` were already held, since the last warning. */
  private notHeld = 0;
  private closing = false;

  constructor(
    private readonly commands: KeyCommands,
    private readonly throttleMs: number,
    private readonly log: FastifyBaseLogger,
    private readonly options: { batchWindowMs?: number; maxHeldUses?: number; firstRetryDelayMs?: number } = {},
  ) {}

  /**
   * Records a use of `key` at `usedAt` (now by default; a reported use's own time, which the caller keeps within
   * the key's life and not in the future). A use within the throttle window of the key's last recorded use, or older
   * than it, records nothing: `lastUsedAt` never goes back. Of the uses of a key waiting to be written, the first in
   * a window is kept; a use a whole window later replaces it, so that an old reported use does not hide a new one.
   */
  record(key: ApiKeyRow, requestId: string | null, usedAt?: Date): void {
    const usedAtMs = usedAt?.getTime() ?? Date.now();
    if (key.last_used_at !== null && usedAtMs - key.last_used_at.getTime() < this.throttleMs) return;
    const queued = this.queued.get(key.key_id);
    if (queued !== undefined && usedAtMs - queued.context.now.getTime() < this.throttleMs) return;
    // A key being written is queued again only for a use a window later: the next batch waits for this one, and
    // its row guard sends the use to the key's stream, where this batch's `KeyUsed` is seen.
    const writing = this.writing.get(key.key_id);
    if (writing !== undefined && usedAtMs - writing < this.throttleMs) return;
    if (queued === undefined && this.queued.size >= (this.options.maxHeldUses ?? MAX_HELD_USES)) {
      this.notHeld += 1;
      return;
    }
    this.queued.set(key.key_id, {
      row: key,
      context: {
        now: new Date(usedAtMs),
        metadata: { actorUserId: key.user_id, organizationId: key.organization_id, authMethod: "api_key", requestId },
      },
    });
    if (this.queued.size >= MAX_BATCH && this.retryDelayMs === 0) void this.writeBatch();
    else this.schedule();
  }

  private schedule(): void {
    // Once shutting down, failed uses are not tried again (`flush` gave them their last try).
    if (this.queued.size === 0 || (this.closing && this.retryDelayMs > 0)) return;
    this.timer ??= setTimeout(
      () => void this.writeBatch(),
      this.retryDelayMs || (this.options.batchWindowMs ?? DEFAULT_BATCH_WINDOW_MS),
    );
  }

  /** Writes the oldest `MAX_BATCH` queued uses; resolves false when they are held to be tried again. */
  private writeBatch(): Promise<boolean> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.queued.size === 0) return Promise.resolve(true);
    const batch = new Map<string, PendingUse>();
    for (const [keyId, use] of this.queued) {
      if (batch.size >= MAX_BATCH) break;
      batch.set(keyId, use);
    }
    for (const [keyId, use] of batch) {
      this.queued.delete(keyId);
      this.writing.set(keyId, use.context.now.getTime());
    }
    // One batch at a time: the next waits for this one, so a key is never in two transactions at once.
    const written = this.inFlight.then(async () => {
      try {
        await this.commands.recordKeyUsesAsRead([...batch.values()], this.throttleMs);
        this.retryDelayMs = 0;
        return true;
      } catch (error) {
        // Anything but "not now" (a bug, a constraint) would fail again: those uses are dropped, as a batch must
        // not stop every later one.
        if (!isDatabaseUnavailable(error) && !isRetryableConflict(error) && !(error instanceof StreamVersionConflict)) {
          this.log.error({ err: error, keys: batch.size }, "could not record key uses; dropped");
          return true;
        }
        this.retryDelayMs = Math.min(
          MAX_RETRY_DELAY_MS,
          this.retryDelayMs === 0 ? (this.options.firstRetryDelayMs ?? FIRST_RETRY_DELAY_MS) : this.retryDelayMs * 2,
        );
        // Held first: they are older than anything queued meanwhile. A key queued again meanwhile (a use a window
        // later) keeps its place here with its later use, as a queued key does.
        this.queued = new Map([...batch, ...this.queued]);
        this.log.warn(
          { err: error, keys: batch.size, held: this.queued.size, retryInMs: this.closing ? null : this.retryDelayMs },
          this.closing ? "could not record key uses" : "could not record key uses; holding them to try again",
        );
        return false;
      } finally {
        for (const keyId of batch.keys()) this.writing.delete(keyId);
        if (this.notHeld > 0) {
          this.log.warn({ uses: this.notHeld }, "key uses not recorded: too many held while the database failed");
          this.notHeld = 0;
        }
        this.schedule();
      }
    });
    this.inFlight = written.then(() => undefined);
    return written;
  }

  /** Writes what is queued and waits for every pending `KeyUsed` append (on shutdown: one try, no retries). */
  async flush(): Promise<void> {
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight;
    while (this.queued.size > 0) {
      if (!(await this.writeBatch())) {
        this.log.warn({ uses: this.queued.size }, "key uses not recorded: the database failed during shutdown");
        return;
      }
    }
  }
}
