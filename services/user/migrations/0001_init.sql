-- Profiles of the people who use the mesh. Credentials live in weft-auth.
CREATE TABLE users (
    id           TEXT   PRIMARY KEY,
    -- Trimmed and lower-cased by the service, so UNIQUE means one profile per address.
    email        TEXT   NOT NULL UNIQUE,
    display_name TEXT   NOT NULL,
    role         TEXT   NOT NULL CHECK (role IN ('user', 'admin')),
    -- The caller's retry key for CreateUser; NULL for profiles made some other way.
    creation_key TEXT   UNIQUE,
    -- Microseconds since the Unix epoch.
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

-- ListUsers pages through (create_time, id) in ascending order.
CREATE INDEX users_create_time_id ON users (create_time, id);
