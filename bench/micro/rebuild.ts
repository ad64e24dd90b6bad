/**
 * Rebuilds the `api_keys` projection of `DATABASE_URL` from its log, in its own process, as `pnpm keyledger rebuild`
 * does (`rebuildProjection`), and prints the stats and the rebuilt tables' shape as JSON.
 */
import { API_KEYS_PROJECTION, rebuildProjection } from "@keyledger/projections";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";

const db = new Kysely<unknown>({
  dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 }) }),
});
try {
  const stats = await rebuildProjection(db, API_KEYS_PROJECTION);
  const shape = await sql<{ revoked: string; used: string }>`
    SELECT count(*) FILTER (WHERE revoked_at IS NOT NULL)::text AS revoked,
           count(*) FILTER (WHERE last_used_at IS NOT NULL)::text AS used
      FROM api_keys`.execute(db);
  process.stdout.write(
    `${JSON.stringify({ ...stats, revoked: Number(shape.rows[0]?.revoked), used: Number(shape.rows[0]?.used) })}\n`,
  );
} finally {
  await db.destroy();
}
