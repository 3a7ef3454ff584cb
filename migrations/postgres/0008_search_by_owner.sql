-- Search scoped to one user inside the GIN index: every message's tsvector also holds its
-- owner's key as a lexeme (`u` and the owner id's 32 hex digits), and a search requires it, so
-- GIN intersects the word's postings with the owner's instead of fetching the word's matches
-- across all users and filtering them afterwards. Queries still check the owner by join.
UPDATE messages m
SET search = m.search || array_to_tsvector(ARRAY['u' || replace(c.owner_id::TEXT, '-', '')])
FROM chats c
WHERE c.id = m.chat_id;
