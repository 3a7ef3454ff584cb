-- Read model of the `settings` projection: one row per user who changed a setting; the API
-- answers defaults for the others.
CREATE TABLE settings (
    user_id          BLOB PRIMARY KEY,
    model            TEXT NOT NULL,
    theme            TEXT NOT NULL,
    context          TEXT NOT NULL,
    runtime          TEXT NOT NULL,
    response_style   TEXT NOT NULL,
    always_show_code INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
);
