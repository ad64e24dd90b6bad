import { UnsealedStartError, verifyLog } from "@keyledger/audit-log";
import { type CliCommand, parseFlags, UsageError } from "../command";
import { openMigratedStore, positionFlag } from "./log-access";

export const verifyLogCommand: CliCommand = {
  name: "verify-log",
  summary: "recompute the log's hash chain and stream versions; exit 1 naming the first position that does not match",
  usage: "keyledger verify-log [--from <position>] [--json]",
  examples: ["pnpm keyledger verify-log", "pnpm keyledger verify-log --from 120000 --json"],
  async run(args, env) {
    const flags = parseFlags(args, ["from"], ["json"]);
    const fromPosition = positionFlag(flags, "from");
    const db = await openMigratedStore(env, 1);
    try {
      const result = await verifyLog(db, { fromPosition }).catch((error: unknown) => {
        if (error instanceof UnsealedStartError) throw new UsageError(error.message);
        throw error;
      });
      if (flags.json === "true") {
        process.stdout.write(`${JSON.stringify(result)}\n`);
      } else {
        const { head } = result;
        process.stdout.write(
          `${result.eventsVerified} sealed event(s) verified${fromPosition ? ` from position ${fromPosition}` : ""}; ` +
            (head.chainIndex === "0"
              ? "the chain is empty"
              : `head: position ${head.globalPosition}, chain index ${head.chainIndex}, hash ${head.hash}`) +
            `; ${result.unsealed} committed event(s) not sealed yet\n`,
        );
      }
      if (result.problem) {
        // Each message names its position (and says what changed): printed after its kind, not after its position again.
        process.stderr.write(`keyledger verify-log: ${result.problem.kind}: ${result.problem.message}\n`);
        return 1;
      }
      return 0;
    } finally {
      await db.destroy();
    }
  },
};
