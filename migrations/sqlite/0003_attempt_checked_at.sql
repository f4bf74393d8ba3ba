-- When the send-time re-check read the directory for this attempt (epoch
-- ms, taken before the read began): the directory as committed before this
-- moment is what allowed the send. NULL for attempts that read nothing
-- (general addresses, notices to a fixed address) and for older rows.
ALTER TABLE attempts ADD COLUMN checked_at BIGINT;

