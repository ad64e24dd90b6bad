import { sql } from "kysely";
import { describe, expect, inject, it } from "vitest";
import { createPostgresDatabase } from "../src/database";

async function jitSetting(connectionString: string): Promise<string | undefined> {
  const db = createPostgresDatabase({ connectionString, maxConnections: 1 });
  try {
    return (await sql<{ jit: string }>`SHOW jit`.execute(db)).rows[0]?.jit;
  } finally {
    await db.destroy();
  }
}

describe("createPostgresDatabase sessions", () => {
  it("do not JIT-compile statements (short statements, and young tables' estimates are far off)", async () => {
    expect(await jitSetting(inject("adminDatabaseUrl"))).toBe("off");
  });

  it("take the options a DATABASE_URL sets itself instead", async () => {
    const url = new URL(inject("adminDatabaseUrl"));
    url.searchParams.set("options", "-c jit=on");
    expect(await jitSetting(url.toString())).toBe("on");
  });
});
