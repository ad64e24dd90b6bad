import type { ColumnType, Generated } from "kysely";

/** Kysely view of the tables this package owns (see infra/migrations). */
export interface EventsTable {
  global_position: Generated<string>;
  transaction_id: Generated<string>;
  event_id: string;
  stream_id: string;
  stream_version: number;
  event_type: string;
  data: ColumnType<unknown, string, string>;
  metadata: ColumnType<unknown, string, string>;
  occurred_at: ColumnType<Date, Date, Date>;
}

export interface CheckpointsTable {
  name: string;
  transaction_id: string;
  global_position: string;
  updated_at: Generated<Date>;
}

export interface SchemaMigrationsTable {
  version: string;
  applied_at: Generated<Date>;
}

export interface EventStoreTables {
  events: EventsTable;
  checkpoints: CheckpointsTable;
  schema_migrations: SchemaMigrationsTable;
}
