-- Privacy (issue 16): one data key per user for the personal fields of event payloads.
--
-- `wrapped` is the user's 256-bit data key sealed (AES-256-GCM) under the master key named by
-- `master_key_id` (from CONFAB_ENCRYPTION_KEY); `key_id` names the data key in every field it
-- sealed. Erasing the user sets `wrapped` to NULL (crypto-shredding): their fields read as
-- erased from then on. The row stays, so that the key is known destroyed rather than missing.
CREATE TABLE data_keys (
    key_id        BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL UNIQUE,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB,
    created_at    TEXT NOT NULL,
    destroyed_at  TEXT
);

-- Whose answer an idempotency record keeps, so that erasing a user deletes their answers.
ALTER TABLE idempotency_keys ADD COLUMN user_id BLOB;
CREATE INDEX idempotency_keys_by_user ON idempotency_keys (user_id);
