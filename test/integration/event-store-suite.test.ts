import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPostgresDatabase, migrationDatabase, openEmbeddedDatabase } from "@keyledger/api";
import { AppendNotifier, appendToStream, pendingMigrations, runMigrations } from "@keyledger/event-store";
import pg from "pg";
import { describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { createScratchDatabase } from "../support/database";
import { describeEventStore } from "../support/event-store-suite";
import { withDatabase } from "../support/global-setup";
import { until } from "../support/until";

// The same suite on both databases the service runs on: the event store and migrations are shared unchanged.
describeEventStore("Postgres", async () =>
  createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 4 }),
);
describeEventStore("PGlite (embedded, in memory)", () => openEmbeddedDatabase({ dataDir: undefined }));

describe("appends notify the log's readers after they commit (Postgres)", () => {
  it("an append sends no NOTIFY inside its transaction; AppendNotifier sends one at once (or after delayMs), then one per interval", async () => {
    // A database of its own: notifications are per database, and other test files append (and notify) in the
    // run's shared one.
    const scratch = await createScratchDatabase(2);
    const db = scratch.db;
    const listener = new pg.Client({ connectionString: scratch.url });
    await listener.connect();
    try {
      const notified: number[] = [];
      listener.on("notification", (message) => {
        if (message.channel === "keyledger_events") notified.push(performance.now());
      });
      await listener.query("LISTEN keyledger_events");
      // No NOTIFY inside the appending transaction: it would serialize concurrent commits (see migration 0007).
      await db.transaction().execute(async (trx) => {
        await appendToStream(trx, uniqueId("stream"), 0, [{ type: "Opened", data: {} } as never], {
          actorUserId: "user-1",
          organizationId: "org-1",
          authMethod: "jwt",
          requestId: null,
        });
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(notified).toHaveLength(0);

      // A burst of commits: the first is announced at once, the rest together one interval later.
      const notifier = new AppendNotifier(db, { minIntervalMs: 300 });
      const burstAt = performance.now();
      for (let i = 0; i < 50; i++) notifier.appended();
      await until("the first notification", async () => (notified.length >= 1 ? true : undefined), 10_000);
      await until("the second notification", async () => (notified.length >= 2 ? true : undefined), 10_000);
      await new Promise((resolve) => setTimeout(resolve, 600));
      expect(notified).toHaveLength(2);
      expect((notified[1] as number) - burstAt).toBeGreaterThanOrEqual(290);

      // With delayMs, the first notification after a quiet spell waits that long.
      const delayed = new AppendNotifier(db, { delayMs: 250 });
      const delayedAt = performance.now();
      delayed.appended();
      await until("the delayed notification", async () => (notified.length >= 3 ? true : undefined), 10_000);
      expect((notified[2] as number) - delayedAt).toBeGreaterThanOrEqual(240);
      await delayed.close();

      // close() sends what is pending, and nothing after.
      notifier.appended();
      await notifier.close();
      await until("the pending notification", async () => (notified.length >= 4 ? true : undefined), 10_000);
      notifier.appended();
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(notified).toHaveLength(4);
    } finally {
      await listener.end();
      await scratch.drop();
    }
  });
});

describe("migrations run without the requests' statement timeout (Postgres)", () => {
  it("a migration longer than any request timeout completes on migrationDatabase, and fails on a request pool", async () => {
    const scratch = await createScratchDatabase(1);
    const dir = await mkdtemp(join(tmpdir(), "keyledger-migrations-"));
    // Longer than the client-side limit a request pool would add to a zero server timeout (2 s).
    await writeFile(join(dir, "0001_slow.sql"), "SELECT pg_sleep(2.5); CREATE TABLE slow_migration_done (x int);");
    const requests = createPostgresDatabase({
      connectionString: scratch.url,
      maxConnections: 1,
      statementTimeoutMs: 500,
    });
    const migrations = migrationDatabase(scratch.url);
    try {
      await expect(runMigrations(requests, dir)).rejects.toThrow(/statement timeout/);
      expect(await pendingMigrations(migrations, dir)).toEqual(["0001_slow"]);
      expect(await runMigrations(migrations, dir)).toEqual({ applied: ["0001_slow"], alreadyApplied: [] });
      expect(await pendingMigrations(requests, dir)).toEqual([]);
    } finally {
      await requests.destroy();
      await migrations.destroy();
      await rm(dir, { recursive: true, force: true });
      await scratch.drop();
    }
  });
});

describe("replicas started at the same moment migrate a fresh database together (Postgres)", () => {
  it("three concurrent runMigrations on an empty database all succeed, each migration applied once", async () => {
    const admin = new pg.Client({ connectionString: inject("adminDatabaseUrl") });
    await admin.connect();
    // Several fresh databases: the race (both `CREATE TABLE IF NOT EXISTS schema_migrations` pass the check) is
    // not lost on every try.
    for (let round = 0; round < 5; round++) {
      const name = `keyledger_fresh_${uniqueId("db").replace(/[^a-z0-9_]/gi, "_")}`;
      await admin.query(`CREATE DATABASE "${name}"`);
      const replicas = [0, 1, 2].map(() => migrationDatabase(withDatabase(inject("adminDatabaseUrl"), name)));
      try {
        const everyVersion = await pendingMigrations(replicas[0] as (typeof replicas)[number]);
        const results = await Promise.all(replicas.map((db) => runMigrations(db)));
        // Each version applied by exactly one replica, and every replica saw every version.
        expect(results.flatMap((result) => result.applied).sort()).toEqual(everyVersion);
        for (const result of results) {
          expect([...result.applied, ...result.alreadyApplied].sort()).toEqual(everyVersion);
        }
        expect(await pendingMigrations(replicas[1] as (typeof replicas)[number])).toEqual([]);
      } finally {
        await Promise.all(replicas.map((db) => db.destroy()));
        await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      }
    }
    await admin.end();
  });
});

describe("pendingMigrations tells 'no migrations table' from 'no database' (Postgres)", () => {
  it("lists every version when schema_migrations does not exist, and throws what else went wrong", async () => {
    const scratch = await createScratchDatabase(1);
    const dir = await mkdtemp(join(tmpdir(), "keyledger-migrations-"));
    await writeFile(join(dir, "0001_first.sql"), "CREATE TABLE first_done (x int);");
    const unreachable = createPostgresDatabase({ connectionString: "postgres://postgres@127.0.0.1:1/none" });
    const missing = createPostgresDatabase({
      connectionString: `${scratch.url}_missing`,
      maxConnections: 1,
    });
    try {
      await scratch.db.schema.dropTable("schema_migrations").execute();
      expect(await pendingMigrations(scratch.db, dir)).toEqual(["0001_first"]);
      await expect(pendingMigrations(unreachable, dir)).rejects.toThrow(/ECONNREFUSED/);
      await expect(pendingMigrations(missing, dir)).rejects.toThrow(/database ".*_missing" does not exist/);
    } finally {
      await unreachable.destroy();
      await missing.destroy();
      await rm(dir, { recursive: true, force: true });
      await scratch.drop();
    }
  });
});
