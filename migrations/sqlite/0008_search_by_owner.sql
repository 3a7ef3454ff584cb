-- Search scoped to one user inside the full-text index. Matching a word first and filtering by
-- owner afterwards costs as much as the word's matches across all users (most messages, for a
-- common word); with the owner's key as a second indexed column, FTS5 intersects the word's
-- postings with the owner's and touches only that user's messages.
ALTER TABLE messages ADD COLUMN owner_key TEXT NOT NULL DEFAULT '';
UPDATE messages SET owner_key = COALESCE(
    (SELECT 'u' || lower(hex(c.owner_id)) FROM chats c WHERE c.id = messages.chat_id), '');

DROP TRIGGER messages_fts_insert;
DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_update;
DROP TABLE messages_fts;

CREATE VIRTUAL TABLE messages_fts USING fts5(
    search_text,
    owner_key,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, search_text, owner_key)
    VALUES (new.rowid, new.search_text, new.owner_key);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_text, owner_key)
    VALUES ('delete', old.rowid, old.search_text, old.owner_key);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF search_text, owner_key ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_text, owner_key)
    VALUES ('delete', old.rowid, old.search_text, old.owner_key);
    INSERT INTO messages_fts (rowid, search_text, owner_key)
    VALUES (new.rowid, new.search_text, new.owner_key);
END;
