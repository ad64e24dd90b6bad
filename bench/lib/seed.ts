import { randomBytes, randomInt } from "node:crypto";
import { hashKeyValue, KEY_RANDOM_BYTES, keyValueFromRandomBytes, maskKeyValue } from "@keyledger/domain";
import { type Kysely, sql } from "kysely";

export type SeedKeysOptions = {
  count: number;
  /** Every key in this organization; omitted: spread over `count / 100` organizations (100 keys each). */
  organizationId?: string;
  /** Owners per organization (keys are spread over them). */
  usersPerOrganization?: number;
  /** How many key values to return (chosen at random), e.g. to present them to the API. */
  sample?: number;
  batchSize?: number;
  onProgress?: (done: number) => void;
};

/**
 * Bulk-seeds `count` live keys the way the API would have created them: one `KeyCreated` event per key (stream
 * `api_key:<org>/<user>/<name>`, version 1) with an `INSERT ... SELECT` over arrays of hashes (the values are
 * generated here, since their checksum and SHA-256 are computed in Node), and then the read model rows with an
 * `INSERT ... SELECT` from those events (what `applyToReadModel` does for `KeyCreated`). Names are `key-<i>`.
 */
export async function seedKeys(db: Kysely<unknown>, options: SeedKeysOptions): Promise<{ sampleValues: string[] }> {
  const batchSize = options.batchSize ?? 25_000;
  const users = options.usersPerOrganization ?? 10;
  const organizations = options.organizationId ? 1 : Math.max(1, Math.ceil(options.count / 100));
  const wanted = new Set<number>();
  const sampleSize = Math.min(options.sample ?? 0, options.count);
  while (wanted.size < sampleSize) wanted.add(randomInt(options.count));
  const sampleValues: string[] = [];
  const [{ max: before } = { max: null }] = (
    await sql<{ max: string | null }>`SELECT max(global_position)::text AS max FROM events`.execute(db)
  ).rows;
  for (let start = 0; start < options.count; start += batchSize) {
    const n = Math.min(batchSize, options.count - start);
    const hashes: string[] = new Array(n);
    const masked: string[] = new Array(n);
    for (let j = 0; j < n; j++) {
      const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
      hashes[j] = hashKeyValue(value);
      masked[j] = maskKeyValue(value);
      if (wanted.has(start + j)) sampleValues.push(value);
    }
    await sql`
      INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
      SELECT gen_random_uuid(), 'api_key:' || k.org || '/' || k.usr || '/' || k.name, 1, 'KeyCreated',
             jsonb_build_object('keyId', gen_random_uuid(), 'organizationId', k.org, 'userId', k.usr,
                                'name', k.name, 'keyHash', k.hash, 'maskedValue', k.masked,
                                'permissions', jsonb_build_array('write:sandboxes'),
                                'createdAt', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                'expiresAt', NULL),
             jsonb_build_object('actorUserId', k.usr, 'organizationId', k.org, 'authMethod', 'jwt',
                                'requestId', NULL),
             now()
        FROM (SELECT h.hash, h.masked,
                     coalesce(${options.organizationId ?? null}::text,
                              'org-' || ((${start}::int + h.n - 1) % ${organizations}::int)) AS org,
                     'user-' || (((${start}::int + h.n - 1) / ${organizations}::int) % ${users}::int) AS usr,
                     'key-' || (${start}::int + h.n - 1) AS name
                FROM unnest(${hashes}::text[], ${masked}::text[]) WITH ORDINALITY AS h(hash, masked, n)) AS k`.execute(
      db,
    );
    options.onProgress?.(start + n);
  }
  await sql`
    INSERT INTO api_keys (key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at,
                          expires_at, last_used_at, revoked_at, revoked_reason)
    SELECT (data->>'keyId')::uuid, data->>'organizationId', data->>'userId', data->>'name', data->>'keyHash',
           data->>'maskedValue', ARRAY(SELECT jsonb_array_elements_text(data->'permissions')),
           (data->>'createdAt')::timestamptz, NULL, NULL, NULL, NULL
      FROM events
     WHERE event_type = 'KeyCreated' AND global_position > ${before ?? "0"}::bigint`.execute(db);
  await sql`ANALYZE events`.execute(db);
  await sql`ANALYZE api_keys`.execute(db);
  return { sampleValues };
}
