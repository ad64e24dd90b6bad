import type { KeyUseReport } from "@keyledger/nats-bus";
import type { Kysely } from "kysely";
import type { KeyUsageRecorder } from "./key-usage-recorder";
import { findApiKeyByHash, validUntilForValue } from "./read-model-queries";

/**
 * Turns gateways' reported key uses into `KeyUsed`, through the same recorder (and per-key throttle) as the API's
 * own API-key requests. Unknown, revoked and expired keys are skipped.
 */
export async function recordReportedKeyUses(
  db: Kysely<unknown>,
  usage: KeyUsageRecorder,
  report: KeyUseReport,
): Promise<void> {
  for (const use of report.uses) {
    const row = await findApiKeyByHash(db, use.keyHash);
    if (!row || validUntilForValue(row, use.keyHash, new Date()) === undefined) continue;
    usage.record(row, null);
  }
}
