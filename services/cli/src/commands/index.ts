import type { CliCommand } from "../command";
import { devTokenCommand } from "./dev-token";
import { migrateCommand } from "./migrate";

/** Every command `pnpm keyledger` knows, in the order `--help` lists them. Add new commands here. */
export const COMMANDS: CliCommand[] = [migrateCommand, devTokenCommand];
