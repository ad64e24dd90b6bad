-- Appends no longer notify inside their own transaction (migration 0006's statement trigger): Postgres serializes
-- every committing transaction that sent a NOTIFY on one cluster-wide lock held until its commit record is flushed,
-- so concurrent commands committed one WAL flush at a time instead of sharing flushes (group commit). Writers now
-- notify after they commit, coalesced (`AppendNotifier` in the event store); the readers also poll.
DROP TRIGGER events_notify_appended ON events;
DROP FUNCTION keyledger_notify_appended();
