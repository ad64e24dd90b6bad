-- Tamper evidence: a SHA-256 hash chain over the log, one seal per event, in commit-safe order
-- (transaction id, global position). The sealer appends seals after the events commit, so writers never wait on
-- the chain: hash = SHA-256(previous seal's hash || RFC 8785 canonical form of the stored event).
CREATE TABLE event_seals (
  chain_index bigint PRIMARY KEY CHECK (chain_index > 0),
  global_position bigint NOT NULL UNIQUE,
  -- The sealed event's transaction id: where the sealer resumes, and what verify-log checks commit order against.
  transaction_id xid8 NOT NULL,
  -- The organization the event is about (its data's organizationId, else its metadata's): scopes the event API.
  organization_id text NOT NULL,
  hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  sealed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX event_seals_by_organization ON event_seals (organization_id, chain_index);

-- Projections of the log and where each has got to. A live projection's `snapshot` is the latest snapshot whose
-- committed events it reflects. While rebuilding, its shadow tables (schema projection_rebuild) hold the events
-- visible in `snapshot` and not in `previous_snapshot`, applied in global-position order up to `position`;
-- every batch updates this row in the transaction that writes the shadow rows.
CREATE TABLE projection_state (
  name text PRIMARY KEY,
  status text NOT NULL CHECK (status IN ('live', 'rebuilding')),
  snapshot pg_snapshot,
  previous_snapshot pg_snapshot,
  position bigint NOT NULL DEFAULT 0,
  events_applied bigint NOT NULL DEFAULT 0,
  rebuild_started_at timestamptz,
  rebuilt_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Shadow tables of projections being rebuilt; swapped into the live tables when a rebuild catches up.
CREATE SCHEMA projection_rebuild;
