-- Retention (`retention.keep`, `notifier purge`): when the personal data of
-- a row was purged (epoch ms); NULL while it is whole. An event's purge
-- covers its deliveries, the users they served and their attempt log.
-- Bounces and quarantined messages are purged by their own received_at.
ALTER TABLE events ADD COLUMN purged_at BIGINT;
ALTER TABLE quarantine ADD COLUMN purged_at BIGINT;
ALTER TABLE bounces ADD COLUMN purged_at BIGINT;

-- The purge looks for the oldest rows not yet purged: these indexes hold
-- only those, so its cost does not grow with the rows purged before.
CREATE INDEX events_unpurged ON events (received_at) WHERE purged_at IS NULL;
CREATE INDEX quarantine_unpurged ON quarantine (received_at) WHERE purged_at IS NULL;
CREATE INDEX bounces_unpurged ON bounces (received_at) WHERE purged_at IS NULL;
CREATE INDEX directory_log_unpurged ON directory_log (at) WHERE subject <> '';
