-- Signing keys of access and service tokens. The current key is the newest row that is not
-- retired; retired keys stay published until tokens they signed have expired.
-- private_key: standard base64 of the Ed25519 PKCS#8 v1 DER; public_x: base64url (no padding)
-- of the 32-byte public key; times in microseconds since the epoch.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    public_x TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

-- One credential per email. user_id is NULL while a registration is pending: the profile in
-- weft-user is created with creation_key, so a retry after a crash finds the same profile.
CREATE TABLE credentials (
    email TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    user_id TEXT UNIQUE,
    creation_key TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A chain of refresh tokens descending from one sign-in; revoked as a whole on reuse or logout.
CREATE TABLE refresh_families (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE INDEX refresh_families_user_id ON refresh_families (user_id);

-- Refresh tokens by the hex SHA-256 of the token; the tokens themselves are never stored.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES refresh_families (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
