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
    updated_at TEXT NOT NULL,
    -- The content folded for search (lower case, accents removed), indexed by messages_fts.
    search_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_by_chat_created ON messages (chat_id, created_at, id);

-- Full-text index over search_text, kept in step with messages by the triggers below.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    search_text,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, search_text) VALUES (new.rowid, new.search_text);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_text)
    VALUES ('delete', old.rowid, old.search_text);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF search_text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_text)
    VALUES ('delete', old.rowid, old.search_text);
    INSERT INTO messages_fts (rowid, search_text) VALUES (new.rowid, new.search_text);
END;
