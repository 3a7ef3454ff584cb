//! The `documents` projection: each document's state and its chunks with their full-text index
//! (FTS5 on SQLite, a tsvector on PostgreSQL), and the query functions of retrieval. The chunk
//! vectors (`chunk_embeddings`) are a derived index beside it, written by the embedding job and
//! keyed by (chunk hash, model); retrieval joins them through the chunks, so a deleted
//! document's chunks leave the lexical and the vector side at once.

use crate::db::{ReadDb, Tx};
use crate::engine::{Projection, ProjectionError};
use crate::search;
use crate::{execute, query_as};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use confab_domain::EventSchema;
use confab_domain::document::{DocumentEvent, event_types};
use confab_eventstore::RecordedEvent;
use uuid::Uuid;

/// Builds the `documents` and `document_chunks` tables.
pub struct DocumentsProjection;

/// The projection's name.
pub const NAME: &str = "documents";

#[async_trait]
impl Projection for DocumentsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        event_types::ALL.contains(&event_type)
            || event_type == confab_domain::account::event_types::USER_ERASED
    }

    async fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if let Some(user) = crate::privacy::erased_user(event) {
            crate::privacy::purge_documents(tx, user).await?;
            return Ok(());
        }
        let e = DocumentEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload.clone(),
        )?;
        match e {
            DocumentEvent::Uploaded(u) => {
                execute!(
                    tx,
                    "INSERT INTO documents (id, owner_id, filename, content_type, bytes, \
                     content_hash, object_key, status, error, chunks, embedding_model, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'processing', \
                     NULL, 0, NULL, $8, $8) ON CONFLICT (id) DO NOTHING",
                    u.document_id,
                    u.owner,
                    u.filename,
                    u.content_type,
                    i64::try_from(u.bytes).unwrap_or(i64::MAX),
                    u.content_hash,
                    u.object_key,
                    u.at
                )?;
            }
            DocumentEvent::ChunksRecorded(c) => {
                let owner = owner_of(tx, c.document_id).await?;
                let Some(owner) = owner else {
                    return Ok(());
                };
                let key = search::owner_key(owner);
                for chunk in &c.chunks {
                    let folded = search::fold(&chunk.text);
                    let index = i32::try_from(chunk.index).unwrap_or(i32::MAX);
                    match &mut *tx {
                        Tx::Sqlite(t) => {
                            let inserted = sqlx::query(
                                "INSERT INTO document_chunks (document_id, chunk_index, owner_id, \
                                 text, hash) VALUES ($1, $2, $3, $4, $5) \
                                 ON CONFLICT (document_id, chunk_index) DO NOTHING",
                            )
                            .bind(c.document_id)
                            .bind(index)
                            .bind(owner)
                            .bind(&chunk.text)
                            .bind(&chunk.hash)
                            .execute(&mut **t)
                            .await?;
                            if inserted.rows_affected() == 1 {
                                sqlx::query(
                                    "INSERT OR REPLACE INTO document_chunks_fts (rowid, terms) \
                                     VALUES ($1, $2)",
                                )
                                .bind(inserted.last_insert_rowid())
                                .bind(search::fts5_terms(&key, &folded))
                                .execute(&mut **t)
                                .await?;
                            }
                        }
                        Tx::Postgres(t) => {
                            sqlx::query(
                                "INSERT INTO document_chunks (document_id, chunk_index, owner_id, \
                                 text, hash, search) VALUES ($1, $2, $3, $4, $5, \
                                 to_tsvector('simple', $6)) \
                                 ON CONFLICT (document_id, chunk_index) DO NOTHING",
                            )
                            .bind(c.document_id)
                            .bind(index)
                            .bind(owner)
                            .bind(&chunk.text)
                            .bind(&chunk.hash)
                            .bind(&folded)
                            .execute(&mut **t)
                            .await?;
                        }
                    }
                }
                execute!(
                    tx,
                    "UPDATE documents SET chunks = $2, updated_at = $3 WHERE id = $1",
                    c.document_id,
                    i32::try_from(c.total).unwrap_or(i32::MAX),
                    c.at
                )?;
            }
            DocumentEvent::Ready(r) => {
                execute!(
                    tx,
                    "UPDATE documents SET status = 'ready', error = NULL, embedding_model = $2, \
                     updated_at = $3 WHERE id = $1",
                    r.document_id,
                    r.embedding_model,
                    r.at
                )?;
            }
            DocumentEvent::Failed(f) => {
                execute!(
                    tx,
                    "UPDATE documents SET status = 'failed', error = $2, updated_at = $3 \
                     WHERE id = $1",
                    f.document_id,
                    f.reason,
                    f.at
                )?;
            }
            DocumentEvent::ProcessingRequested(p) => {
                execute!(
                    tx,
                    "UPDATE documents SET status = 'processing', error = NULL, updated_at = $2 \
                     WHERE id = $1",
                    p.document_id,
                    p.at
                )?;
            }
            DocumentEvent::Deleted(d) => {
                if let Tx::Sqlite(t) = &mut *tx {
                    sqlx::query(
                        "DELETE FROM document_chunks_fts WHERE rowid IN \
                         (SELECT rowid FROM document_chunks WHERE document_id = $1)",
                    )
                    .bind(d.document_id)
                    .execute(&mut **t)
                    .await?;
                }
                execute!(
                    tx,
                    "DELETE FROM document_chunks WHERE document_id = $1",
                    d.document_id
                )?;
                execute!(tx, "DELETE FROM documents WHERE id = $1", d.document_id)?;
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        if let Tx::Sqlite(t) = tx {
            sqlx::query("DELETE FROM document_chunks_fts")
                .execute(&mut **t)
                .await?;
        }
        execute!(tx, "DELETE FROM document_chunks")?;
        execute!(tx, "DELETE FROM documents")?;
        Ok(())
    }
}

