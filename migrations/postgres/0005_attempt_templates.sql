-- Which templates rendered the mail of this attempt: `builtin` or the
-- `mail.templates_dir` path, and the first 12 hex characters of a SHA-256
-- over the files the mail kind uses (what `notifier templates check` prints
-- per kind). NULL for entries that rendered nothing (bounces and delays read
-- back) and for older rows.
ALTER TABLE attempts ADD COLUMN template_source TEXT;
ALTER TABLE attempts ADD COLUMN template_version TEXT;
