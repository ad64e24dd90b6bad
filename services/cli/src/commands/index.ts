import type { CliCommand } from "../command";
import { auditCommand } from "./audit";
import { devTokenCommand } from "./dev-token";
import { eventsCommand } from "./events";
import { migrateCommand } from "./migrate";
import { rebuildCommand } from "./rebuild";
import { verifyLogCommand } from "./verify-log";

/** Every command `pnpm keyledger` knows, in the order `--help` lists them. Add new commands here. */
export const COMMANDS: CliCommand[] = [
  migrateCommand,
  devTokenCommand,
  rebuildCommand,
  verifyLogCommand,
  auditCommand,
  eventsCommand,
];
