import type { KeyUseReport } from "@keyledger/nats-bus";
import type { Kysely } from "kysely";
import type { KeyUsageRecorder } from "./key-usage-recorder";
import { findApiKeysByHashes, validUntilForValue } from "./read-model-queries";

/**
 * Turns gateways' reported key uses into `KeyUsed`, through the same recorder (and per-key throttle) as the API's
 * own API-key requests. Unknown, revoked and expired keys are skipped. The report's keys are read in one statement.
 */
export async function recordReportedKeyUses(
  db: Kysely<unknown>,
  usage: KeyUsageRecorder,
  report: KeyUseReport,
): Promise<void> {
  const rows = await findApiKeysByHashes(
    db,
    report.uses.map((use) => use.keyHash),
  );
  const now = new Date();
  for (const use of report.uses) {
    const row = rows.get(use.keyHash);
    if (!row || validUntilForValue(row, use.keyHash, now) === undefined) continue;
    usage.record(row, null);
  }
}
