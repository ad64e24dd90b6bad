-- Rotation: a key's previous value keeps working until the end of its grace period.
ALTER TABLE api_keys
  ADD COLUMN previous_key_hash text,
  ADD COLUMN previous_valid_until timestamptz,
  ADD COLUMN rotated_at timestamptz;

CREATE UNIQUE INDEX api_keys_previous_key_hash ON api_keys (previous_key_hash) WHERE previous_key_hash IS NOT NULL;