async fn owner_of(tx: &mut Tx, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    const SQL: &str = "SELECT owner_id FROM documents WHERE id = $1";
    match tx {
        Tx::Sqlite(t) => {
            sqlx::query_scalar(SQL)
                .bind(id)
                .fetch_optional(&mut **t)
                .await
        }
        Tx::Postgres(t) => {
            sqlx::query_scalar(SQL)
                .bind(id)
                .fetch_optional(&mut **t)
                .await
        }
    }
}

/// A document as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DocumentRow {
    /// Its id.
    pub id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The uploaded name.
    pub filename: String,
    /// Media type.
    pub content_type: String,
    /// Size.
    pub bytes: i64,
    /// Where the bytes are.
    pub object_key: String,
    /// processing, ready or failed.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Chunks recorded.
    pub chunks: i32,
    /// The model of its vectors, once ready.
    pub embedding_model: Option<String>,
    /// Uploaded.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, owner_id, filename, content_type, bytes, object_key, status, error, \
                       chunks, embedding_model, created_at, updated_at";

/// Document `id`, whoever owns it (callers check ownership; see [`get`]).
pub async fn get_any(db: &ReadDb, id: Uuid) -> Result<Option<DocumentRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM documents WHERE id = $1");
    query_as!(
        db,
        fetch_optional,
        DocumentRow,
        sqlx::AssertSqlSafe(sql),
        id
    )
}

/// Document `id` if `owner` owns it (another user's reads as missing).
pub async fn get(db: &ReadDb, id: Uuid, owner: Uuid) -> Result<Option<DocumentRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM documents WHERE id = $1 AND owner_id = $2");
    query_as!(
        db,
        fetch_optional,
        DocumentRow,
        sqlx::AssertSqlSafe(sql),
        id,
        owner
    )
}

/// One page of `owner`'s documents, newest first, and how many there are.
pub async fn list(
    db: &ReadDb,
    owner: Uuid,
    limit: u32,
    offset: u64,
) -> Result<(Vec<DocumentRow>, u64), sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM documents WHERE owner_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    );
    let rows = query_as!(
        db,
        fetch_all,
        DocumentRow,
        sqlx::AssertSqlSafe(sql),
        owner,
        i64::from(limit),
        i64::try_from(offset).unwrap_or(i64::MAX)
    )?;
    let (total,): (i64,) = query_as!(
        db,
        fetch_one,
        (i64,),
        "SELECT COUNT(*) FROM documents WHERE owner_id = $1",
        owner
    )?;
    Ok((rows, u64::try_from(total).unwrap_or(0)))
}

