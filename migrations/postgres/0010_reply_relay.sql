-- The relay of live LLM replies between processes: the worker that generates a reply appends its
-- text here in pieces and wakes listeners with NOTIFY confab_replies (payload: the reply id); the
-- API instance holding the client's connection reads the pieces after the last one it saw. Rows
-- are transient: a finished reply's rows are deleted after a quarter of an hour.
-- (The embedded SQLite default runs API and workers in one process and relays in memory.)
CREATE TABLE reply_chunks (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reply_id   UUID NOT NULL,
    chat_id    UUID NOT NULL,
    owner_id   UUID NOT NULL,
    -- open | text | restart | done | failed
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reply_chunks_reply ON reply_chunks (reply_id, seq);
CREATE INDEX reply_chunks_chat ON reply_chunks (chat_id, owner_id, seq) WHERE kind = 'open';
CREATE INDEX reply_chunks_created ON reply_chunks (created_at);
