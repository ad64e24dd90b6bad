import { type Kysely, sql } from "kysely";

/** Counts of events seeded, by kind (`used`: `KeyUsed` events). */
export type SeededHistory = { members: number; created: number; used: number; revoked: number; total: number };

const USERS_PER_ORGANIZATION = 10;
const KEYS_PER_ORGANIZATION = 100;
/** Each key is used this many times (one `KeyUsed` per 10 s throttle window it was used in). */
const USES_PER_KEY = 5;
/** Every fifth key is revoked. */
const REVOKED_EVERY = 5;
const CHUNK = 20_000;

const ISO = sql`'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`;

/**
 * Seeds a mixed history of about `total` events with `INSERT ... SELECT generate_series` (no read model: a rebuild
 * computes it), shaped like the API's events:
 * - `MemberAccessChanged` for every owner (10 per organization, 100 keys per organization),
 * - per key: `KeyCreated` (version 1), 5 × `KeyUsed` (versions 2-6) and, for every fifth key, `KeyRevoked` (7);
 * so about 1 event in 6 creates a row and the rest update one.
 */
export async function seedHistory(
  db: Kysely<unknown>,
  total: number,
  onProgress?: (message: string) => void,
): Promise<SeededHistory> {
  const perKey = 1 + USES_PER_KEY + 1 / REVOKED_EVERY + USERS_PER_ORGANIZATION / KEYS_PER_ORGANIZATION;
  const created = Math.floor(total / perKey);
  const revoked = Math.ceil(created / REVOKED_EVERY);
  const organizations = Math.ceil(created / KEYS_PER_ORGANIZATION);
  const members = organizations * USERS_PER_ORGANIZATION;
  // Key i belongs to organization i % organizations and to user (i / organizations) % 10 of it.
  await sql`
    INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
    SELECT gen_random_uuid(), 'member:org-' || (m / ${USERS_PER_ORGANIZATION}::int) || '/user-' ||
             (m % ${USERS_PER_ORGANIZATION}::int), 1, 'MemberAccessChanged',
           jsonb_build_object('organizationId', 'org-' || (m / ${USERS_PER_ORGANIZATION}::int),
                              'userId', 'user-' || (m % ${USERS_PER_ORGANIZATION}::int), 'role', 'owner',
                              'permissions', '[]'::jsonb, 'changedAt', to_char(now() AT TIME ZONE 'UTC', ${ISO})),
           jsonb_build_object('actorUserId', NULL, 'organizationId', 'org-' || (m / ${USERS_PER_ORGANIZATION}::int),
                              'authMethod', 'internal', 'requestId', NULL),
           now()
      FROM generate_series(0, ${members - 1}::int) AS m`.execute(db);
  for (let start = 0; start < created; start += CHUNK) {
    const end = Math.min(created, start + CHUNK) - 1;
    await sql`
      INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
      SELECT gen_random_uuid(), 'api_key:' || k.org || '/' || k.usr || '/key-' || k.i, 1, 'KeyCreated',
             jsonb_build_object('keyId', gen_random_uuid(), 'organizationId', k.org, 'userId', k.usr,
                                'name', 'key-' || k.i, 'keyHash', encode(sha256(('bench-key-' || k.i)::bytea), 'hex'),
                                'maskedValue', 'dtn********************' || lpad(to_hex(k.i % 4096), 3, '0'),
                                'permissions', '["write:sandboxes"]'::jsonb,
                                'createdAt', to_char(now() AT TIME ZONE 'UTC', ${ISO}), 'expiresAt', NULL),
             jsonb_build_object('actorUserId', k.usr, 'organizationId', k.org, 'authMethod', 'jwt', 'requestId', NULL),
             now()
        FROM (SELECT i, 'org-' || (i % ${organizations}::int) AS org,
                     'user-' || ((i / ${organizations}::int) % ${USERS_PER_ORGANIZATION}::int) AS usr
                FROM generate_series(${start}::int, ${end}::int) AS i) AS k`.execute(db);
    onProgress?.(`KeyCreated ${end + 1}/${created}`);
  }
  // Uses and revocations refer to the created keys' ids, read back from their KeyCreated events.
  const streams = (first: number, last: number, every: number) => sql`
    SELECT 'api_key:org-' || (i % ${organizations}::int) || '/user-' ||
           ((i / ${organizations}::int) % ${USERS_PER_ORGANIZATION}::int) || '/key-' || i
      FROM generate_series(${first}::int, ${last}::int) AS i WHERE i % ${every}::int = 0`;
  for (let start = 0; start < created; start += CHUNK) {
    const end = Math.min(created, start + CHUNK) - 1;
    await sql`
      INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
      SELECT gen_random_uuid(), c.stream_id, 1 + u, 'KeyUsed',
             jsonb_build_object('keyId', c.data->'keyId', 'organizationId', c.data->'organizationId',
                                'userId', c.data->'userId', 'name', c.data->'name',
                                'usedAt', to_char((now() + u * interval '10 seconds') AT TIME ZONE 'UTC', ${ISO})),
             c.metadata, now()
        FROM events c CROSS JOIN generate_series(1, ${USES_PER_KEY}::int) AS u
       WHERE c.event_type = 'KeyCreated' AND c.stream_id IN (${streams(start, end, 1)})
       ORDER BY c.global_position, u`.execute(db);
    await sql`
      INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, occurred_at)
      SELECT gen_random_uuid(), c.stream_id, ${2 + USES_PER_KEY}::int, 'KeyRevoked',
             jsonb_build_object('keyId', c.data->'keyId', 'organizationId', c.data->'organizationId',
                                'userId', c.data->'userId', 'name', c.data->'name', 'keyHash', c.data->'keyHash',
                                'previousKeyHash', NULL, 'reason', 'deleted',
                                'revokedAt', to_char(now() AT TIME ZONE 'UTC', ${ISO})),
             c.metadata, now()
        FROM events c
       WHERE c.event_type = 'KeyCreated' AND c.stream_id IN (${streams(start, end, REVOKED_EVERY)})`.execute(db);
    onProgress?.(`KeyUsed and KeyRevoked for ${end + 1}/${created} keys`);
  }
  await sql`ANALYZE events`.execute(db);
  const used = created * USES_PER_KEY;
  return { members, created, used, revoked, total: members + created + used + revoked };
}