/// Documents whose processing has not ended (for queuing them again at start-up).
pub async fn processing(db: &ReadDb) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = query_as!(
        db,
        fetch_all,
        (Uuid,),
        "SELECT id FROM documents WHERE status = 'processing' ORDER BY created_at"
    )?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Ready documents whose vectors are of another model than `model`.
pub async fn ready_with_other_model(db: &ReadDb, model: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = query_as!(
        db,
        fetch_all,
        (Uuid,),
        "SELECT id FROM documents WHERE status = 'ready' AND \
         (embedding_model IS NULL OR embedding_model <> $1) ORDER BY created_at",
        model
    )?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// How many chunks of document `id` the read model holds.
pub async fn chunk_count(db: &ReadDb, id: Uuid) -> Result<u64, sqlx::Error> {
    let (n,): (i64,) = query_as!(
        db,
        fetch_one,
        (i64,),
        "SELECT COUNT(*) FROM document_chunks WHERE document_id = $1",
        id
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The chunks of document `id` that have no vector of `model` yet: (hash, text), each hash
/// once.
pub async fn unembedded(
    db: &ReadDb,
    id: Uuid,
    model: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> = query_as!(
        db,
        fetch_all,
        (String, String),
        "SELECT c.hash, MIN(c.text) FROM document_chunks c WHERE c.document_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM chunk_embeddings e WHERE e.hash = c.hash \
         AND e.model = $2) GROUP BY c.hash ORDER BY MIN(c.chunk_index)",
        id,
        model
    )?;
    Ok(rows)
}

/// Stores vectors of `model`, each under its chunk hash; a hash already stored is kept.
pub async fn store_embeddings(
    db: &ReadDb,
    model: &str,
    vectors: &[(String, Vec<f32>)],
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    for (hash, v) in vectors {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let dims = i32::try_from(v.len()).unwrap_or(i32::MAX);
        execute!(
            &mut tx,
            "INSERT INTO chunk_embeddings (hash, model, dimensions, vector) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (hash, model) DO NOTHING",
            hash,
            model,
            dims,
            bytes
        )?;
    }
    tx.commit().await
}

/// A chunk found by retrieval.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ChunkRow {
    /// Its document.
    pub document_id: Uuid,
    /// Its place in the document.
    pub chunk_index: i32,
    /// The text.
    pub text: String,
}

/// The best lexical matches among `owner`'s chunks of document `id` for any word of `query`,
/// best first (BM25 on SQLite, `ts_rank` on PostgreSQL); ownership is part of the query.
pub async fn lexical(
    db: &ReadDb,
    owner: Uuid,
    id: Uuid,
    query: &str,
    limit: u32,
) -> Result<Vec<ChunkRow>, sqlx::Error> {
    let folded = search::fold(query);
    let mut words = search::words(&folded);
    words.sort_unstable();
    words.dedup();
    if words.is_empty() {
        return Ok(vec![]);
    }
    match db {
        ReadDb::Sqlite(p) => {
            let key = search::owner_key(owner);
            let q = words
                .iter()
                .map(|w| format!("\"{key}{}\"", w.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" OR ");
            sqlx::query_as::<_, ChunkRow>(
                "SELECT c.document_id, c.chunk_index, c.text FROM \
                 (SELECT rowid, rank FROM document_chunks_fts WHERE document_chunks_fts MATCH $1) f \
                 JOIN document_chunks c ON c.rowid = f.rowid \
                 WHERE c.document_id = $2 AND c.owner_id = $3 \
                 ORDER BY f.rank, c.chunk_index LIMIT $4",
            )
            .bind(q)
            .bind(id)
            .bind(owner)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        }
        ReadDb::Postgres(p) => {
            // Words are runs of letters and digits, so none is tsquery syntax.
            let q = words.join(" | ");
            sqlx::query_as::<_, ChunkRow>(
                "SELECT c.document_id, c.chunk_index, c.text FROM document_chunks c, \
                 to_tsquery('simple', $1) q WHERE c.search @@ q AND c.document_id = $2 \
                 AND c.owner_id = $3 ORDER BY ts_rank(c.search, q) DESC, c.chunk_index \
                 LIMIT $4",
            )
            .bind(q)
            .bind(id)
            .bind(owner)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        }
    }
}

/// Every chunk of `owner`'s document `id` with its vector of `model` (chunks without one are
/// left out): (chunk, little-endian f32 bytes). Ownership is part of the query.
pub async fn vectors(
    db: &ReadDb,
    owner: Uuid,
    id: Uuid,
    model: &str,
) -> Result<Vec<(ChunkRow, Vec<u8>)>, sqlx::Error> {
    let rows: Vec<(Uuid, i32, String, Vec<u8>)> = query_as!(
        db,
        fetch_all,
        (Uuid, i32, String, Vec<u8>),
        "SELECT c.document_id, c.chunk_index, c.text, e.vector FROM document_chunks c \
         JOIN chunk_embeddings e ON e.hash = c.hash AND e.model = $3 \
         WHERE c.document_id = $1 AND c.owner_id = $2 ORDER BY c.chunk_index",
        id,
        owner,
        model
    )?;
    Ok(rows
        .into_iter()
        .map(|(document_id, chunk_index, text, v)| {
            (
                ChunkRow {
                    document_id,
                    chunk_index,
                    text,
                },
                v,
            )
        })
        .collect())
}

/// How far the vector index of one embedding model is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexProgress {
    /// Chunks of live documents (ready or processing) that have a vector of the model.
    pub embedded: u64,
    /// Chunks of live documents.
    pub chunks: u64,
    /// The models ready documents are retrieved with now, each with how many documents.
    pub serving: Vec<(String, u64)>,
}

impl IndexProgress {
    /// Whether retrieval uses `model` for every ready document and every live chunk has its
    /// vector.
    pub fn complete(&self, model: &str) -> bool {
        self.embedded >= self.chunks && self.serving.iter().all(|(m, _)| m == model)
    }
}

/// The progress of the vector index of `model` (for `confab projections status`): built side
/// by side from the chunks while retrieval keeps the models in `serving`.
pub async fn index_progress(db: &ReadDb, model: &str) -> Result<IndexProgress, sqlx::Error> {
    let (chunks, embedded): (i64, i64) = query_as!(
        db,
        fetch_one,
        (i64, i64),
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE EXISTS (SELECT 1 FROM chunk_embeddings e \
         WHERE e.hash = c.hash AND e.model = $1)) FROM document_chunks c \
         JOIN documents d ON d.id = c.document_id WHERE d.status IN ('ready', 'processing')",
        model
    )?;
    let serving: Vec<(String, i64)> = query_as!(
        db,
        fetch_all,
        (String, i64),
        "SELECT embedding_model, COUNT(*) FROM documents WHERE status = 'ready' AND \
         embedding_model IS NOT NULL GROUP BY embedding_model ORDER BY embedding_model"
    )?;
    Ok(IndexProgress {
        embedded: u64::try_from(embedded).unwrap_or(0),
        chunks: u64::try_from(chunks).unwrap_or(0),
        serving: serving
            .into_iter()
            .map(|(m, n)| (m, u64::try_from(n).unwrap_or(0)))
            .collect(),
    })
}

/// Every chunk of `owner`'s document `id` that has a vector of `model`: (place, hash,
/// little-endian f32 bytes), in order. Ownership is part of the query.
pub async fn vectors_of(
    db: &ReadDb,
    owner: Uuid,
    id: Uuid,
    model: &str,
) -> Result<Vec<(i32, String, Vec<u8>)>, sqlx::Error> {
    query_as!(
        db,
        fetch_all,
        (i32, String, Vec<u8>),
        "SELECT c.chunk_index, c.hash, e.vector FROM document_chunks c \
         JOIN chunk_embeddings e ON e.hash = c.hash AND e.model = $3 \
         WHERE c.document_id = $1 AND c.owner_id = $2 ORDER BY c.chunk_index",
        id,
        owner,
        model
    )
}

/// The stored vectors of `model` of the chunk `hashes` (little-endian f32 bytes by hash).
pub async fn embeddings_by_hash(
    db: &ReadDb,
    model: &str,
    hashes: &[&str],
) -> Result<std::collections::HashMap<String, Vec<u8>>, sqlx::Error> {
    let mut out = std::collections::HashMap::with_capacity(hashes.len());
    // Bounded lists of placeholders: well under both databases' limits.
    for part in hashes.chunks(500) {
        let marks: Vec<String> = (0..part.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT hash, vector FROM chunk_embeddings WHERE model = $1 AND hash IN ({})",
            marks.join(", ")
        );
        let rows: Vec<(String, Vec<u8>)> = match db {
            ReadDb::Sqlite(p) => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(model);
                for h in part {
                    q = q.bind(*h);
                }
                q.fetch_all(p).await?
            }
            ReadDb::Postgres(p) => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(model);
                for h in part {
                    q = q.bind(*h);
                }
                q.fetch_all(p).await?
            }
        };
        out.extend(rows);
    }
    Ok(out)
}

