-- Read models of the `credits` projection: each user's credit balance, and the ledger's
-- history (usage charged, monthly resets, top-ups, subscription grants). Reservations are
-- holds, not transactions, so they appear in neither.
CREATE TABLE credit_balances (
    user_id    BLOB PRIMARY KEY,
    balance    INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE credit_transactions (
    id            BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL,
    position      INTEGER NOT NULL,
    type          TEXT NOT NULL,
    amount        INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    chat_id       BLOB,
    model         TEXT,
    reference     TEXT,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    created_at    TEXT NOT NULL
);
CREATE INDEX credit_transactions_user ON credit_transactions (user_id, position);
CREATE INDEX credit_transactions_user_type ON credit_transactions (user_id, type, position);
