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

  it("reads the report's keys in one statement and records uses of live values only (a rotated-out value in its grace too)", async () => {
    const commands = new KeyCommands(db);
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId: org, userId: user, role: "owner", permissions: [], now: new Date() },
      },
      context(),
    );
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
        { keyHash: newHash(), maskedValue: "dtn****", gracePeriodSeconds, expiresAt: undefined },
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
});
