import { existsSync } from "node:fs";
import { createBenchDatabase } from "../lib/database";
import { REPO_ROOT, runTsForJson } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";
import { seedHistory } from "../lib/seed-history";
import { profileFlags } from "./current-key";

type RebuildResult = {
  events: number;
  durationMs: number;
  eventsPerSecond: number;
  rows: Record<string, number>;
  revoked: number;
  used: number;
};

/** Rebuild of the `api_keys` projection from 1,000,000 seeded events (members, creates, uses, revocations). */
export const rebuildScenario: Scenario = {
  id: "rebuild",
  title: "projection rebuild throughput on 1,000,000 seeded events",
  async unavailable() {
    return existsSync(`${REPO_ROOT}/packages/projections/src/rebuild.ts`)
      ? null
      : "the projection rebuild has not landed";
  },
  async run(context) {
    const events = size(context, 1_000_000, 50_000);
    const database = await createBenchDatabase(context.adminDatabaseUrl, "rebuild");
    try {
      const began = Date.now();
      const history = await seedHistory(database.db, events, (message) => {
        if (!context.quick) context.log(message);
      });
      context.log(`seeded ${history.total} events in ${((Date.now() - began) / 1000).toFixed(1)} s`);
      const result = await runTsForJson<RebuildResult>({
        name: "rebuild",
        script: "bench/micro/rebuild.ts",
        env: { DATABASE_URL: database.url },
        nodeFlags: profileFlags(context, "rebuild"),
        timeoutMs: 1_800_000,
      });
      const expected = {
        events: history.total,
        api_keys: history.created,
        organization_members: history.members,
        revoked: history.revoked,
        used: history.created, // every key was used
      };
      const got = {
        events: result.events,
        api_keys: result.rows.api_keys,
        organization_members: result.rows.organization_members,
        revoked: result.revoked,
        used: result.used,
      };
      if (JSON.stringify(expected) !== JSON.stringify(got)) {
        throw new Error(`rebuilt read model does not match the history: ${JSON.stringify({ expected, got })}`);
      }
      context.log(`${result.events} events in ${(result.durationMs / 1000).toFixed(1)} s: ${result.eventsPerSecond}/s`);
      const figure: Figure = {
        id: "rebuild-throughput",
        label: `rebuild \`api_keys\` from ${history.total.toLocaleString("en-US")} events`,
        value: result.eventsPerSecond,
        unit: "events/s",
        goal: "≥ 50,000 events/s",
        pass: result.eventsPerSecond >= 50_000,
        boundBy:
          "CPU in Node (parsing pages of the log, GC, folding) and Postgres (reading the log, writing rows, building indexes at the swap)",
        details: { ...expected, seconds: result.durationMs / 1000 },
      };
      return [figure];
    } finally {
      await database.drop();
    }
  },
};
