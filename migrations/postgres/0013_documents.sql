-- Read model of the `documents` projection (issue 14): each document's state, its chunks with
-- their full-text vectors. Vectors are a derived index apart from the projection
-- (`chunk_embeddings`), keyed by what they derive from, (chunk hash, embedding model), so an
-- identical chunk is embedded once and a change of model builds beside the old vectors.
CREATE TABLE documents (
    id              UUID PRIMARY KEY,
    owner_id        UUID NOT NULL,
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    content_hash    TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    status          TEXT NOT NULL,
    error           TEXT,
    chunks          INTEGER NOT NULL DEFAULT 0,
    embedding_model TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX documents_by_owner_created ON documents (owner_id, created_at DESC, id);

CREATE TABLE document_chunks (
    document_id UUID NOT NULL,
    chunk_index INTEGER NOT NULL,
    owner_id    UUID NOT NULL,
    text        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    -- The text folded (lower case, accents removed) as words.
    search      TSVECTOR NOT NULL,
    PRIMARY KEY (document_id, chunk_index)
);
CREATE INDEX document_chunks_by_hash ON document_chunks (hash);
CREATE INDEX document_chunks_search ON document_chunks USING GIN (search);

-- Vectors: little-endian f32s, written by the embedding job; rebuildable from the chunk events.
CREATE TABLE chunk_embeddings (
    hash       TEXT NOT NULL,
    model      TEXT NOT NULL,
    dimensions INTEGER NOT NULL,
    vector     BYTEA NOT NULL,
    PRIMARY KEY (hash, model)
);
