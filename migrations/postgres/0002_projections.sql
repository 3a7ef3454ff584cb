-- Where each projection has got to in the global log. Moved in the same transaction as the
-- projection's rows.
CREATE TABLE projection_checkpoints (
    name       TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Read model of the `chats` projection.
CREATE TABLE chats (
    id               UUID        PRIMARY KEY,
    owner_id         UUID        NOT NULL,
    title            TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    last_activity_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX chats_by_owner_activity ON chats (owner_id, last_activity_at DESC, id);

CREATE TABLE messages (
    id         UUID        PRIMARY KEY,
    chat_id    UUID        NOT NULL,
    user_id    UUID        NOT NULL,
    role       TEXT        NOT NULL,
    content    TEXT        NOT NULL,
    type       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    -- The content folded for search (lower case, accents removed), as words.
    search     TSVECTOR    NOT NULL DEFAULT ''::TSVECTOR
);
CREATE INDEX messages_by_chat_created ON messages (chat_id, created_at, id);
CREATE INDEX messages_search ON messages USING GIN (search);
