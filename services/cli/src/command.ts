/** One `pnpm keyledger <name>` command. `run` returns the process exit code; errors are one line on stderr. */
export type CliCommand = {
  name: string;
  summary: string;
  usage: string;
  examples: string[];
  run(args: string[], env: Record<string, string | undefined>): Promise<number>;
};

/** A usage mistake: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses `--flag value` and `--flag=value` pairs; `--flag` alone is "true". */
export function parseFlags(args: string[], known: readonly string[]): Record<string, string> {
  const flags: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument "${arg}"`);
    const [rawName, inline] = arg.slice(2).split("=", 2) as [string, string | undefined];
    if (!known.includes(rawName)) throw new UsageError(`unknown option --${rawName}`);
    if (inline !== undefined) flags[rawName] = inline;
    else if (i + 1 < args.length && !(args[i + 1] as string).startsWith("--")) flags[rawName] = args[++i] as string;
    else flags[rawName] = "true";
  }
  return flags;
}
