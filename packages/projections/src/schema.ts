import type { ColumnType } from "kysely";

/** Kysely view of the read model (see infra/migrations/0002_read_model.sql and later). */

/**
 * `api_keys` as this code reads and writes it. Its generated column `list_item` (migration 0009: the key's item of
 * `GET /api/api-keys` as JSON text) is left out: Postgres computes it, and only the list query reads it.
 */
export interface ApiKeysTable {
  key_id: string;
  organization_id: string;
  user_id: string;
  name: string;
  key_hash: string;
  masked_value: string;
  permissions: ColumnType<string[], string[], string[]>;
  created_at: ColumnType<Date, Date | string, Date | string>;
  expires_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  last_used_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  revoked_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  revoked_reason: string | null;
  previous_key_hash: string | null;
  previous_valid_until: ColumnType<Date | null, Date | string | null, Date | string | null>;
  rotated_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
}

export interface OrganizationMembersTable {
  organization_id: string;
  user_id: string;
  role: string;
  permissions: ColumnType<string[], string[], string[]>;
  updated_at: ColumnType<Date, Date | string, Date | string>;
}

export interface ReadModelTables {
  api_keys: ApiKeysTable;
  organization_members: OrganizationMembersTable;
}
