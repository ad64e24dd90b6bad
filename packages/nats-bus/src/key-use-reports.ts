import type { Subscription } from "@nats-io/transport-node";
import type { NatsLink } from "./connection";
import { keyUseReportSubject } from "./subjects";
import { decodeKeyUseReport, encodeKeyUseReport, type KeyUseReport } from "./wire";

export type KeyUseReporterOptions = {
  subjectPrefix: string;
  /** How often pending uses are sent (default 1 s). A key is reported at most once per interval. */
  intervalMs?: number;
  /** Uses kept while NATS is down; the oldest are dropped beyond it (default 10,000 keys). */
  maxPending?: number;
  /** Keys per message (default 500). */
  batchSize?: number;
};

/**
 * Gateway side of `KeyUsed`: collects the hashes of keys that verified, and publishes them in batches (core NATS,
 * at most once). The API turns each into `KeyUsed` under the same per-key throttle as its own requests.
 */
export class KeyUseReporter {
  private pending = new Map<string, string>();
  private readonly timer: NodeJS.Timeout;
  private readonly subject: string;

  constructor(
    private readonly link: NatsLink,
    private readonly options: KeyUseReporterOptions,
  ) {
    this.subject = keyUseReportSubject(options.subjectPrefix);
    this.timer = setInterval(() => this.flush(), options.intervalMs ?? 1_000);
    this.timer.unref();
  }

  /** Notes a verified use of the key with this SHA-256 hex (cheap: one map write). */
  record(keyHash: string, usedAt: Date = new Date()): void {
    if (this.pending.size >= (this.options.maxPending ?? 10_000) && !this.pending.has(keyHash)) {
      const oldest = this.pending.keys().next().value;
      if (oldest !== undefined) this.pending.delete(oldest);
    }
    this.pending.set(keyHash, usedAt.toISOString());
  }

  /** Sends what is pending now, if NATS is connected. */
  flush(): void {
    const nc = this.link.connection;
    if (this.pending.size === 0 || !nc || !this.link.connected) return;
    const entries = [...this.pending];
    this.pending = new Map();
    const batchSize = this.options.batchSize ?? 500;
    for (let i = 0; i < entries.length; i += batchSize) {
      const report: KeyUseReport = {
        uses: entries.slice(i, i + batchSize).map(([keyHash, usedAt]) => ({ keyHash, usedAt })),
      };
      nc.publish(this.subject, encodeKeyUseReport(report));
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.flush();
  }
}

/** Longest `subscribeKeyUseReports`' stop waits for the server to confirm the drain (a hung server never does). */
const DRAIN_TIMEOUT_MS = 2_000;

/**
 * API side: receives key-use reports in a queue group, so one replica handles each batch. Subscribes once
 * connected; the client resubscribes after reconnects. Returns a function that stops receiving: it drains the
 * subscription (the server stops sending to it, and every report it already sent is handed to `handler`; a report
 * of the queue group sent to no one goes to no other replica either), and resolves once that is done.
 */
export function subscribeKeyUseReports(
  link: NatsLink,
  options: { subjectPrefix: string; queue?: string },
  handler: (report: KeyUseReport) => void,
): () => Promise<void> {
  let subscription: Subscription | undefined;
  let stopped = false;
  void link.whenConnected().then((nc) => {
    if (!nc || stopped) return;
    subscription = nc.subscribe(keyUseReportSubject(options.subjectPrefix), {
      queue: options.queue ?? "keyledger-api",
      callback: (error, msg) => {
        if (error) return;
        const report = decodeKeyUseReport(msg.data);
        if (report.uses.length > 0) handler(report);
      },
    });
  });
  return async () => {
    stopped = true;
    const sub = subscription;
    if (sub === undefined || sub.isClosed()) return;
    // While NATS is unreachable nothing more can arrive, and a drain would wait for the server.
    if (!link.connected) return sub.unsubscribe();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      sub.drain().catch(() => sub.unsubscribe()),
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          sub.unsubscribe();
          resolve();
        }, DRAIN_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
  };
}
