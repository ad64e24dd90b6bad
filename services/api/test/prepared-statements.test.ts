import { PREPARED_STATEMENT, runMigrations } from "@keyledger/event-store";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createPostgresDatabase } from "../src/database";
import { findApiKeyByHash } from "../src/read-model-queries";

describe("statements marked PREPARED_STATEMENT", () => {
  const admin = createPostgresDatabase({ connectionString: inject("adminDatabaseUrl"), maxConnections: 1 });
  const name = `keyledger_prepared_${Date.now()}`;
  let db: ReturnType<typeof createPostgresDatabase>;
  beforeAll(async () => {
    await sql.raw(`CREATE DATABASE "${name}"`).execute(admin);
    const url = new URL(inject("adminDatabaseUrl"));
    url.pathname = `/${name}`;
    db = createPostgresDatabase({ connectionString: url.toString(), maxConnections: 1 });
    await runMigrations(db);
  });
  afterAll(async () => {
    await db?.destroy();
    await sql.raw(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).execute(admin);
    await admin.destroy();
  });

  it("run as named prepared statements on the pool's connection; unmarked ones do not", async () => {
    const marked = (n: number) => sql<{ n: number }>`${sql.raw(PREPARED_STATEMENT)} SELECT ${n}::int AS n`;
    expect((await marked(1).execute(db)).rows).toEqual([{ n: 1 }]);
    expect((await marked(2).execute(db)).rows).toEqual([{ n: 2 }]);
    await sql`SELECT 3 AS unmarked`.execute(db);
    const prepared = await sql<{ statement: string }>`SELECT statement FROM pg_prepared_statements`.execute(db);
    expect(prepared.rows.filter((r) => r.statement.includes("keyledger:prepared")).length).toBe(1);
    expect(prepared.rows.some((r) => r.statement.includes("unmarked"))).toBe(false);
  });

  it("keep working after a migration adds a column to a table they read", async () => {
    const hash = "a".repeat(64);
    await sql`INSERT INTO api_keys (key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at)
              VALUES (gen_random_uuid(), 'org', 'user', 'k', ${hash}, 'dtn***', '{}', now())`.execute(db);
    expect((await findApiKeyByHash(db, hash))?.name).toBe("k");
    await sql`ALTER TABLE api_keys ADD COLUMN added_later text`.execute(db);
    expect((await findApiKeyByHash(db, hash))?.name).toBe("k");
    expect(await findApiKeyByHash(db, "b".repeat(64))).toBeUndefined();
  });
});
