import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import { sealPending } from "@keyledger/audit-log";
import type { Permission } from "@keyledger/domain";
import type { OrganizationAsOf } from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../../../test/support/database";
import { withDatabase } from "../../../test/support/global-setup";
import { readModelRows, writeKeyHistory } from "../../../test/support/key-history";
import { runCli } from "../src/cli";
import { COMMANDS } from "../src/commands/index";

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** Runs `pnpm keyledger <argv>` in-process with `env`, capturing what it prints. */
async function keyledger(argv: string[], env: Record<string, string>) {
  let stdout = "";
  let stderr = "";
  const out = vi.spyOn(process.stdout, "write").mockImplementation((chunk) => {
    stdout += String(chunk);
    return true;
  });
  const err = vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
    stderr += String(chunk);
    return true;
  });
  try {
    const code = await runCli(argv, env, COMMANDS);
    return { code, stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

const at = (iso: string, organizationId: string, actorUserId: string | null = null): CommandContext => ({
  now: new Date(iso),
  metadata: { actorUserId, organizationId, authMethod: actorUserId ? "jwt" : "internal", requestId: null },
});

async function sealEverything(db: Kysely<unknown>): Promise<void> {
  for (let attempt = 0; attempt < 600; attempt++) {
    await sealPending(db, { wait: true });
    const left = await sql<{ n: string }>`
      SELECT count(*)::text AS n FROM events e
       WHERE NOT EXISTS (SELECT 1 FROM event_seals s WHERE s.global_position = e.global_position)`.execute(db);
    if (Number(left.rows[0]?.n) === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error("the log did not get sealed");
}

describe("pnpm keyledger rebuild, verify-log, audit, events tail", () => {
  let scratch: ScratchDatabase;
  let db: Kysely<unknown>;
  let env: Record<string, string>;
  const org = "audited-org";
  beforeAll(async () => {
    scratch = await createScratchDatabase(12);
    db = scratch.db;
    env = { DATABASE_URL: scratch.url };
    await writeKeyHistory(db, {
      organizations: ["noise-a", "noise-b"],
      usersPerOrganization: 2,
      writers: 4,
      operationsPerWriter: 20,
      seed: 3,
    });
    // A known timeline for the audit, written through the API's write side with chosen times.
    const commands = new KeyCommands(db);
    const member = (userId: string, role: "owner" | "member", permissions: Permission[], when: string) =>
      commands.changeMember(
        { type: "ChangeMemberAccess", data: { organizationId: org, userId, role, permissions, now: new Date(when) } },
        at(when, org),
      );
    const create = (userId: string, name: string, permissions: Permission[], expiresAt: string | null, when: string) =>
      commands.createApiKey(
        {
          keyId: crypto.randomUUID(),
          organizationId: org,
          userId,
          name,
          keyHash: crypto.randomUUID(),
          maskedValue: "dtn****",
          permissions,
          expiresAt: expiresAt === null ? null : new Date(expiresAt),
        },
        at(when, org, userId),
      );
    await member("alice", "owner", [], "2024-01-01T00:00:00Z");
    await member("bob", "member", ["write:sandboxes", "read:volumes"], "2024-01-01T00:00:00Z");
    await create("alice", "ci", ["write:sandboxes"], null, "2024-01-02T00:00:00Z");
    await create("bob", "deploy", ["read:volumes"], "2024-03-01T00:00:00Z", "2024-01-02T00:00:00Z");
    await create("alice", "temp", [], "2024-01-10T00:00:00Z", "2024-01-03T00:00:00Z");
    await member("bob", "member", ["write:sandboxes"], "2024-02-01T00:00:00Z");
    await commands.revokeApiKey(
      { organizationId: org, userId: "alice", name: "ci" },
      "deleted",
      at("2024-02-15T00:00:00Z", org, "alice"),
    );
    await create("alice", "ci", ["write:sandboxes", "read:volumes"], null, "2024-04-01T00:00:00Z");
  });
  afterAll(async () => {
    await scratch?.drop();
  });

  it("audit replays an organization to a point in time", async () => {
    const audit = async (asOf: string) => {
      const result = await keyledger(["audit", "--org", org, "--as-of", asOf, "--json"], env);
      expect(result.code, result.stderr).toBe(0);
      return JSON.parse(result.stdout) as OrganizationAsOf;
    };
    const keys = (report: OrganizationAsOf) =>
      report.keys.map((k) => ({ name: k.name, userId: k.userId, state: k.state, validThen: k.validThen }));

    const january5 = await audit("2024-01-05T00:00:00Z");
    expect(keys(january5)).toEqual([
      { name: "ci", userId: "alice", state: "valid", validThen: true },
      { name: "deploy", userId: "bob", state: "valid", validThen: true },
      { name: "temp", userId: "alice", state: "valid", validThen: true },
    ]);
    expect(january5.keys.find((k) => k.name === "deploy")).toMatchObject({
      permissions: ["read:volumes"],
      ownerRole: "member",
      expiresAt: "2024-03-01T00:00:00.000Z",
    });
    expect(january5.members).toEqual([
      { userId: "alice", role: "owner", permissions: [] },
      { userId: "bob", role: "member", permissions: ["read:volumes", "write:sandboxes"] },
    ]);

    expect(keys(await audit("2024-01-15T00:00:00Z")).find((k) => k.name === "temp")).toMatchObject({
      state: "expired",
      validThen: false,
    });
    const february10 = await audit("2024-02-10T00:00:00Z");
    expect(february10.keys.find((k) => k.name === "deploy")).toMatchObject({
      state: "revoked",
      revokedReason: "permissions_unassigned",
      validThen: false,
    });
    expect(february10.keys.find((k) => k.name === "ci")?.validThen).toBe(true);
    expect(keys(await audit("2024-03-10T00:00:00Z")).filter((k) => k.validThen)).toEqual([]);
    const may = await audit("2024-05-01T00:00:00Z");
    expect(may.keys.filter((k) => k.name === "ci").map((k) => [k.state, k.permissions])).toEqual([
      ["revoked", ["write:sandboxes"]],
      ["valid", ["write:sandboxes", "read:volumes"]],
    ]);
    expect((await audit("2023-12-31T00:00:00Z")).keys).toEqual([]);

    const text = await keyledger(["audit", "--org", org, "--as-of", "2024-01-05T00:00:00Z"], env);
    expect(text.stdout).toMatch(/^organization audited-org as of 2024-01-05T00:00:00.000Z: \d+ event\(s\) replayed/);
    expect(text.stdout).toMatch(
      /\n {2}deploy +bob +member +read:volumes +2024-01-02T00:00:00.000Z +2024-03-01T00:00:00.000Z +valid +yes\n/,
    );
    expect((await keyledger(["audit", "--org", org, "--as-of", "yesterday"], env)).code).toBe(2);
    // An organization the log has never heard of (a mistyped id) is an error, not an empty report.
    for (const json of [[], ["--json"]]) {
      const unknown = await keyledger(["audit", "--org", "audited-orgg", ...json], env);
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toBe(
        'keyledger audit: the log has no events of organization "audited-orgg": check the id\n',
      );
      expect(unknown.stdout).toBe("");
    }
    expect((await keyledger(["audit", "--as-of", "2024-01-01"], env)).code).toBe(2);
  });

  it("audit refuses --as-of dates that do not exist instead of rolling them over", async () => {
    for (const asOf of [
      "2026-02-30",
      "2026-02-29T12:00:00Z",
      "2026-04-31T00:00:00Z",
      "2024-01-05T24:00:00Z",
      "2024-01-05T23:60Z",
      "2024-01-05T00:00:00+25:00",
    ]) {
      const result = await keyledger(["audit", "--org", org, "--as-of", asOf], env);
      expect(result.code, asOf).toBe(2);
      expect(result.stderr).toBe(`keyledger audit: --as-of must be an ISO 8601 time, got "${asOf}"\n`);
      expect(result.stdout).toBe("");
    }
    const leapDay = await keyledger(["audit", "--org", org, "--as-of", "2024-02-29", "--json"], env);
    expect(leapDay.code, leapDay.stderr).toBe(0);
    expect((JSON.parse(leapDay.stdout) as OrganizationAsOf).asOf).toBe("2024-02-29T00:00:00.000Z");
  });

  it("audit reads an --as-of time without a zone as UTC, whatever the host's zone", async () => {
    const zone = process.env.TZ;
    process.env.TZ = "Pacific/Kiritimati"; // UTC+14: a local reading would be 14 hours earlier
    try {
      for (const asOf of ["2024-01-02T00:00:00", "2024-01-02 00:00:00", "2024-01-02T00:00"]) {
        const result = await keyledger(["audit", "--org", org, "--as-of", asOf, "--json"], env);
        expect(result.code, result.stderr).toBe(0);
        const report = JSON.parse(result.stdout) as OrganizationAsOf;
        expect(report.asOf, asOf).toBe("2024-01-02T00:00:00.000Z");
        // alice's "ci" was created at 2024-01-02T00:00:00Z: at or before the time, so it is there.
        expect(report.keys.map((k) => k.name)).toContain("ci");
      }
    } finally {
      if (zone === undefined) delete process.env.TZ;
      else process.env.TZ = zone;
    }
  });

  it("reads options strictly: a switch takes no value, a value keeps every '=', nothing is given twice", async () => {
    const refused = async (argv: string[], message: string) => {
      const result = await keyledger(argv, env);
      expect(result.code, argv.join(" ")).toBe(2);
      expect(result.stderr).toBe(`keyledger ${argv[0]}: ${message}\n`);
      expect(result.stdout).toBe("");
    };
    // A switch followed by a word used to take it as its value and print text instead of JSON, exit 0.
    await refused(["verify-log", "--json", "extra"], 'unexpected argument "extra"');
    await refused(["audit", "--org", org, "--json", "yes"], 'unexpected argument "yes"');
    await refused(["verify-log", "--json=false"], "--json takes no value");
    await refused(["events", "tail", "--from-start=no"], "--from-start takes no value");
    await refused(["audit", "--org", org, "--org", "noise-a"], "--org is given more than once");
    await refused(["audit", "--org"], "--org needs a value");
    await refused(["audit", "--org", "--json"], "--org needs a value");
    await refused(["audit", "--org="], "--org is required");

    // Organization ids are the caller's: one with '=' in it, or one named "true", is audited as given.
    const commands = new KeyCommands(db);
    for (const organizationId of ["team=blue", "true"]) {
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: {
            organizationId,
            userId: "dana",
            role: "owner",
            permissions: [],
            now: new Date("2024-01-01T00:00:00Z"),
          },
        },
        at("2024-01-01T00:00:00Z", organizationId),
      );
      for (const argv of [["--org", organizationId], [`--org=${organizationId}`]]) {
        const result = await keyledger(["audit", ...argv, "--json"], env);
        expect(result.code, result.stderr).toBe(0);
        const report = JSON.parse(result.stdout) as OrganizationAsOf;
        expect(report.organizationId).toBe(organizationId);
        expect(report.members).toEqual([{ userId: "dana", role: "owner", permissions: [] }]);
      }
    }
  });

  it("rebuild leaves the read model as it was", async () => {
    const live = await readModelRows(db);
    const result = await keyledger(["rebuild", "--projection", "api_keys"], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(
      /^rebuilt api_keys: \d+ events in \d+\.\d\d s \(\d+ events\/s\); organization_members \d+ rows, api_keys \d+ rows\n$/,
    );
    expect(await readModelRows(db)).toEqual(live);
    const unknown = await keyledger(["rebuild", "--projection", "nope"], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown projection "nope" \(known: api_keys\)/);
  });

  it("events tail prints an organization's events as they commit, and nothing of other organizations", async () => {
    const child: ChildProcess = spawn(
      process.execPath,
      ["--import", "tsx", MAIN, "events", "tail", "--org", org, "--json"],
      { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    const waitFor = async (what: string, done: () => boolean) => {
      for (const deadline = Date.now() + 60_000; !done(); ) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    try {
      await waitFor("the tail to start", () => stderr.includes("following the log of audited-org"));
      const commands = new KeyCommands(db);
      const now = new Date().toISOString();
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: "noise-a", userId: "x", role: "owner", permissions: [], now: new Date() },
        },
        at(now, "noise-a"),
      );
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: org, userId: "carol", role: "member", permissions: [], now: new Date() },
        },
        at(now, org),
      );
      await waitFor("carol's event", () => stdout.includes('"carol"'));
      const lines = stdout
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { organizationId: string; type: string; data: { userId: string } });
      expect(lines).toEqual([
        expect.objectContaining({
          organizationId: org,
          type: "MemberAccessChanged",
          data: expect.objectContaining({ userId: "carol" }),
        }),
      ]);
    } finally {
      child.kill("SIGINT");
    }
    expect(await exited).toBe(0);
  });

  it("verify-log passes on the sealed log and names the first position that does not match", async () => {
    await sealEverything(db);
    const ok = await keyledger(["verify-log"], env);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(
      /^\d+ sealed event\(s\) verified; head: position \d+, chain index \d+, hash [0-9a-f]{64}; 0 committed event\(s\) not sealed yet\n$/,
    );

    const target = await sql<{ p: string }>`
      SELECT global_position::text AS p FROM events WHERE data->>'organizationId' = ${org}
       ORDER BY global_position LIMIT 1 OFFSET 2`.execute(db);
    const position = target.rows[0]?.p as string;
    await sql`UPDATE events SET data = jsonb_set(data, '{permissions}', '["delete:sandboxes"]') WHERE global_position = ${position}::bigint`.execute(
      db,
    );
    const tampered = await keyledger(["verify-log"], env);
    expect(tampered.code).toBe(1);
    expect(tampered.stderr).toMatch(
      new RegExp(
        `^keyledger verify-log: hash-mismatch: position ${position} \\(chain index \\d+\\) does not hash to its seal: the event was changed\n$`,
      ),
    );
    expect(tampered.stderr.split(`position ${position}`)).toHaveLength(2); // named once
    const json = await keyledger(["verify-log", "--json"], env);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, problem: { position, kind: "hash-mismatch" } });

    expect((await keyledger(["verify-log", "--from", "abc"], env)).code).toBe(2);
    for (const from of ["9999999999999999999", "9223372036854775808", "0", "-5"]) {
      const outOfRange = await keyledger(["verify-log", "--from", from], env);
      expect(outOfRange.code, from).toBe(2);
      expect(outOfRange.stderr).toBe(
        "keyledger verify-log: --from must be a log position (a positive integer up to 9223372036854775807)\n",
      );
    }
    const unsealed = await keyledger(["verify-log", "--from", "999999999"], env);
    expect(unsealed.code).toBe(2);
    expect(unsealed.stderr).toMatch(/position 999999999 is not sealed/);
  });
});

