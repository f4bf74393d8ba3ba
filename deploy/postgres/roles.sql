-- PostgreSQL roles for zorginkoop-notifier (least privilege).
--
--   migration role  owns the database, its schema `public` and every table;
--                   the only role that runs `notifier migrate` (and `import`).
--   runtime role    `notifier run` and the operator commands: SELECT, INSERT,
--                   UPDATE, DELETE on the tables, USAGE and SELECT on the
--                   sequences. No DDL, no TRUNCATE, may not create anything.
--
-- Run once, for a new installation, as a superuser (or a role with CREATEROLE
-- and CREATEDB), connected to any other database:
--
--   psql -v ON_ERROR_STOP=1 -h db.example.internal -U postgres -d postgres \
--        -f deploy/postgres/roles.sql
--
-- The names default to notifier_migrate, notifier_runtime and the database
-- notifier; other names with -v migrate_role=… -v runtime_role=… -v database=….
-- This file sets no passwords (they would end up in shell history and logs);
-- set them afterwards, e.g. with psql's \password notifier_runtime, or use
-- certificate or peer authentication in pg_hba.conf. deploy/postgres/README.md
-- explains each grant and what to do for an existing installation.

\if :{?migrate_role}
\else
\set migrate_role notifier_migrate
\endif
\if :{?runtime_role}
\else
\set runtime_role notifier_runtime
\endif
\if :{?database}
\else
\set database notifier
\endif

CREATE ROLE :"migrate_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE :"runtime_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;

-- The database owner may create schemas in it and, from PostgreSQL 15 on,
-- owns the schema public (pg_database_owner).
CREATE DATABASE :"database" OWNER :"migrate_role";
-- Only these two roles (and superusers) may connect; PUBLIC may by default.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"runtime_role";

\connect :"database"

-- The migration role owns the schema on every version (up to 14 it belongs
-- to the bootstrap superuser), and nobody else may create objects in it
-- (PUBLIC could up to 14).
ALTER SCHEMA public OWNER TO :"migrate_role";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"runtime_role";

-- Every table and sequence the migration role creates from now on, by the
-- first `notifier migrate` and every later one, is usable by the runtime role.
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrate_role" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrate_role" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"runtime_role";
