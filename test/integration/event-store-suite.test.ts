import { createPostgresDatabase, openEmbeddedDatabase } from "@keyledger/api";
import { appendToStream } from "@keyledger/event-store";
import pg from "pg";
import { describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { describeEventStore } from "../support/event-store-suite";
import { until } from "../support/until";

// The same suite on both databases the service runs on: the event store and migrations are shared unchanged.
describeEventStore("Postgres", async () =>
  createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 4 }),
);
describeEventStore("PGlite (embedded, in memory)", () => openEmbeddedDatabase({ dataDir: undefined }));

describe("appends notify the log's readers (Postgres)", () => {
  it("an append that does not call notifyAppended still notifies keyledger_events when it commits", async () => {
    const url = inject("databaseUrl");
    const listener = new pg.Client({ connectionString: url });
    await listener.connect();
    const db = createPostgresDatabase({ connectionString: url, maxConnections: 2 });
    try {
      const notified: string[] = [];
      listener.on("notification", (message) => notified.push(message.channel));
      await listener.query("LISTEN keyledger_events");
      let appendedBeforeCommit = 0;
      await db.transaction().execute(async (trx) => {
        await appendToStream(trx, uniqueId("stream"), 0, [{ type: "Opened", data: {} } as never], {
          actorUserId: "user-1",
          organizationId: "org-1",
          authMethod: "jwt",
          requestId: null,
        });
        await new Promise((resolve) => setTimeout(resolve, 200));
        appendedBeforeCommit = notified.length;
      });
      await until("the notification", async () => (notified.length > 0 ? true : undefined), 10_000);
      expect(appendedBeforeCommit).toBe(0);
      expect(notified).toContain("keyledger_events");
    } finally {
      await listener.end();
      await db.destroy();
    }
  });
});
