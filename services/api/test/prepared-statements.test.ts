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

  it("find a key by its current or previous value's hash through the indexes, never a scan (no statistics yet)", async () => {
    await sql`INSERT INTO api_keys (key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at,
                                    previous_key_hash, previous_valid_until)
              SELECT gen_random_uuid(), 'org', 'user', 'bulk-' || g, md5(g::text) || md5((g + 1)::text), 'dtn***', '{}',
                     now(), CASE WHEN g % 2 = 0 THEN md5((g + 2)::text) || md5(g::text) END, now() + interval '1 hour'
                FROM generate_series(1, 5000) g`.execute(db);
    const current = (await sql<{ h: string }>`SELECT md5('17') || md5('18') AS h`.execute(db)).rows[0]?.h as string;
    const previous = (await sql<{ h: string }>`SELECT md5('20') || md5('18') AS h`.execute(db)).rows[0]?.h as string;
    await db.transaction().execute(async (trx) => {
      // The session's table statistics not yet reported (they only grow within a transaction).
      const scans = async () => {
        const result = await sql<{ seq_scan: string }>`
          SELECT seq_scan::text AS seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'api_keys'`.execute(trx);
        return Number(result.rows[0]?.seq_scan ?? 0);
      };
      const before = await scans();
      expect((await findApiKeyByHash(trx, current))?.name).toBe("bulk-17");
      expect((await findApiKeyByHash(trx, previous))?.name).toBe("bulk-18");
      expect(await findApiKeyByHash(trx, "c".repeat(64))).toBeUndefined();
      expect((await scans()) - before).toBe(0);
    });
  });
});
