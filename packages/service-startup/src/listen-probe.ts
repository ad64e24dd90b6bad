import { type AddressInfo, createServer } from "node:net";

/**
 * Listens on a free port of `host` and closes it again: the port found, or why this machine cannot listen there
 * (node's error code). Services call it before anything else starts, so that a bad `HOST` is refused naming the
 * variable (node's own `getaddrinfo ENOTFOUND x` names none).
 */
export async function probeListen(host: string): Promise<{ port: number } | { error: string }> {
  const probe = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      probe.once("error", reject);
      probe.listen(0, host, resolve);
    });
    return { port: (probe.address() as AddressInfo).port };
  } catch (error) {
    return { error: (error as NodeJS.ErrnoException).code ?? (error as Error).message };
  } finally {
    if (probe.listening) await new Promise((resolve) => probe.close(resolve));
  }
}

/** The line a service prints (then exits 78) when it cannot listen on `HOST`. */
export function hostProblem(host: string, error: string): string {
  return (
    `HOST: cannot listen on "${host}" (${error}): ` +
    "must be an address of this machine or a name that resolves to one"
  );
}
