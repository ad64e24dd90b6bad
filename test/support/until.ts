/**
 * Polls `probe` until it returns something other than `undefined`, and returns that; after `timeoutMs` throws
 * "timed out waiting for <what>". For tests that wait on asynchronous effects (events, processes, caches) without
 * asserting how fast they happen.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 90_000,
  intervalMs = 10,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
