-- The newest membership message applied for each member: the stream it came from (its name and creation time) and
-- its sequence there. JetStream redelivers a message that was not acknowledged (a nak after a database failure, an
-- ack timeout) after later ones, and replicas sharing the durable consumer apply messages concurrently, so a message
-- can arrive after a newer one about the same member; one at or below this sequence of the same stream changes
-- nothing (an old `.updated` must not give a removed member access back). Written in the transaction that applies
-- the message; the row lock orders concurrent messages of one member.
CREATE TABLE membership_message_positions (
  organization_id text NOT NULL,
  user_id text NOT NULL,
  stream text NOT NULL,
  stream_sequence bigint NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, user_id)
);
