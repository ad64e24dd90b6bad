/** Clean-ups to run if the run is interrupted (Ctrl-C, SIGTERM) before a scenario's own `finally` does. */
const pending = new Set<() => Promise<unknown>>();

/** Registers a clean-up; call the returned function once it has run normally. */
export function onInterrupt(cleanup: () => Promise<unknown>): () => void {
  pending.add(cleanup);
  return () => pending.delete(cleanup);
}

/** On SIGINT/SIGTERM: runs every pending clean-up (dropping databases, deleting streams), then exits. */
export function installInterruptHandlers(log: (message: string) => void): void {
  let interrupted = false;
  const handler = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${signal}: cleaning up ${pending.size} resource(s)`);
    const timer = setTimeout(() => process.exit(130), 15_000);
    void Promise.allSettled([...pending].map((cleanup) => cleanup())).then(() => {
      clearTimeout(timer);
      process.exit(130);
    });
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
}
