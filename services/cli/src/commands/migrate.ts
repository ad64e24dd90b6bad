import { runMigrations } from "@keyledger/event-store";
import { type CliCommand, parseFlags } from "../command";
import { openStore } from "../store";

export const migrateCommand: CliCommand = {
  name: "migrate",
  summary: "apply the SQL migrations under infra/migrations to DATABASE_URL (unset: the embedded database)",
  usage: "keyledger migrate",
  examples: [
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/keyledger pnpm keyledger migrate",
    "pnpm keyledger migrate",
  ],
  async run(args, env) {
    parseFlags(args, []);
    // No statement timeout: a migration may rewrite a large table (see `migrationDatabase` in the API).
    const db = await openStore(env, 1, 0);
    try {
      const result = await runMigrations(db);
      process.stdout.write(
        `applied ${result.applied.length} migration(s)${result.applied.length ? `: ${result.applied.join(", ")}` : ""}; ` +
          `${result.alreadyApplied.length} already applied\n`,
      );
      return 0;
    } finally {
      await db.destroy();
    }
  },
};
