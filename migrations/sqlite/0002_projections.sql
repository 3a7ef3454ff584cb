-- Where each projection has got to in the global log. Moved in the same transaction as the
-- projection's rows.
CREATE TABLE projection_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);

-- Read model of the `chats` projection.
CREATE TABLE chats (
    id               BLOB PRIMARY KEY,
    owner_id         BLOB NOT NULL,
    title            TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_activity_at TEXT NOT NULL
);
CREATE INDEX chats_by_owner_activity ON chats (owner_id, last_activity_at DESC, id);

CREATE TABLE messages (
    id         BLOB PRIMARY KEY,
    chat_id    BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    type       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX messages_by_chat_created ON messages (chat_id, created_at, id);
