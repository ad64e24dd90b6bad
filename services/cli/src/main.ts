import { runCli } from "./cli";
import { COMMANDS } from "./commands/index";

/** The only place the CLI reads the environment and argv. */
runCli(process.argv.slice(2), process.env, COMMANDS).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`keyledger: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
