-- Read models of the `providers` projection: LLM providers and users' keys for them (keys
-- encrypted, as in the events; only the masked hint is ever returned).
CREATE TABLE llm_providers (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    api_endpoint TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_llm_configs (
    user_id       UUID NOT NULL,
    provider_id   UUID NOT NULL,
    encrypted_key TEXT NOT NULL,
    key_hint      TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, provider_id)
);
