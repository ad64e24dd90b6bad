import { sealPending } from "@keyledger/audit-log";
import type { Kysely } from "kysely";
import type { NotificationSource } from "./notifications";
import { PROJECTIONS, type ProjectionDefinition } from "./projection-registry";
import { loadProjectionStatus, markProjectionCurrent, type RebuildCarry, rebuildStep } from "./rebuild";

/** Channel appends notify on commit (`notifyAppended` in the event store). */
export const EVENTS_CHANNEL = "keyledger_events";

/** The pino-compatible subset the projector logs with. */
export type ProjectorLog = {
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
  error(object: object, message: string): void;
};

export type ProjectorOptions = {
  db: Kysely<unknown>;
  /** Wakes the projector as soon as an append commits; without it, it polls only. */
  notifications?: NotificationSource;
  /** Fallback poll when no notification comes (ms). */
  pollIntervalMs?: number;
  /**
   * Least time from the start of one pass to the start of the next (ms, default 25): under a stream of commits,
   * the notifications of that time are handled by one pass (a batch) instead of one pass each. Sealing trails
   * commits by up to this much more.
   */
  minPassIntervalMs?: number;
  /** Retry delay while committed events wait for an older transaction before they can be sealed (ms). */
  heldBackRetryMs?: number;
  sealBatchSize?: number;
  rebuildBatchSize?: number;
  /** Extend the hash chain (default true). */
  seal?: boolean;
  projections?: readonly ProjectionDefinition[];
  log?: ProjectorLog;
};

export type ProjectorPass = {
  sealed: number;
  heldBack: boolean;
  rebuildEvents: number;
  swapped: string[];
  /** A rebuild still has work: run again at once. */
  more: boolean;
};

const silent: ProjectorLog = { info() {}, warn() {}, error() {} };

/** While commits keep coming, inline projections' checkpoints are written at most this often. */
const MARK_CURRENT_MIN_INTERVAL_MS = 100;

/** Longest a pass spends on rebuild batches before it seals again. */
const REBUILD_SLICE_MS = 500;

/**
 * The projector: after every commit (LISTEN/NOTIFY, polling as fallback) it extends the hash chain, records that
 * inline projections are current, and carries on any requested rebuild batch by batch. Every unit of work is one
 * transaction that stores its own progress, so a killed projector resumes where the last commit left it. Several
 * projectors (the API replicas and a standalone one) may run: advisory locks give each unit to one of them.
 */
export class Projector {
  private readonly log: ProjectorLog;
  private stopping = false;
  private woken = false;
  private wakeUp: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private failures = 0;
  private markedCurrentAt = 0;
  /** The position of the event the hash chain is blocked at, as last logged. */
  private reportedBlock: string | undefined;

  constructor(private readonly options: ProjectorOptions) {
    this.log = options.log ?? silent;
  }

  start(): void {
    if (this.running) return;
    this.stopping = false;
    this.unsubscribe = this.options.notifications?.subscribe(EVENTS_CHANNEL, () => this.wake());
    this.running = this.loop();
  }

  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  /**
   * Finishes the unit of work in progress, then stops; resolves true. With `waitMs`, resolves false if that unit
   * is still running after that long (a rebuild's batch or swap on a large log): a process shutting down may then
   * exit, and Postgres rolls the unit back (it stores its own progress, so the next projector resumes it).
   */
  async stop(options: { waitMs?: number } = {}): Promise<boolean> {
    this.stopping = true;
    this.unsubscribe?.();
    this.wake();
    const running = this.running ?? Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([
      running.then(() => true),
      ...(options.waitMs === undefined
        ? []
        : [new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), options.waitMs)))]),
    ]);
    clearTimeout(timer);
    if (stopped) this.running = undefined;
    return stopped;
  }

  /** One pass: seal what committed, mark inline projections current, advance rebuilds for a while. */
  async runOnce(): Promise<ProjectorPass> {
    const pass: ProjectorPass = { sealed: 0, heldBack: false, rebuildEvents: 0, swapped: [], more: false };
    if (this.options.seal !== false) {
      const sealing = await sealPending(this.options.db, { batchSize: this.options.sealBatchSize });
      pass.sealed = sealing.sealed;
      pass.heldBack = sealing.heldBack;
      // Logged once per blocking event, not on every pass while it stays.
      if (sealing.blocked?.position !== this.reportedBlock) {
        this.reportedBlock = sealing.blocked?.position;
        if (sealing.blocked !== null) {
          this.log.error(
            sealing.blocked,
            "the hash chain stops before an event that cannot be hashed: nothing after it is sealed until it is repaired (docs/projections.md)",
          );
        }
      }
    }
    // Inline projections' checkpoints move when this process sealed something (the log grew), or once per poll
    // interval: several projectors need not all update the same rows after every commit.
    const sinceMarked = performance.now() - this.markedCurrentAt;
    const markCurrent =
      (pass.sealed > 0 && sinceMarked >= MARK_CURRENT_MIN_INTERVAL_MS) ||
      sinceMarked >= (this.options.pollIntervalMs ?? 1000);
    for (const projection of this.options.projections ?? PROJECTIONS) {
      const status = await loadProjectionStatus(this.options.db, projection.name);
      if (status?.status !== "rebuilding") {
        if (projection.inline && markCurrent) {
          await markProjectionCurrent(this.options.db, projection.name);
          this.markedCurrentAt = performance.now();
        }
        continue;
      }
      const started = performance.now();
      let carry: RebuildCarry | undefined;
      while (!this.stopping && performance.now() - started < REBUILD_SLICE_MS) {
        const step = await rebuildStep(this.options.db, projection, {
          batchSize: this.options.rebuildBatchSize,
          carry,
        });
        carry = step.kind === "applied" || step.kind === "next-tier" ? step.carry : undefined;
        if (step.kind === "applied") pass.rebuildEvents += step.events;
        else if (step.kind === "swapped") {
          pass.swapped.push(projection.name);
          this.log.info(
            { projection: projection.name, eventsApplied: step.eventsApplied },
            "projection rebuilt and swapped in",
          );
          break;
        } else if (step.kind !== "next-tier") break;
      }
      if (performance.now() - started >= REBUILD_SLICE_MS) pass.more = true;
    }
    return pass;
  }

  private async loop(): Promise<void> {
    const poll = this.options.pollIntervalMs ?? 1000;
    const minInterval = this.options.minPassIntervalMs ?? 25;
    while (!this.stopping) {
      const passStarted = performance.now();
      this.woken = false;
      let delay = poll;
      try {
        const pass = await this.runOnce();
        // Sealing follows every commit: routine, and visible as keyledger_log_reader_lag_*; rebuilds are logged.
        if (pass.rebuildEvents > 0) {
          this.log.info(
            { sealed: pass.sealed, rebuildEvents: pass.rebuildEvents, swapped: pass.swapped },
            "projector pass",
          );
        }
        if (this.failures > 0) this.log.info({}, "projector recovered");
        this.failures = 0;
        if (pass.more) continue;
        if (pass.heldBack) delay = this.options.heldBackRetryMs ?? 20;
      } catch (error) {
        this.failures += 1;
        delay = Math.min(poll * 2 ** Math.min(this.failures, 5), 30_000);
        this.log.error({ err: error, failures: this.failures, retryInMs: delay }, "projector pass failed");
      }
      if (this.stopping) continue;
      if (this.woken) {
        const wait = minInterval - (performance.now() - passStarted);
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
  }
}