/// The texts of `owner`'s chunks at `places` (document, place); missing ones are left out.
pub async fn chunk_texts(
    db: &ReadDb,
    owner: Uuid,
    places: &[(Uuid, i32)],
) -> Result<Vec<ChunkRow>, sqlx::Error> {
    let mut out = Vec::with_capacity(places.len());
    for (id, index) in places {
        let row = query_as!(
            db,
            fetch_optional,
            ChunkRow,
            "SELECT document_id, chunk_index, text FROM document_chunks \
             WHERE document_id = $1 AND chunk_index = $2 AND owner_id = $3",
            *id,
            *index,
            owner
        )?;
        out.extend(row);
    }
    Ok(out)
}

/// [`lexical`] for several of `owner`'s documents in one query: each document's best `limit`
/// matches, best first, in the order of `ids`, as places: their texts are left empty (ranking
/// reads no text; [`chunk_texts`] reads those of the chunks that win).
pub async fn lexical_many(
    db: &ReadDb,
    owner: Uuid,
    ids: &[Uuid],
    query: &str,
    limit: u32,
) -> Result<Vec<Vec<ChunkRow>>, sqlx::Error> {
    let folded = search::fold(query);
    let mut words = search::words(&folded);
    words.sort_unstable();
    words.dedup();
    if words.is_empty() || ids.is_empty() {
        return Ok(vec![Vec::new(); ids.len()]);
    }
    let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 4)).collect();
    let marks = marks.join(", ");
    let rows: Vec<ChunkRow> = match db {
        ReadDb::Sqlite(p) => {
            let key = search::owner_key(owner);
            let q = words
                .iter()
                .map(|w| format!("\"{key}{}\"", w.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!(
                "SELECT document_id, chunk_index, '' AS text FROM (SELECT c.document_id, \
                 c.chunk_index, ROW_NUMBER() OVER (PARTITION BY c.document_id \
                 ORDER BY f.rank, c.chunk_index) AS r FROM (SELECT rowid, rank FROM \
                 document_chunks_fts WHERE document_chunks_fts MATCH $1) f \
                 JOIN document_chunks c ON c.rowid = f.rowid \
                 WHERE c.owner_id = $2 AND c.document_id IN ({marks})) \
                 WHERE r <= $3 ORDER BY r"
            );
            let mut q = sqlx::query_as::<_, ChunkRow>(sqlx::AssertSqlSafe(sql))
                .bind(q)
                .bind(owner)
                .bind(i64::from(limit));
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await?
        }
        ReadDb::Postgres(p) => {
            // Words are runs of letters and digits, so none is tsquery syntax.
            let q = words.join(" | ");
            let sql = format!(
                "SELECT document_id, chunk_index, '' AS text FROM (SELECT c.document_id, \
                 c.chunk_index, ROW_NUMBER() OVER (PARTITION BY c.document_id \
                 ORDER BY ts_rank(c.search, q) DESC, c.chunk_index) AS r \
                 FROM document_chunks c, to_tsquery('simple', $1) q \
                 WHERE c.search @@ q AND c.owner_id = $2 AND c.document_id IN ({marks})) t \
                 WHERE r <= $3 ORDER BY r"
            );
            let mut q = sqlx::query_as::<_, ChunkRow>(sqlx::AssertSqlSafe(sql))
                .bind(q)
                .bind(owner)
                .bind(i64::from(limit));
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await?
        }
    };
    let mut out = vec![Vec::new(); ids.len()];
    for row in rows {
        if let Some(i) = ids.iter().position(|id| *id == row.document_id) {
            out[i].push(row);
        }
    }
    Ok(out)
}
