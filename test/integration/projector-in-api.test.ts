import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type CommandContext, KeyCommands, parseApiConfig } from "@keyledger/api";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScratchDatabase, type ScratchDatabase } from "../support/database";

const API_MAIN = fileURLToPath(new URL("../../services/api/src/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../", import.meta.url));

describe("the projector inside the API process", () => {
  let scratch: ScratchDatabase;
  let api: ChildProcess | undefined;
  let dataDir: string;
  beforeAll(async () => {
    scratch = await createScratchDatabase(4);
    dataDir = await mkdtemp(join(tmpdir(), "keyledger-projector-in-api-"));
  });
  afterAll(async () => {
    if (api && api.exitCode === null && api.signalCode === null) api.kill("SIGKILL");
    await scratch?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("is on unless PROJECTOR_IN_API=false", () => {
    const env = {
      DATABASE_URL: "postgres://db/keyledger",
      OIDC_ISSUER: "https://id",
      OIDC_JWKS_URL: "https://id/jwks",
    };
    expect(parseApiConfig(env).projectorInApi).toBe(true);
    expect(parseApiConfig({ ...env, PROJECTOR_IN_API: "false" }).projectorInApi).toBe(false);
    expect(parseApiConfig({ ...env, PROJECTOR_IN_API: "1" }).projectorInApi).toBe(true);
    expect(() => parseApiConfig({ ...env, PROJECTOR_IN_API: "maybe" })).toThrow(
      /PROJECTOR_IN_API: must be true or false/,
    );
  });

  it("seals what commits while the API runs (pnpm start, no other projector)", async () => {
    let stderr = "";
    api = spawn(process.execPath, ["--import", "tsx", API_MAIN], {
      cwd: ROOT,
      env: {
        ...process.env,
        DATABASE_URL: scratch.url,
        KEYLEDGER_DATA_DIR: dataDir,
        PORT: "0",
        HOST: "127.0.0.1",
        LOG_LEVEL: "warn",
        NATS_URL: "",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    api.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const organizationId = `org-${randomUUID()}`;
    const context: CommandContext = {
      now: new Date(),
      metadata: { actorUserId: null, organizationId, authMethod: "internal", requestId: null },
    };
    const committed: string[] = [];
    // Written by this test process: only a projector in the API process can seal it.
    const commands = new KeyCommands(scratch.db, (events) => committed.push(...events.map((e) => e.globalPosition)));
    for (const deadline = Date.now() + 60_000; ; ) {
      const migrated = await sql<{ n: string }>`SELECT count(*)::text AS n FROM schema_migrations`
        .execute(scratch.db)
        .catch(() => ({ rows: [{ n: "0" }] }));
      if (Number(migrated.rows[0]?.n) > 0 && api.exitCode === null) break;
      if (Date.now() > deadline || api.exitCode !== null) throw new Error(`the API did not start: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await commands.changeMember(
      {
        type: "ChangeMemberAccess",
        data: { organizationId, userId: "sealed", role: "owner", permissions: [], now: new Date() },
      },
      context,
    );
    const position = committed[0] as string;
    for (const deadline = Date.now() + 60_000; ; ) {
      const seal = await sql`SELECT 1 FROM event_seals WHERE global_position = ${position}::bigint`.execute(scratch.db);
      if (seal.rows.length > 0) break;
      if (Date.now() > deadline || api.exitCode !== null) throw new Error(`not sealed: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const exited = new Promise<number | null>((resolve) => api?.once("exit", (code) => resolve(code)));
    api.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
