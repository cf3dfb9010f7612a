-- PostgreSQL for docker-compose.yml: one database per service, each owned by a login role of its
-- own that can reach nothing else (database per service: no service reads another's tables).
-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as the
-- superuser. The passwords are for this local stack only; mesh-config/compose.toml uses them.

CREATE ROLE weft_auth LOGIN PASSWORD 'weft_auth' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE weft_auth OWNER weft_auth;
REVOKE ALL ON DATABASE weft_auth FROM PUBLIC;

CREATE ROLE weft_user LOGIN PASSWORD 'weft_user' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE weft_user OWNER weft_user;
REVOKE ALL ON DATABASE weft_user FROM PUBLIC;

CREATE ROLE weft_order LOGIN PASSWORD 'weft_order' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE weft_order OWNER weft_order;
REVOKE ALL ON DATABASE weft_order FROM PUBLIC;

-- Each role owns its database's public schema, and nobody else creates objects there
-- (PostgreSQL 15 and later do this already; older ones let every role create there).
\connect weft_auth
ALTER SCHEMA public OWNER TO weft_auth;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
\connect weft_user
ALTER SCHEMA public OWNER TO weft_user;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
\connect weft_order
ALTER SCHEMA public OWNER TO weft_order;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
