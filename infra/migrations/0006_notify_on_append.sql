-- Every append wakes the readers of the whole log (projector, relay, audit event streams) when its transaction
-- commits, whoever wrote it and however: a statement-level trigger instead of a pg_notify round trip per command.
-- Postgres delivers identical notifications of one transaction once.
CREATE FUNCTION keyledger_notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('keyledger_events', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER events_notify_appended
  AFTER INSERT ON events
  FOR EACH STATEMENT
  EXECUTE FUNCTION keyledger_notify_appended();
