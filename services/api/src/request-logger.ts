import type { FastifyBaseLogger } from "fastify";
import type { Bindings, ChildLoggerOptions, LevelWithSilent } from "pino";

type ParentLogger = FastifyBaseLogger & { isLevelEnabled(level: string): boolean };
type LogArguments = Parameters<FastifyBaseLogger["info"]>;

/**
 * A request's logger that becomes pino's child (with the request id) only when a line is written at a level the
 * logger writes: most requests write none (with `LOG_LEVEL=warn`, or no failure), and creating a child with its
 * bindings and redaction on every request costs about as much as a small route's handler.
 */
export class LazyRequestLogger {
  private created: FastifyBaseLogger | undefined;

  constructor(
    private readonly parent: ParentLogger,
    private readonly bindings: Bindings,
    private readonly options: ChildLoggerOptions,
  ) {}

  private real(): FastifyBaseLogger {
    this.created ??= this.parent.child(this.bindings, this.options);
    return this.created;
  }

  get level(): LevelWithSilent {
    return (this.created ?? this.parent).level as LevelWithSilent;
  }

  set level(level: LevelWithSilent) {
    this.real().level = level;
  }

  private write(level: "fatal" | "error" | "warn" | "info" | "debug" | "trace", args: LogArguments): void {
    if (this.created === undefined && !this.parent.isLevelEnabled(level)) return;
    (this.real()[level] as (...a: LogArguments) => void)(...args);
  }

  fatal(...args: LogArguments): void {
    this.write("fatal", args);
  }
  error(...args: LogArguments): void {
    this.write("error", args);
  }
  warn(...args: LogArguments): void {
    this.write("warn", args);
  }
  info(...args: LogArguments): void {
    this.write("info", args);
  }
  debug(...args: LogArguments): void {
    this.write("debug", args);
  }
  trace(...args: LogArguments): void {
    this.write("trace", args);
  }
  silent(): void {}

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.real().child(bindings, options);
  }
}

/** fastify's `childLoggerFactory`: lazy request loggers, or pino's child at once for a route with its own level. */
export function lazyChildLoggerFactory(
  logger: FastifyBaseLogger,
  bindings: Bindings,
  options: ChildLoggerOptions,
): FastifyBaseLogger {
  const parent = logger as ParentLogger;
  if (options.level !== undefined || typeof parent.isLevelEnabled !== "function")
    return logger.child(bindings, options);
  return new LazyRequestLogger(parent, bindings, options) as unknown as FastifyBaseLogger;
}
