-- Read models of the `credits` projection: each user's credit balance, and the ledger's
-- history (usage charged, monthly resets, top-ups, subscription grants). Reservations are
-- holds, not transactions, so they appear in neither.
CREATE TABLE credit_balances (
    user_id    UUID PRIMARY KEY,
    balance    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE credit_transactions (
    id            UUID PRIMARY KEY,
    user_id       UUID NOT NULL,
    position      BIGINT NOT NULL,
    type          TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    chat_id       UUID,
    model         TEXT,
    reference     TEXT,
    input_tokens  BIGINT,
    output_tokens BIGINT,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, position);
CREATE INDEX credit_transactions_user_type ON credit_transactions (user_id, type, position);
