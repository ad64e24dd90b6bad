import { setTimeout as sleep } from "node:timers/promises";
import type { FastifyBaseLogger } from "fastify";
import { describe, expect, it } from "vitest";
import { until } from "../../../test/support/until";
import type { KeyCommands } from "../src/commands/key-commands";
import { KeyUsageRecorder } from "../src/key-usage-recorder";
import type { ApiKeyRow } from "../src/read-model-queries";

/** A database that is unreachable until `up` is set (or fails with `bug`), and keeps what it was asked to write. */
function flakyCommands() {
  const state = {
    up: false,
    bug: undefined as Error | undefined,
    attempts: 0,
    written: [] as { keyId: string; usedAt: Date }[],
  };
  const commands = {
    async recordKeyUsesAsRead(uses: { row: ApiKeyRow; context: { now: Date } }[]) {
      state.attempts += 1;
      if (state.bug) throw state.bug;
      if (!state.up) throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
      for (const use of uses) state.written.push({ keyId: use.row.key_id, usedAt: use.context.now });
    },
  };
  return { state, commands: commands as unknown as KeyCommands };
}

function captureLog() {
  const warnings: { fields: Record<string, unknown>; message: string }[] = [];
  const errors: { fields: Record<string, unknown>; message: string }[] = [];
  const log = {
    warn: (fields: Record<string, unknown>, message: string) => warnings.push({ fields, message }),
    error: (fields: Record<string, unknown>, message: string) => errors.push({ fields, message }),
  } as unknown as FastifyBaseLogger;
  return { warnings, errors, log };
}

/** Waits until `condition` holds (the recorder works on timers). */
const waitFor = (what: string, condition: () => boolean) => until(what, async () => condition() || undefined, 5_000, 5);

/** A recorder on a flaky database, with its log captured; 5 ms batch windows. */
function flakyRecorder(options: { firstRetryDelayMs: number; maxHeldUses?: number }) {
  const { state, commands } = flakyCommands();
  const { warnings, errors, log } = captureLog();
  const recorder = new KeyUsageRecorder(commands, 10_000, log, { batchWindowMs: 5, ...options });
  return { state, warnings, errors, recorder };
}

const row = (keyId: string): ApiKeyRow =>
  ({ key_id: keyId, organization_id: "org", user_id: "user", last_used_at: null }) as unknown as ApiKeyRow;

describe("KeyUsageRecorder when the database fails", () => {
  it("holds failed uses, tries again with a growing delay, and records each once with its own time", async () => {
    const { state, warnings, recorder } = flakyRecorder({ firstRetryDelayMs: 20 });
    recorder.record(row("a"), null);
    recorder.record(row("b"), null);
    const usedBefore = Date.now();
    await waitFor("three tries", () => state.attempts >= 3); // at about 5, 25 and 65 ms
    expect(warnings.slice(0, 3).map((w) => [w.fields.keys, w.fields.retryInMs])).toEqual([
      [2, 20],
      [2, 40],
      [2, 80],
    ]);
    // A later use of a held key is not a second use: the earliest in the window is the one recorded.
    recorder.record(row("a"), null);
    recorder.record(row("c"), null);
    state.up = true;
    await waitFor("the held uses", () => state.written.length >= 3);
    await sleep(50);
    expect(state.written.map((w) => w.keyId).sort()).toEqual(["a", "b", "c"]);
    const a = state.written.find((w) => w.keyId === "a");
    expect(a?.usedAt.getTime()).toBeLessThanOrEqual(usedBefore);
    await recorder.flush();
  });

  it("holds at most maxHeldUses, counts the rest in one warning, and records the held ones", async () => {
    const { state, warnings, recorder } = flakyRecorder({ firstRetryDelayMs: 30, maxHeldUses: 5 });
    for (let i = 0; i < 12; i++) recorder.record(row(`k${i}`), null);
    await waitFor("the warning", () => warnings.some((w) => w.message.startsWith("key uses not recorded")));
    expect(warnings.find((w) => w.message.startsWith("key uses not recorded"))?.fields.uses).toBe(7);
    state.up = true;
    await recorder.flush();
    expect(state.written.map((w) => w.keyId)).toEqual(["k0", "k1", "k2", "k3", "k4"]);
  });

  it("on shutdown gives held uses one more try, and says how many were not recorded", async () => {
    const { state, warnings, recorder } = flakyRecorder({ firstRetryDelayMs: 10_000 });
    recorder.record(row("a"), null);
    recorder.record(row("b"), null);
    await waitFor("the first try", () => state.attempts === 1);
    const attempts = state.attempts;
    await recorder.flush();
    expect(state.attempts).toBe(attempts + 1);
    expect(warnings.at(-1)).toEqual({
      fields: { uses: 2 },
      message: "key uses not recorded: the database failed during shutdown",
    });
  });

  it("drops a batch that fails for another reason (it would fail again), and goes on with the next ones", async () => {
    const { state, warnings, errors, recorder } = flakyRecorder({ firstRetryDelayMs: 20 });
    state.bug = Object.assign(new Error("null value in column violates not-null constraint"), { code: "23502" });
    recorder.record(row("a"), null);
    await waitFor("the failed try", () => errors.length === 1);
    expect(errors[0]?.message).toBe("could not record key uses; dropped");
    state.bug = undefined;
    state.up = true;
    recorder.record(row("b"), null);
    await waitFor("the next batch", () => state.written.length === 1);
    await sleep(60);
    expect(state.written.map((w) => w.keyId)).toEqual(["b"]);
    expect(state.attempts).toBe(2);
    expect(warnings).toEqual([]);
    await recorder.flush();
  });
});

