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

/**
 * Parses a command's options: each of `valueFlags` as `--flag value` or `--flag=value` (everything after the first
 * `=`), each of `switches` as `--flag` alone, which reads as "true". Anything else — an unknown option, a value
 * flag without its value, a switch given a value, an option given twice, a stray argument — is a `UsageError`.
 */
export function parseFlags(
  args: string[],
  valueFlags: readonly string[],
  switches: readonly string[] = [],
): Record<string, string> {
  const flags: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument "${arg}"`);
    const equals = arg.indexOf("=");
    const name = equals < 0 ? arg.slice(2) : arg.slice(2, equals);
    const inline = equals < 0 ? undefined : arg.slice(equals + 1);
    if (Object.hasOwn(flags, name)) {
      throw new UsageError(`--${name} is given more than once`);
    }
    if (switches.includes(name)) {
      if (inline !== undefined) throw new UsageError(`--${name} takes no value`);
      flags[name] = "true";
    } else if (valueFlags.includes(name)) {
      if (inline !== undefined) flags[name] = inline;
      else if (i + 1 < args.length && !(args[i + 1] as string).startsWith("--")) flags[name] = args[++i] as string;
      else throw new UsageError(`--${name} needs a value`);
    } else {
      throw new UsageError(`unknown option --${name}`);
    }
  }
  return flags;
}
