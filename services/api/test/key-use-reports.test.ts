import { randomBytes, randomUUID } from "node:crypto";
import type { FastifyBaseLogger } from "fastify";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type CommandContext, KeyCommands } from "../src/commands/key-commands";
import { KeyUsageRecorder } from "../src/key-usage-recorder";
import { recordReportedKeyUses } from "../src/key-use-reports";

const newHash = () => randomBytes(32).toString("hex");
const silentLog = { warn: () => {} } as unknown as FastifyBaseLogger;

/** Gateways' reported uses, on the run's shared test database (an organization of this test's own). */
describe("recordReportedKeyUses", () => {
  const statements: string[] = [];
  let db: Kysely<unknown>;
  const org = `reports-org-${randomUUID()}`;
  const user = `reports-user-${randomUUID()}`;
  const context = (): CommandContext => ({
    now: new Date(),
    metadata: { actorUserId: user, organizationId: org, authMethod: "jwt", requestId: null },
  });

  beforeAll(async () => {
    const pool = new pg.Pool({ connectionString: inject("databaseUrl"), max: 2 });
    db = new Kysely<unknown>({
      dialect: new PostgresDialect({ pool }),
      log: (event) => {
        statements.push(event.query.sql);
      },
    });
  });
  afterAll(async () => {
    await db?.destroy();
  });
  beforeAll(async () => {
    await new KeyCommands(db).changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(),
    );
  });

  it("reads the report's keys in one statement and records uses of live values only (a rotated-out value in its grace too)", async () => {
    const commands = new KeyCommands(db);
    const hashes: Record<string, string> = {};
    for (const name of ["plain", "rotated", "revoked", "graceless"]) {
      hashes[name] = newHash();
      await commands.createApiKey(
        {
          keyId: randomUUID(),
          organizationId: org,
          userId: user,
          name,
          keyHash: hashes[name] as string,
          maskedValue: "dtn****",
          permissions: [],
          expiresAt: null,
        },
        context(),
      );
    }
    const rotate = (name: string, gracePeriodSeconds: number) =>
      commands.rotateApiKey(
        { organizationId: org, userId: user, name },
        { keyHash: newHash(), maskedValue: "dtn****", gracePeriodSeconds, expiresAt: undefined, mayExtendExpiry: true },
        context(),
      );
    await rotate("rotated", 3_600);
    await rotate("graceless", 0);
    await commands.revokeApiKey({ organizationId: org, userId: user, name: "revoked" }, "deleted", context());

    const recorder = new KeyUsageRecorder(commands, 60_000, silentLog);
    statements.length = 0;
    await recordReportedKeyUses(db, recorder, {
      uses: [
        { keyHash: hashes.plain as string, usedAt: new Date().toISOString() },
        { keyHash: hashes.rotated as string, usedAt: new Date().toISOString() }, // the previous value, in its grace
        { keyHash: hashes.revoked as string, usedAt: new Date().toISOString() },
        { keyHash: hashes.graceless as string, usedAt: new Date().toISOString() }, // previous value, grace over
        { keyHash: newHash(), usedAt: new Date().toISOString() }, // unknown
        { keyHash: hashes.plain as string, usedAt: new Date().toISOString() }, // twice in one report
      ],
    });
    expect(statements.filter((s) => s.includes("api_keys"))).toHaveLength(1);
    await recorder.flush();
    const { rows } = await sql<{ name: string }>`
      SELECT data->>'name' AS name FROM events
       WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org} ORDER BY data->>'name'`.execute(db);
    expect(rows.map((r) => r.name)).toEqual(["plain", "rotated"]);
  });

  const MINUTE = 60_000;
  const at = (ms: number): CommandContext => ({ ...context(), now: new Date(ms) });
  /** Creates a key at `createdAtMs` (expiring at `expiresAtMs`); returns its hash. */
  const createKey = async (name: string, createdAtMs: number, expiresAtMs: number | null = null) => {
    const keyHash = newHash();
    await new KeyCommands(db).createApiKey(
      {
        keyId: randomUUID(),
        organizationId: org,
        userId: user,
        name,
        keyHash,
        maskedValue: "dtn****",
        permissions: [],
        expiresAt: expiresAtMs === null ? null : new Date(expiresAtMs),
      },
      at(createdAtMs),
    );
    return keyHash;
  };
  /** The `usedAt` of the key's `KeyUsed` events, in order, and its read-model `last_used_at`. */
  const usesOf = async (name: string) => {
    const events = await sql<{ used_at: string }>`
      SELECT data->>'usedAt' AS used_at FROM events
       WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org} AND data->>'name' = ${name}
       ORDER BY global_position`.execute(db);
    const row = await sql<{ last_used_at: Date | null }>`
      SELECT last_used_at FROM api_keys WHERE organization_id = ${org} AND name = ${name}`.execute(db);
    return {
      usedAt: events.rows.map((r) => r.used_at),
      lastUsedAt: row.rows[0]?.last_used_at?.toISOString() ?? null,
    };
  };
  const report = async (recorder: KeyUsageRecorder, uses: { keyHash: string; usedAt: string }[]) => {
    await recordReportedKeyUses(db, recorder, { uses });
    await recorder.flush();
  };

  it("records a use at its usedAt, clamped to now and to the key's creation", async () => {
    const createdAt = Date.now() - 60 * MINUTE;
    const held = await createKey("held", createdAt);
    const future = await createKey("future", createdAt);
    const early = await createKey("early", createdAt);
    const usedAt = new Date(createdAt + 30 * MINUTE).toISOString(); // a report held while NATS was down
    const before = Date.now();
    await report(new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog), [
      { keyHash: held, usedAt },
      { keyHash: future, usedAt: new Date(Date.now() + 60 * MINUTE).toISOString() },
      { keyHash: early, usedAt: new Date(createdAt - 60 * MINUTE).toISOString() },
    ]);
    const after = Date.now();
    expect(await usesOf("held")).toEqual({ usedAt: [usedAt], lastUsedAt: usedAt });
    expect(await usesOf("early")).toEqual({
      usedAt: [new Date(createdAt).toISOString()],
      lastUsedAt: new Date(createdAt).toISOString(),
    });
    const clamped = await usesOf("future");
    expect(clamped.usedAt).toHaveLength(1);
    expect(clamped.lastUsedAt).toBe(clamped.usedAt[0]);
    expect(Date.parse(clamped.usedAt[0] as string)).toBeGreaterThanOrEqual(before);
    expect(Date.parse(clamped.usedAt[0] as string)).toBeLessThanOrEqual(after);
  });

  it("throttles on the reported time, and an older report never moves lastUsedAt back", async () => {
    const createdAt = Date.now() - 180 * MINUTE;
    const keyHash = await createKey("throttled", createdAt);
    const recorder = new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog);
    const iso = (minutes: number) => new Date(createdAt + minutes * MINUTE).toISOString();
    await report(recorder, [{ keyHash, usedAt: iso(60) }]);
    await report(recorder, [{ keyHash, usedAt: iso(60.5) }]); // within the window of the use at 60
    await report(recorder, [{ keyHash, usedAt: iso(30) }]); // older than the last use
    await report(recorder, [{ keyHash, usedAt: iso(70) }]);
    await report(recorder, [{ keyHash, usedAt: iso(65) }]);
    expect(await usesOf("throttled")).toEqual({ usedAt: [iso(60), iso(70)], lastUsedAt: iso(70) });
  });

  it("an older report decided after a newer use (another replica's) records nothing", async () => {
    const createdAt = Date.now() - 180 * MINUTE;
    const keyHash = await createKey("two-replicas", createdAt);
    const iso = (minutes: number) => new Date(createdAt + minutes * MINUTE).toISOString();
    // This replica reads the key (never used) and queues the older use; the other records a newer one first.
    const slow = new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog, { batchWindowMs: 60_000 });
    await recordReportedKeyUses(db, slow, { uses: [{ keyHash, usedAt: iso(30) }] });
    await report(new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog), [{ keyHash, usedAt: iso(120) }]);
    await slow.flush();
    expect(await usesOf("two-replicas")).toEqual({ usedAt: [iso(120)], lastUsedAt: iso(120) });
  });

  it("counts a value that was valid at its use: before its expiry, in its rotation grace", async () => {
    const createdAt = Date.now() - 180 * MINUTE;
    const iso = (minutes: number) => new Date(createdAt + minutes * MINUTE).toISOString();
    const expired = await createKey("expired", createdAt, createdAt + 60 * MINUTE);
    const usedAfterExpiry = await createKey("used-after-expiry", createdAt, createdAt + 60 * MINUTE);
    const previous = await createKey("rotated-in-past", createdAt);
    await new KeyCommands(db).rotateApiKey(
      { organizationId: org, userId: user, name: "rotated-in-past" },
      {
        keyHash: newHash(),
        maskedValue: "dtn****",
        gracePeriodSeconds: 600,
        expiresAt: undefined,
        mayExtendExpiry: true,
      },
      at(createdAt + 60 * MINUTE),
    );
    await report(new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog), [
      { keyHash: expired, usedAt: iso(59) },
      { keyHash: usedAfterExpiry, usedAt: iso(61) },
      { keyHash: previous, usedAt: iso(65) }, // the previous value, 5 of its 10 minutes of grace
    ]);
    expect(await usesOf("expired")).toEqual({ usedAt: [iso(59)], lastUsedAt: iso(59) });
    expect(await usesOf("used-after-expiry")).toEqual({ usedAt: [], lastUsedAt: null });
    expect(await usesOf("rotated-in-past")).toEqual({ usedAt: [iso(65)], lastUsedAt: iso(65) });
  });

  it("ignores a use whose usedAt is not a date-time, and records the rest of the report", async () => {
    const createdAt = Date.now() - 60 * MINUTE;
    const keyHash = await createKey("odd-dates", createdAt);
    const other = await createKey("with-odd-dates", createdAt);
    const usedAt = new Date(createdAt + 10 * MINUTE).toISOString();
    const recorder = new KeyUsageRecorder(new KeyCommands(db), 60_000, silentLog);
    for (const odd of [
      "not a date",
      "",
      "1",
      "March 7, 2025",
      "2025-02-30T10:00:00Z",
      "2025-01-01T24:00:00Z",
      "2025-01-01T10:00:00+25:00",
      "2025-01-01",
      "2025-01-01T10:00Z",
      "+010000-01-01T00:00:00.000Z",
    ]) {
      await report(recorder, [
        { keyHash, usedAt: odd },
        { keyHash, usedAt: null as unknown as string },
      ]);
    }
    await report(recorder, [
      { keyHash, usedAt: "yesterday" },
      { keyHash: other, usedAt },
    ]);
    expect(await usesOf("odd-dates")).toEqual({ usedAt: [], lastUsedAt: null });
    expect(await usesOf("with-odd-dates")).toEqual({ usedAt: [usedAt], lastUsedAt: usedAt });
  });
});
