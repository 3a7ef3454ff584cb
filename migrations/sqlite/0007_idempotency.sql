-- Answers to POST requests sent with an Idempotency-Key, kept for 24 hours so that a retry
-- gets the first answer instead of a second effect. Not domain state (the event log is): a
-- cache of responses, safe to lose. `status` is NULL while the first request runs.
CREATE TABLE idempotency_keys (
    scope        TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BLOB,
    created_at   TEXT NOT NULL
);
