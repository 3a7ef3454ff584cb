-- Search partitioned by owner inside the full-text index itself. Migration 0008 indexed each
-- word once for all users plus the owner's key as a second column, so a search intersected the
-- word's postings across the whole table (870,000 entries for a common word at 1,000,000
-- messages) with the owner's, and every hit's text was then read back to be ranked. Here every
-- indexed term is the owner's key followed by the word (`u` + 32 hex digits + word), so a term's
-- postings are one user's messages only: a search reads just the searcher's matches, and FTS5's
-- bm25() ranks them with document frequencies that are the searcher's own.
--
-- The terms are built by the `chats` projection (Rust folds and splits the text), so the index
-- is contentless and written by the projection, not by triggers. Its rows are the messages'
-- rowids; contentless_delete lets the projection delete and replace them.
--
-- The read model is rebuilt from the event log: the rows are cleared and the projection's
-- checkpoint removed, so the next start replays the log into the new shape.
DROP TRIGGER messages_fts_insert;
DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_update;
DROP TABLE messages_fts;

DELETE FROM attachments;
DELETE FROM messages;
DELETE FROM chats;
DELETE FROM projection_checkpoints WHERE name = 'chats';

ALTER TABLE messages DROP COLUMN search_text;

CREATE VIRTUAL TABLE messages_fts USING fts5(
    terms,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
