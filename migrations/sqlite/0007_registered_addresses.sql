-- Addresses as registered. `users.email` and `deliveries.address` stay
-- lower-cased: every comparison, the one-mail-per-address grouping and
-- `claimed_address` use them. What a mail is sent to (RCPT TO and the To:
-- header) is the form the portal registered, because a local part may be
-- case-sensitive (RFC 5321 §2.4).
--
-- users.email_registered: the user's address as `gebruiker.bijgewerkt`,
-- `gebruiker.emailadres_gewijzigd` or `directory import` gave it. NULL in
-- rows written before this migration (the lower-cased form is used).
--
-- deliveries.address_registered: the address as registered when the
-- delivery was planned. Sending takes the form the directory holds at the
-- send for the users a delivery serves; this column is for a delivery that
-- serves nobody (the security notice to an old address). NULL in older
-- rows and in deliveries split off at the send (`address` is used).
--
-- (0006 is taken by another change.)
ALTER TABLE users ADD COLUMN email_registered TEXT;
ALTER TABLE deliveries ADD COLUMN address_registered TEXT;
