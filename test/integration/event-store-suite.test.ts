import { createPostgresDatabase, openEmbeddedDatabase } from "@keyledger/api";
import { inject } from "vitest";
import { describeEventStore } from "../support/event-store-suite";

// The same suite on both databases the service runs on: the event store and migrations are shared unchanged.
describeEventStore("Postgres", async () =>
  createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 4 }),
);
describeEventStore("PGlite (embedded, in memory)", () => openEmbeddedDatabase({ dataDir: undefined }));
