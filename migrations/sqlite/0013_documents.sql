-- Read model of the `documents` projection (issue 14): each document's state, its chunks, and
-- the chunks' full-text index. Vectors are a derived index apart from the projection
-- (`chunk_embeddings`), keyed by what they derive from, (chunk hash, embedding model), so an
-- identical chunk is embedded once and a change of model builds beside the old vectors.
CREATE TABLE documents (
    id              BLOB PRIMARY KEY,
    owner_id        BLOB NOT NULL,
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    bytes           INTEGER NOT NULL,
    content_hash    TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    status          TEXT NOT NULL,
    error           TEXT,
    chunks          INTEGER NOT NULL DEFAULT 0,
    embedding_model TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX documents_by_owner_created ON documents (owner_id, created_at DESC, id);

CREATE TABLE document_chunks (
    document_id BLOB NOT NULL,
    chunk_index INTEGER NOT NULL,
    owner_id    BLOB NOT NULL,
    text        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (document_id, chunk_index)
);
CREATE INDEX document_chunks_by_hash ON document_chunks (hash);

-- As messages_fts (migration 0012): contentless, every term the owner's key followed by the
-- word, written by the projection; rows are document_chunks' rowids.
CREATE VIRTUAL TABLE document_chunks_fts USING fts5(
    terms,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Vectors: little-endian f32s, written by the embedding job; rebuildable from the chunk events.
CREATE TABLE chunk_embeddings (
    hash       TEXT NOT NULL,
    model      TEXT NOT NULL,
    dimensions INTEGER NOT NULL,
    vector     BLOB NOT NULL,
    PRIMARY KEY (hash, model)
);
