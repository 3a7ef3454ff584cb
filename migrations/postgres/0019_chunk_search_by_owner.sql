-- Lexical retrieval over document chunks is always one owner's: the GIN index covers the owner
-- too (btree_gin, a trusted contrib extension), so a query reads the postings of that owner's
-- matching chunks instead of every user's and filtering them in the heap.
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX document_chunks_owner_search ON document_chunks USING GIN (owner_id, search);
DROP INDEX document_chunks_search;
