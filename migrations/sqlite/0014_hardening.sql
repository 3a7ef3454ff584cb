-- Read model of the `credit_holds` projection (issue 18): every credit reservation still
-- held, with when it lapses (Unix milliseconds), so the sweeper that releases expired holds
-- finds them without loading every ledger. A new projection: it builds itself from the start
-- of the log on first run, holds reserved before this migration included.
CREATE TABLE credit_holds (
    reservation_id BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL,
    amount         INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX credit_holds_by_expiry ON credit_holds (expires_at_ms);

-- The credit history's `release` rows (a hold that expired): how many credits it gave back.
ALTER TABLE credit_transactions ADD COLUMN released INTEGER;

-- The text of each reply as it streams (issue 18), kept by the worker on the embedded default
-- (PostgreSQL keeps it in `reply_chunks`): a job attempt after one that got past its first
-- token (a crash, a retry) finishes the reply from it rather than calling the provider again.
-- `outcome` says how the provider's stream ended, once it did. Kept a day after the last write.
CREATE TABLE reply_drafts (
    reply_id      BLOB PRIMARY KEY,
    text          TEXT NOT NULL,
    outcome       TEXT,
    updated_at_ms INTEGER NOT NULL
);
