import { actorOf, damageOf, organizationOf, withoutHashes } from "@keyledger/audit-log";
import {
  checkpointOf,
  hasEventsAfter,
  LOG_START,
  type LogCheckpoint,
  type RecordedEvent,
  readAllAfter,
} from "@keyledger/event-store";
import { EVENTS_CHANNEL, type NotificationSource, PgNotificationListener } from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { type CliCommand, parseFlags, UsageError } from "../command";
import { openMigratedStore } from "./log-access";

/** One committed event as `events tail` prints it (key hashes left out). */
export type TailedEvent = {
  position: string;
  organizationId: string;
  type: string;
  occurredAt: string;
  actor: { userId: string | null; authMethod: string | null };
  stream: { id: string; version: number };
  data: unknown;
  /** Present only when the event's data or metadata is not a JSON object (`damageOf`): printed as stored. */
  damaged?: string;
};

export type TailOptions = {
  db: Kysely<unknown>;
  /** Wakes the tail when an append commits; without it, it polls. */
  notifications?: NotificationSource;
  organizationId?: string;
  /** Print the whole log first (default: only what commits from now on). */
  fromStart?: boolean;
  pollIntervalMs?: number;
  signal: AbortSignal;
  onReady?: () => void;
  onEvent: (event: TailedEvent) => void;
};

/**
 * Where to start following "from now on": the commit-safe end of the log (every event after it commits later),
 * and the snapshot it was taken in, in one statement.
 */
async function startingPoint(db: Kysely<unknown>): Promise<{ checkpoint: LogCheckpoint; snapshot: string }> {
  const result = await sql<{ snapshot: string; transaction_id: string | null; global_position: string | null }>`
    SELECT pg_current_snapshot()::text AS snapshot, head.transaction_id, head.global_position
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (
        SELECT e.transaction_id::text AS transaction_id, e.global_position::text AS global_position FROM events e
         WHERE e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.transaction_id DESC, e.global_position DESC LIMIT 1) AS head ON true`.execute(db);
  const row = result.rows[0] as { snapshot: string; transaction_id: string | null; global_position: string | null };
  return {
    snapshot: row.snapshot,
    checkpoint:
      row.transaction_id === null || row.global_position === null
        ? LOG_START
        : { transactionId: row.transaction_id, globalPosition: row.global_position },
  };
}

/** Whether transaction `xid` had committed as of `snapshot` (`xmin:xmax:xip,...`, as pg_current_snapshot prints). */
export function committedBefore(snapshot: string, xid: string): boolean {
  const [xmin = "0", xmax = "0", xip = ""] = snapshot.split(":");
  const id = BigInt(xid);
  if (id < BigInt(xmin)) return true;
  if (id >= BigInt(xmax)) return false;
  return !xip.split(",").some((running) => running !== "" && BigInt(running) === id);
}

function tailed(event: RecordedEvent): TailedEvent {
  const { userId, authMethod } = actorOf(event.metadata);
  const damaged = damageOf(event);
  return {
    position: event.globalPosition,
    organizationId: organizationOf(event),
    type: event.type,
    occurredAt: event.occurredAt.toISOString(),
    actor: { userId, authMethod },
    stream: { id: event.streamId, version: event.streamVersion },
    data: withoutHashes(event.data),
    ...(damaged === undefined ? {} : { damaged }),
  };
}

/** Follows the log in commit-safe order (`readAllAfter`) and hands over each event as it commits. */
export async function tailEvents(options: TailOptions): Promise<void> {
  const { db, signal } = options;
  // From now on: start at the commit-safe end, and skip what had already committed when we started (events of
  // transactions newer than a still-running one sit past that end).
  const start = options.fromStart ? undefined : await startingPoint(db);
  const started = start?.snapshot;
  let checkpoint = start?.checkpoint ?? LOG_START;
  let wake: (() => void) | undefined;
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  const unsubscribe = options.notifications?.subscribe(EVENTS_CHANNEL, () => wake?.());
  try {
    options.onReady?.();
    while (!signal.aborted) {
      const page = await readAllAfter(db, checkpoint, 500);
      for (const event of page) {
        checkpoint = checkpointOf(event);
        if (started !== undefined && committedBefore(started, event.transactionId)) continue;
        const printed = tailed(event);
        if (options.organizationId === undefined || printed.organizationId === options.organizationId) {
          options.onEvent(printed);
        }
      }
      if (page.length === 500) continue;
      const delay = (await hasEventsAfter(db, checkpoint)) ? 25 : (options.pollIntervalMs ?? 1000);
      if (signal.aborted) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    unsubscribe?.();
  }
}

export function formatTailed(event: TailedEvent): string {
  const method = event.actor.authMethod ?? "unknown";
  const actor = event.actor.userId ? `${event.actor.userId} (${method})` : method;
  return (
    `${event.occurredAt}  #${event.position}  ${event.organizationId}  ${event.type}  ` +
    `${event.stream.id} v${event.stream.version}  by ${actor}  ${JSON.stringify(event.data)}` +
    (event.damaged === undefined ? "" : `  DAMAGED: ${event.damaged}`)
  );
}

export const eventsCommand: CliCommand = {
  name: "events",
  summary: "events tail: print the log's events as they are committed (one line each; --json for JSON lines)",
  usage: "keyledger events tail [--org <id>] [--from-start] [--json]",
  examples: ["pnpm keyledger events tail", "pnpm keyledger events tail --org acme --json"],
  async run(args, env) {
    const [subcommand, ...rest] = args;
    if (subcommand !== "tail") throw new UsageError(`unknown subcommand "${subcommand ?? ""}" (usage: events tail)`);
    const flags = parseFlags(rest, ["org"], ["from-start", "json"]);
    if (flags.org === "") throw new UsageError("--org needs an organization id");
    const db = await openMigratedStore(env, 2);
    const listener = env.DATABASE_URL ? new PgNotificationListener({ connectionString: env.DATABASE_URL }) : undefined;
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
      await listener?.ready();
      await tailEvents({
        db,
        notifications: listener,
        organizationId: flags.org,
        fromStart: flags["from-start"] === "true",
        pollIntervalMs: listener ? 1000 : 250,
        signal: stop.signal,
        onReady: () =>
          process.stderr.write(
            `keyledger events tail: following the log${flags.org ? ` of ${flags.org}` : ""} (Ctrl-C to stop)\n`,
          ),
        onEvent: (event) =>
          process.stdout.write(`${flags.json === "true" ? JSON.stringify(event) : formatTailed(event)}\n`),
      });
      return 0;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      await listener?.close();
      await db.destroy();
    }
  },
};
