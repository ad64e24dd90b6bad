import { findProjection, PROJECTIONS, rebuildProjection } from "@keyledger/projections";
import { type CliCommand, parseFlags, UsageError } from "../command";
import { openMigratedStore } from "./log-access";

export const rebuildCommand: CliCommand = {
  name: "rebuild",
  summary: "truncate a projection (default: all) and rebuild it from the log; the API keeps serving meanwhile",
  usage: `keyledger rebuild [--projection ${PROJECTIONS.map((p) => p.name).join("|")}] [--batch-size <events>]`,
  examples: ["pnpm keyledger rebuild", "pnpm keyledger rebuild --projection api_keys --batch-size 10000"],
  async run(args, env) {
    const flags = parseFlags(args, ["projection", "batch-size"]);
    const projections =
      flags.projection === undefined ? PROJECTIONS : [findProjection(flags.projection)].filter((p) => p !== undefined);
    if (projections.length === 0) {
      throw new UsageError(
        `unknown projection "${flags.projection}" (known: ${PROJECTIONS.map((p) => p.name).join(", ")})`,
      );
    }
    const batchSize = flags["batch-size"] === undefined ? undefined : Number(flags["batch-size"]);
    if (batchSize !== undefined && !(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= 100_000)) {
      throw new UsageError("--batch-size must be an integer from 1 to 100000");
    }
    const db = await openMigratedStore(env, 2);
    try {
      for (const projection of projections) {
        const stats = await rebuildProjection(db, projection, { batchSize });
        const rows = Object.entries(stats.rows)
          .map(([table, count]) => `${table} ${count} rows`)
          .join(", ");
        process.stdout.write(
          `rebuilt ${stats.projection}: ${stats.events} events in ${(stats.durationMs / 1000).toFixed(2)} s ` +
            `(${stats.eventsPerSecond} events/s); ${rows}\n`,
        );
      }
      return 0;
    } finally {
      await db.destroy();
    }
  },
};
