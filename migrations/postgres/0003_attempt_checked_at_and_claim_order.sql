-- When the send-time re-check read the directory for this attempt (epoch
-- ms, taken before the read began): the directory as committed before this
-- moment is what allowed the send. NULL for attempts that read nothing
-- (general addresses, notices to a fixed address) and for older rows.
ALTER TABLE attempts ADD COLUMN checked_at BIGINT;

-- The claim reads due deliveries in (due_at, id) order and stops after a
-- batch: with id in the index that order comes from the index itself,
-- instead of sorting every pending row (a bulk ingest leaves thousands with
-- the same due_at).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (status, due_at, id);
