-- Messages consumed from other services (e.g. membership changes over NATS), recorded in the transaction that
-- applied them, so a redelivered message changes nothing.
CREATE TABLE inbox (
  message_id text PRIMARY KEY,
  subject text NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now()
);
