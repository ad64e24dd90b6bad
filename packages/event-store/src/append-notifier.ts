import type { Kysely } from "kysely";
import { notifyAppended } from "./event-store";

export type AppendNotifierOptions = {
  /** Channel the log's readers LISTEN on; default `keyledger_events`. */
  channel?: string;
  /** At most one notification per this many milliseconds; default 15. */
  minIntervalMs?: number;
  /**
   * How long the first notification after a quiet spell waits (default 0: at once). A process that also
   * publishes its commits elsewhere first (the API's NATS fast path) can give that delivery a head start over
   * the readers' work, which competes with it for the CPU.
   */
  delayMs?: number;
  /** A notification that failed (the readers then find the appends on their next poll). */
  onError?: (error: unknown) => void;
};

/**
 * Wakes the log's readers (projector, relay, audit event streams) after appends have committed, with a
 * `pg_notify` of its own: `delayMs` after a quiet spell, then at most once per `minIntervalMs` however many
 * transactions commit in between.
 *
 * Why not notify inside the appending transaction: Postgres serializes every committing transaction that sent a
 * NOTIFY on one cluster-wide lock held until its commit record is flushed, so concurrent commands would commit one
 * WAL flush at a time instead of sharing flushes. The readers also poll, so a lost notification only delays them.
 */
export class AppendNotifier {
  private pending = false;
  private sending: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private closed = false;

  constructor(
    private readonly db: Kysely<unknown>,
    private readonly options: AppendNotifierOptions = {},
  ) {}

  /** Call after a transaction that appended has committed. */
  appended(): void {
    if (this.closed) return;
    this.pending = true;
    this.schedule();
  }

  /** Sends what is pending now, then stops notifying. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.sending;
    if (this.pending) await this.send();
  }

  private schedule(): void {
    if (this.sending || this.timer || !this.pending) return;
    const wait = Math.max(
      this.options.delayMs ?? 0,
      this.lastSentAt + (this.options.minIntervalMs ?? 15) - performance.now(),
    );
    if (wait <= 0) {
      void this.send();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.send();
    }, wait);
    this.timer.unref();
  }

  private send(): Promise<void> {
    this.pending = false;
    this.lastSentAt = performance.now();
    this.sending = notifyAppended(this.db, this.options.channel)
      .catch((error: unknown) => this.options.onError?.(error))
      .finally(() => {
        this.sending = undefined;
        if (!this.closed) this.schedule();
      });
    return this.sending;
  }
}
