-- How many times RCPT was refused with a 5.7.x policy reply in the current
-- attempt cycle: such a refusal is retried twice before it is permanent.
ALTER TABLE deliveries ADD COLUMN policy_rejections BIGINT NOT NULL DEFAULT 0;

-- The address a delivery has taken for its (event, kind, about): set when it
-- is planned, moved when the send-time re-check finds the users at another
-- address, cleared when it is cancelled. The unique index makes "is this
-- address already served?" and "take it" one atomic step: two deliveries
-- whose users moved to one shared address cannot both take it.
ALTER TABLE deliveries ADD COLUMN claimed_address TEXT;
UPDATE deliveries SET claimed_address = COALESCE(sent_to, address)
WHERE status <> 'cancelled'
  AND id = (SELECT MIN(o.id) FROM deliveries o
            WHERE o.event_id = deliveries.event_id AND o.kind = deliveries.kind
              AND o.about = deliveries.about AND o.status <> 'cancelled'
              AND COALESCE(o.sent_to, o.address) = COALESCE(deliveries.sent_to, deliveries.address));
CREATE UNIQUE INDEX deliveries_claimed_address ON deliveries (event_id, kind, about, claimed_address);