/** A database that writes each batch once `release` is called (the first batch waits; later ones do not). */
function gatedCommands() {
  const written: { keyId: string; usedAt: Date }[][] = [];
  let release = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const commands = {
    async recordKeyUsesAsRead(uses: { row: ApiKeyRow; context: { now: Date } }[]) {
      await gate;
      written.push(uses.map((use) => ({ keyId: use.row.key_id, usedAt: use.context.now })));
    },
  };
  return { written, release: () => release(), commands: commands as unknown as KeyCommands };
}

describe("KeyUsageRecorder with a use's own time", () => {
  const MINUTE = 60_000;
  const usedRow = (keyId: string, lastUsedAt: Date | null): ApiKeyRow =>
    ({ ...row(keyId), last_used_at: lastUsedAt }) as ApiKeyRow;

  it("records the use at the time given, throttled on that time, and never before the key's last use", async () => {
    const { state, commands } = flakyCommands();
    state.up = true;
    const recorder = new KeyUsageRecorder(commands, 10_000, captureLog().log, { batchWindowMs: 5 });
    const lastUse = new Date(Date.now() - 60 * MINUTE);
    recorder.record(usedRow("in-window", lastUse), null, new Date(lastUse.getTime() + 5_000));
    recorder.record(usedRow("older", lastUse), null, new Date(lastUse.getTime() - 5 * MINUTE));
    const later = new Date(lastUse.getTime() + 11_000);
    recorder.record(usedRow("later", lastUse), null, later);
    await recorder.flush();
    expect(state.written).toEqual([{ keyId: "later", usedAt: later }]);
  });

  it("lets a use a window later replace a queued older one, and keeps the first within a window", async () => {
    const { state, commands } = flakyCommands();
    const recorder = new KeyUsageRecorder(commands, 10_000, captureLog().log, {
      batchWindowMs: 5,
      firstRetryDelayMs: 20,
    });
    const now = Date.now();
    recorder.record(row("a"), null, new Date(now - 60 * MINUTE)); // a report held for an hour
    recorder.record(row("b"), null, new Date(now - 60 * MINUTE));
    await waitFor("a failed try", () => state.attempts >= 1);
    recorder.record(row("a"), null, new Date(now)); // a new use, while the old one is held
    recorder.record(row("b"), null, new Date(now - 60 * MINUTE + 5_000)); // within the held use's window
    state.up = true;
    await waitFor("the held uses", () => state.written.length >= 2);
    await recorder.flush();
    expect(state.written.sort((x, y) => x.keyId.localeCompare(y.keyId))).toEqual([
      { keyId: "a", usedAt: new Date(now) },
      { keyId: "b", usedAt: new Date(now - 60 * MINUTE) },
    ]);
  });

  it("queues a key being written again only for a use a window later, for the next batch", async () => {
    const { written, release, commands } = gatedCommands();
    const recorder = new KeyUsageRecorder(commands, 10_000, captureLog().log, { batchWindowMs: 5 });
    const old = Date.now() - 60 * MINUTE;
    recorder.record(row("a"), null, new Date(old));
    await sleep(30); // the batch is being written (held at the gate)
    recorder.record(row("a"), null, new Date(old + 5_000)); // within the window of the use being written
    const now = new Date();
    recorder.record(row("a"), null, now);
    release();
    await recorder.flush();
    expect(written).toEqual([[{ keyId: "a", usedAt: new Date(old) }], [{ keyId: "a", usedAt: now }]]);
  });
});
