-- How many times RCPT was refused with a 5.7.x policy reply in the current
-- attempt cycle: such a refusal is retried twice before it is permanent.
ALTER TABLE deliveries ADD COLUMN policy_rejections BIGINT NOT NULL DEFAULT 0;