describe("pnpm keyledger verify-log on an event no hash can cover", () => {
  let scratch: ScratchDatabase;
  let env: Record<string, string>;
  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    env = { DATABASE_URL: scratch.url };
    const commands = new KeyCommands(scratch.db);
    for (const userId of ["u1", "u2", "u3"]) {
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: "jcs-org", userId, role: "member", permissions: [], now: new Date() },
        },
        at(new Date().toISOString(), "jcs-org"),
      );
    }
    await sealEverything(scratch.db);
  });
  afterAll(async () => {
    await scratch?.drop();
  });

  it("reports it at its position with kind unhashable, exit 1, in text and JSON", async () => {
    const target = await sql<{ p: string }>`
      SELECT global_position::text AS p FROM events ORDER BY global_position LIMIT 1 OFFSET 1`.execute(scratch.db);
    const position = target.rows[0]?.p as string;
    await sql`UPDATE events SET data = data || '{"x": 1e400}' WHERE global_position = ${position}::bigint`.execute(
      scratch.db,
    );
    const text = await keyledger(["verify-log"], env);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(
      /^1 sealed event\(s\) verified; head: position \d+, chain index 3, hash [0-9a-f]{64}; /,
    );
    expect(text.stderr).toMatch(
      new RegExp(
        `^keyledger verify-log: unhashable: position ${position} \\(chain index \\d+\\) cannot be hashed \\(JCS: Infinity is not a JSON number\\)`,
      ),
    );
    expect(text.stderr.split(`position ${position}`)).toHaveLength(2); // named once
    const json = await keyledger(["verify-log", "--json"], env);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      ok: false,
      eventsVerified: 1,
      problem: { position, kind: "unhashable" },
    });
  });
});

describe("pnpm keyledger on a database it cannot reach", () => {
  it("says what is wrong in one line, not that migrations are pending", async () => {
    for (const command of [["verify-log"], ["audit", "--org", "x"]]) {
      const result = await keyledger(command, { DATABASE_URL: "postgres://postgres:secret@127.0.0.1:1/keyledger" });
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `keyledger ${command[0]}: cannot read the database at 127.0.0.1:1/keyledger (DATABASE_URL): connect ECONNREFUSED 127.0.0.1:1\n`,
      );
    }
    const missing = await keyledger(["verify-log"], {
      DATABASE_URL: withDatabase(inject("adminDatabaseUrl"), "keyledger_none_such"),
    });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(
      /^keyledger verify-log: cannot read the database at .*: database "keyledger_none_such" does not exist\n$/,
    );
  });
});
