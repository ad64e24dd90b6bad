import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EmbeddedDatabaseBusy, embeddedDatabaseHolder, openEmbeddedDatabase } from "@keyledger/api";
import { appendToStream, readStream, runMigrations } from "@keyledger/event-store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

describe("embedded database (PGlite in a data directory)", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "keyledger-embedded-"));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it("keeps the log across a restart and lets one opener at a time have the directory", async () => {
    const first = await openEmbeddedDatabase({ dataDir });
    await runMigrations(first);
    await first.transaction().execute((trx) =>
      appendToStream(trx, "stream-kept", 0, [{ type: "Opened", data: { kept: true } } as never], {
        actorUserId: null,
        organizationId: "org",
        authMethod: "internal",
        requestId: null,
      }),
    );
    expect(await embeddedDatabaseHolder(dataDir)).toBe(process.pid);
    await expect(openEmbeddedDatabase({ dataDir })).rejects.toBeInstanceOf(EmbeddedDatabaseBusy);
    await first.destroy();
    expect(await embeddedDatabaseHolder(dataDir)).toBeUndefined();

    const second = await openEmbeddedDatabase({ dataDir });
    try {
      expect((await runMigrations(second)).applied).toEqual([]);
      const read = await readStream(second, "stream-kept");
      expect(read.events.map((e) => e.data)).toEqual([{ kept: true }]);
    } finally {
      await second.destroy();
    }
  });

  it("takes over a lock left by a process that has died", async () => {
    const exited = spawnSync(process.execPath, ["-e", "process.exit(0)"]);
    await writeFile(join(dataDir, "embedded-database.lock"), JSON.stringify({ pid: exited.pid }));
    const db = await openEmbeddedDatabase({ dataDir });
    try {
      expect(JSON.parse(await readFile(join(dataDir, "embedded-database.lock"), "utf8")).pid).toBe(process.pid);
    } finally {
      await db.destroy();
    }
  });
});
