-- Read models of the `billing` projection: each account's Stripe customer, its subscriptions
-- and invoices, and every Stripe event the webhook received (with whether its effects have
-- been applied yet).
CREATE TABLE billing_customers (
    customer_id TEXT PRIMARY KEY,
    user_id     UUID NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE billing_subscriptions (
    subscription_id      TEXT PRIMARY KEY,
    user_id              UUID NOT NULL,
    status               TEXT NOT NULL,
    tier                 TEXT NOT NULL,
    current_period_end   TIMESTAMPTZ,
    cancel_at_period_end BOOLEAN NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX billing_subscriptions_user ON billing_subscriptions (user_id);

CREATE TABLE invoices (
    id              TEXT PRIMARY KEY,
    user_id         UUID NOT NULL,
    customer_id     TEXT NOT NULL,
    subscription_id TEXT,
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    invoice_url     TEXT,
    description     TEXT,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX invoices_user ON invoices (user_id, created_at);

CREATE TABLE stripe_events (
    event_id     TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ,
    outcome      TEXT
);
