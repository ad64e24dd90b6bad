/**
 * The verify ceiling, run in its own process: SHA-256 of a presented key value (`crypto.hash`, or `createHash` where
 * Node lacks it) and a `Map.get` of the hex digest among `KEYS` entries. Prints `{ opsPerSecond, ... }` as JSON.
 */
import * as crypto from "node:crypto";
import { hashKeyValue, KEY_RANDOM_BYTES, keyValueFromRandomBytes } from "@keyledger/domain";

const KEYS = 10_000;
const seconds = Number(process.argv[2] ?? 2);

type HashFn = (algorithm: string, data: string, encoding: "hex") => string;
const hash: HashFn =
  (crypto as unknown as { hash?: HashFn }).hash ??
  ((algorithm, data) => crypto.createHash(algorithm).update(data).digest("hex"));

const values: string[] = [];
const entries = new Map<string, { name: string }>();
for (let i = 0; i < KEYS; i++) {
  const value = keyValueFromRandomBytes(crypto.randomBytes(KEY_RANDOM_BYTES));
  values.push(value);
  entries.set(hashKeyValue(value), { name: `key-${i}` });
}

function run(ms: number): number {
  let ops = 0;
  let found = 0;
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    for (let i = 0; i < 1000; i++) {
      const entry = entries.get(hash("sha256", values[(ops + i) % KEYS] as string, "hex"));
      if (entry !== undefined) found++;
    }
    ops += 1000;
  }
  if (found !== ops) throw new Error("a key was not found");
  return ops;
}

run(300); // warm-up (JIT)
const started = performance.now();
const ops = run(seconds * 1000);
const elapsed = (performance.now() - started) / 1000;
process.stdout.write(
  `${JSON.stringify({ opsPerSecond: ops / elapsed, ops, seconds: elapsed, cryptoHash: "hash" in crypto })}\n`,
);
