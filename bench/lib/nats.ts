import { randomBytes } from "node:crypto";
import { deleteEventStream, NatsLink } from "@keyledger/nats-bus";

/** A JetStream stream and subject prefix of a benchmark's own, so it never sees or touches anyone else's events. */
export type NatsNames = { streamName: string; subjectPrefix: string };

export function benchNatsNames(label: string): NatsNames {
  const suffix = randomBytes(4).toString("hex");
  return {
    streamName: `KEYLEDGER_BENCH_${label.toUpperCase().replace(/[^A-Z0-9]/g, "_")}_${suffix}`,
    subjectPrefix: `keyledger-bench-${label.replace(/[^A-Za-z0-9_-]/g, "-")}-${suffix}`,
  };
}

/** Deletes the benchmark's stream (if the relay created it). */
export async function deleteBenchStream(natsUrl: string, streamName: string): Promise<void> {
  const link = new NatsLink({ servers: natsUrl, name: "keyledger-bench-cleanup" });
  try {
    const nc = await Promise.race([
      link.whenConnected(),
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 5000).unref()),
    ]);
    if (nc) await deleteEventStream(nc, streamName);
  } finally {
    await link.close();
  }
}
