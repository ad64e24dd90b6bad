import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { type BusLogger, NatsLink } from "../src/index";

/** A local port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function recordingLogger(lines: string[]): BusLogger {
  const record = (obj: object, msg: string) => void lines.push(JSON.stringify({ ...obj, msg }));
  return { info: record, warn: record, error: record, debug: record };
}

describe("NatsLink logging", () => {
  it("never logs the credentials of a server URL (user:password@ or token@), only where it connects", async () => {
    const port = await closedPort();
    const lines: string[] = [];
    const link = new NatsLink({
      servers: `nats://alice:s3cret@pass@127.0.0.1:${port}, nats://s3cret-token@127.0.0.1:${port}`,
      name: "connection-test",
      reconnectTimeWaitMs: 50,
      log: recordingLogger(lines),
    });
    try {
      const deadline = Date.now() + 10_000;
      while (!lines.some((line) => line.includes("NATS unreachable")) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const logged = lines.join("\n");
      expect(logged).toContain("NATS unreachable");
      expect(logged).toContain(`127.0.0.1:${port}`);
      expect(logged).not.toContain("s3cret");
    } finally {
      await link.close();
    }
  });
});
