/**
 * In its own process, alternating rounds of:
 * - the verify ceiling: SHA-256 of a presented key value (`crypto.hash`, or `createHash` where Node lacks it) and a
 *   `Map.get` of the hex digest among `KEYS` entries;
 * - `verify()` of `@keyledger/verifier` on a cache hit (every key verified once before; subscribed to NATS so the
 *   cache is on), awaited one at a time as a gateway does per request.
 * Usage: verify-hit.ts <seconds per round> <rounds> [natsUrl subjectPrefix]. Prints JSON on the last line.
 */
import * as crypto from "node:crypto";
import { hashKeyValue, KEY_RANDOM_BYTES, keyValueFromRandomBytes } from "@keyledger/domain";
import { NatsLink, relayHeartbeatSubject } from "@keyledger/nats-bus";
import { createVerifier, type LookupResult } from "@keyledger/verifier";

const KEYS = 10_000;
const [secondsArg = "2", roundsArg = "3", natsUrl, subjectPrefix] = process.argv.slice(2);
const seconds = Number(secondsArg);
const rounds = Number(roundsArg);

type HashFn = (algorithm: string, data: string, encoding: "hex") => string;
const cryptoHash = (crypto as unknown as { hash?: HashFn }).hash;
const hash: HashFn = cryptoHash ?? ((algorithm, data) => crypto.createHash(algorithm).update(data).digest("hex"));

const values: string[] = [];
const entries = new Map<string, { name: string }>();
for (let i = 0; i < KEYS; i++) {
  const value = keyValueFromRandomBytes(crypto.randomBytes(KEY_RANDOM_BYTES));
  values.push(value);
  entries.set(hashKeyValue(value), { name: `key-${i}` });
}

function ceiling(ms: number): number {
  let ops = 0;
  let found = 0;
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    for (let i = 0; i < 1000; i++) {
      if (entries.get(hash("sha256", values[(ops + i) % KEYS] as string, "hex")) !== undefined) found++;
    }
    ops += 1000;
  }
  if (found !== ops) throw new Error("a key was not found");
  return ops;
}

const verifier =
  natsUrl && subjectPrefix
    ? createVerifier({
        natsUrl,
        subjectPrefix,
        name: "keyledger-bench-verify-hit",
        // No relay here: one heartbeat (below) turns the cache on, and the rounds keep the event loop busy for
        // seconds, so the lease is long. Every verify still checks it, as in a gateway.
        cache: { maxEntries: KEYS * 2, ttlMs: 3_600_000, relayHeartbeatTimeoutMs: 3_600_000 },
        lookup: async (_bearer, keyHash): Promise<LookupResult> => {
          const entry = entries.get(keyHash);
          return entry
            ? {
                valid: true,
                key: { name: entry.name, userId: "user", organizationId: "org", permissions: [], expiresAt: null },
              }
            : { valid: false, code: "NOT_FOUND" };
        },
      })
    : undefined;

async function verifyHits(ms: number): Promise<number> {
  if (!verifier) return 0;
  let ops = 0;
  let valid = 0;
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    for (let i = 0; i < 1000; i++) {
      const result = await verifier.verify(values[(ops + i) % KEYS] as string);
      if (result.valid) valid++;
    }
    ops += 1000;
  }
  if (valid !== ops) throw new Error("a verify was not valid");
  return ops;
}

if (verifier && natsUrl && subjectPrefix) {
  const relay = new NatsLink({ servers: natsUrl, name: "keyledger-bench-relay-heartbeat" });
  const heartbeat = setInterval(() => {
    relay.connection?.publish(relayHeartbeatSubject(subjectPrefix), JSON.stringify({ relay: "bench", position: "0" }));
  }, 50);
  const subscribed = await verifier.whenSubscribed();
  clearInterval(heartbeat);
  await relay.close();
  if (!subscribed) throw new Error("verifier did not subscribe");
  for (const value of values) await verifier.verify(value);
  if (verifier.cacheSize !== KEYS) throw new Error(`cache holds ${verifier.cacheSize} keys, expected ${KEYS}`);
}
ceiling(300);
await verifyHits(300);
const ceilingRounds: number[] = [];
const verifyRounds: number[] = [];
for (let r = 0; r < rounds; r++) {
  let started = performance.now();
  let ops = ceiling(seconds * 1000);
  ceilingRounds.push(ops / ((performance.now() - started) / 1000));
  if (verifier) {
    started = performance.now();
    ops = await verifyHits(seconds * 1000);
    verifyRounds.push(ops / ((performance.now() - started) / 1000));
  }
}
const misses = verifier?.stats.misses ?? 0;
await verifier?.close();
process.stdout.write(
  `${JSON.stringify({ ceilingRounds, verifyRounds, cryptoHash: cryptoHash !== undefined, verifierMisses: misses })}\n`,
);
