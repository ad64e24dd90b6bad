import { parseIsoDateTime } from "@keyledger/domain";
import type { KeyUseReport } from "@keyledger/nats-bus";
import type { Kysely } from "kysely";
import type { KeyUsageRecorder } from "./key-usage-recorder";
import { type ApiKeyRow, findApiKeysByHashes, validUntilForValue } from "./read-model-queries";

/** An RFC 3339 date-time's shape (AsyncAPI's `format: date-time`), as the gateways write it (`toISOString`). */
const RFC_3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$/;

/**
 * The instant a report's `usedAt` names, or undefined when it is not a real RFC 3339 date-time: no 30 February, no
 * hour 24, no offset of 25 hours, nothing `Date.parse` would take leniently ("1", "March 7") or roll over.
 */
function parseUsedAt(value: string): number | undefined {
  return RFC_3339.test(value) ? parseIsoDateTime(value.toUpperCase())?.getTime() : undefined;
}

/** When a reported use is recorded: at its `usedAt`, but never in the future nor before the key was created. */
function recordedUseTime(row: ApiKeyRow, usedAtMs: number, nowMs: number): Date {
  return new Date(Math.max(Math.min(usedAtMs, nowMs), row.created_at.getTime()));
}

/**
 * Turns gateways' reported key uses into `KeyUsed`, through the same recorder (and per-key throttle) as the API's
 * own API-key requests. Each use is recorded at its `usedAt` (a report held or delayed on the way still says when
 * the key was used), clamped to now and to the key's creation; the throttle is on that time, and a use older than
 * the key's last one records nothing (`lastUsedAt` never goes back). A use whose `usedAt` is not a date-time is
 * ignored, as the decoder ignores other malformed entries. Unknown and revoked keys are skipped, and so is a value
 * that was not valid (expired, past its rotation grace) at the use's time. The report's keys are read in one
 * statement.
 */
export async function recordReportedKeyUses(
  db: Kysely<unknown>,
  usage: KeyUsageRecorder,
  report: KeyUseReport,
): Promise<void> {
  const uses = report.uses.flatMap((use) => {
    const usedAtMs = typeof use.usedAt === "string" ? parseUsedAt(use.usedAt) : undefined;
    return usedAtMs === undefined ? [] : [{ keyHash: use.keyHash, usedAtMs }];
  });
  if (uses.length === 0) return;
  const rows = await findApiKeysByHashes(
    db,
    uses.map((use) => use.keyHash),
  );
  const nowMs = Date.now();
  for (const use of uses) {
    const row = rows.get(use.keyHash);
    if (!row) continue;
    const usedAt = recordedUseTime(row, use.usedAtMs, nowMs);
    if (validUntilForValue(row, use.keyHash, usedAt) === undefined) continue;
    usage.record(row, null, usedAt);
  }
}
