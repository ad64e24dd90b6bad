import { ConfigError, parseDatabaseUrl } from "@keyledger/api";
import { type CliCommand, UsageError } from "./command";

export function helpText(commands: readonly CliCommand[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  const lines = ["Usage: pnpm keyledger <command> [options]", "", "Commands:"];
  for (const c of commands) lines.push(`  ${c.name.padEnd(width)}  ${c.summary}`);
  lines.push("", "Examples:");
  for (const c of commands) for (const example of c.examples) lines.push(`  ${example}`);
  lines.push("", "Run `pnpm keyledger <command> --help` for a command's usage.");
  return `${lines.join("\n")}\n`;
}

/** Runs one command; every failure is a single line on stderr and a non-zero exit code. */
export async function runCli(
  argv: string[],
  env: Record<string, string | undefined>,
  commands: readonly CliCommand[],
): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(helpText(commands));
    return name === undefined ? 2 : 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`keyledger: unknown command "${name}" (see pnpm keyledger --help)\n`);
    return 2;
  }
  // The API's check (never echoes the value: it carries a password). `localhost:5432` parses as the scheme
  // "localhost:", and pg would then fail with "no PostgreSQL user name".
  try {
    parseDatabaseUrl(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`keyledger ${name}: invalid configuration: ${error.message}\n`);
    return 78;
  }
  if (args.includes("--help") || args.includes("-h")) {
    process.stdout.write(
      `Usage: ${command.usage}\n${command.summary}\n\nExamples:\n${command.examples.map((e) => `  ${e}`).join("\n")}\n`,
    );
    return 0;
  }
  try {
    return await command.run(args, env);
  } catch (error) {
    const message = (error as Error).message.split("\n")[0];
    process.stderr.write(`keyledger ${name}: ${message}\n`);
    return error instanceof UsageError ? 2 : 1;
  }
}
