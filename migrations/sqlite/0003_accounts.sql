-- Read models of the `accounts` projection: users and their sign-in sessions.
CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    image_url     TEXT,
    role          TEXT NOT NULL,
    tier          TEXT NOT NULL DEFAULT 'free',
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- Sessions by the SHA-256 of their bearer token (the token itself is never stored).
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    session_id BLOB NOT NULL UNIQUE,
    user_id    BLOB NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
