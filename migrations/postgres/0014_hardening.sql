-- Read model of the `credit_holds` projection (issue 18): every credit reservation still
-- held, with when it lapses (Unix milliseconds), so the sweeper that releases expired holds
-- finds them without loading every ledger. A new projection: it builds itself from the start
-- of the log on first run, holds reserved before this migration included.
CREATE TABLE credit_holds (
    reservation_id UUID PRIMARY KEY,
    user_id        UUID NOT NULL,
    amount         BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
CREATE INDEX credit_holds_by_expiry ON credit_holds (expires_at_ms);

-- The credit history's `release` rows (a hold that expired): how many credits it gave back.
ALTER TABLE credit_transactions ADD COLUMN released BIGINT;

-- (`reply_chunks` of 0010 also carries pieces of kind `streamed` since issue 18: how the
-- provider's stream of a reply ended, so a retried job finishes the reply without calling the
-- provider again. No schema change.)
