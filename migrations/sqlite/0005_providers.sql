-- Read models of the `providers` projection: LLM providers and users' keys for them (keys
-- encrypted, as in the events; only the masked hint is ever returned).
CREATE TABLE llm_providers (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL,
    api_endpoint TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE user_llm_configs (
    user_id       BLOB NOT NULL,
    provider_id   BLOB NOT NULL,
    encrypted_key TEXT NOT NULL,
    key_hint      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, provider_id)
);
