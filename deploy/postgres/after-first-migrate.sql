-- Optional hardening, once, after the first `notifier migrate`: the runtime
-- role keeps reading the migration bookkeeping (`run` checks that the schema
-- is current) but may no longer write it. The default privileges of roles.sql
-- gave it INSERT, UPDATE and DELETE on _sqlx_migrations as on every table.
--
--   psql -v ON_ERROR_STOP=1 -h db.example.internal -U notifier_migrate \
--        -d notifier -f deploy/postgres/after-first-migrate.sql
--
-- Run it as the migration role (the owner) or a superuser; other names with
-- -v runtime_role=….

\if :{?runtime_role}
\else
\set runtime_role notifier_runtime
\endif

REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM :"runtime_role";
