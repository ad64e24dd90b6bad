-- Read model: a projection of the log, updated in the writing transaction and rebuildable from the log.
CREATE TABLE api_keys (
  key_id uuid PRIMARY KEY,
  organization_id text NOT NULL,
  user_id text NOT NULL,
  name text NOT NULL,
  key_hash text NOT NULL UNIQUE,
  masked_value text NOT NULL,
  permissions text[] NOT NULL,
  created_at timestamptz NOT NULL,
  expires_at timestamptz,
  last_used_at timestamptz,
  revoked_at timestamptz,
  revoked_reason text
);

CREATE UNIQUE INDEX api_keys_live_name ON api_keys (organization_id, user_id, name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_live_by_org ON api_keys (organization_id, last_used_at DESC NULLS LAST, created_at DESC)
  WHERE revoked_at IS NULL;

CREATE TABLE organization_members (
  organization_id text NOT NULL,
  user_id text NOT NULL,
  role text NOT NULL CHECK (role IN ('owner', 'member')),
  permissions text[] NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (organization_id, user_id)
);
