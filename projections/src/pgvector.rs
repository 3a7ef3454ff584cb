//! pgvector on PostgreSQL: when the `vector` extension is installed (or installable), chunk
//! vectors are also kept in `chunk_vectors` (a `vector` column, one HNSW index per dimension,
//! cosine distance), and the vector side of retrieval is one owner-scoped `<=>` query.
//! Otherwise (and with `CONFAB_PGVECTOR=off`) retrieval keeps its exact path.
//!
//! The table and its indexes are made here at start-up rather than in a migration: the type
//! exists only where the extension does, and the migrations must run on every PostgreSQL.
//! Like `chunk_embeddings`, the table is a derived index keyed by (chunk hash, model),
//! filled from the stored vectors at start-up and by the embedding job after.

use sqlx::PgPool;
use uuid::Uuid;

/// Whether pgvector can be used on `pool`: the extension is installed, or is available and
/// this role may create it (then it is created). Prepares `chunk_vectors` when it can.
pub async fn enable(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let installed: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .fetch_optional(pool)
            .await?;
    if installed.is_none() {
        let available: Option<String> = sqlx::query_scalar(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'",
        )
        .fetch_optional(pool)
        .await?;
        if available.is_none() {
            return Ok(false);
        }
        if let Err(e) = sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
            .execute(pool)
            .await
        {
            tracing::warn!(error = %e, "pgvector is available but cannot be created by this role; using the exact scan");
            return Ok(false);
        }
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS chunk_vectors (hash TEXT NOT NULL, model TEXT NOT NULL, \
         dims INTEGER NOT NULL, embedding vector NOT NULL, PRIMARY KEY (hash, model))",
    )
    .execute(pool)
    .await?;
    Ok(true)
}

/// pgvector's text form of `v`: `[x,y,...]`.
fn literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 12 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Non-finite values are not vectors pgvector accepts.
        let x = if x.is_finite() { *x } else { 0.0 };
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// Makes sure the HNSW index of vectors of `dims` dimensions exists (HNSW takes at most 2,000
/// dimensions; larger vectors are scanned exactly by pgvector, which stays correct).
async fn ensure_index(pool: &PgPool, dims: usize) -> Result<(), sqlx::Error> {
    if dims == 0 || dims > 2000 {
        return Ok(());
    }
    let sql = format!(
        "CREATE INDEX IF NOT EXISTS chunk_vectors_hnsw_{dims} ON chunk_vectors USING hnsw \
         ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

/// Stores vectors of `model`, each under its chunk hash; a hash already stored is kept.
pub async fn store(
    pool: &PgPool,
    model: &str,
    vectors: &[(String, Vec<f32>)],
) -> Result<(), sqlx::Error> {
    let mut dims: Vec<usize> = vectors.iter().map(|(_, v)| v.len()).collect();
    dims.sort_unstable();
    dims.dedup();
    for d in dims {
        ensure_index(pool, d).await?;
    }
    let mut tx = pool.begin().await?;
    for (hash, v) in vectors {
        sqlx::query(
            "INSERT INTO chunk_vectors (hash, model, dims, embedding) VALUES ($1, $2, $3, \
             $4::vector) ON CONFLICT (hash, model) DO NOTHING",
        )
        .bind(hash)
        .bind(model)
        .bind(i32::try_from(v.len()).unwrap_or(i32::MAX))
        .bind(literal(v))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Copies into `chunk_vectors` every stored vector it does not hold yet (vectors embedded
/// before the extension was installed); returns how many.
pub async fn backfill(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut copied = 0;
    loop {
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT e.hash, e.model, e.vector FROM chunk_embeddings e WHERE NOT EXISTS \
             (SELECT 1 FROM chunk_vectors v WHERE v.hash = e.hash AND v.model = e.model) \
             LIMIT 500",
        )
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(copied);
        }
        let mut by_model: std::collections::BTreeMap<String, Vec<(String, Vec<f32>)>> =
            Default::default();
        for (hash, model, bytes) in rows {
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            by_model.entry(model).or_default().push((hash, v));
        }
        for (model, vectors) in by_model {
            copied += vectors.len() as u64;
            store(pool, &model, &vectors).await?;
        }
    }
}

/// The `limit` chunks of `owner`'s documents `ids` nearest to `query` by cosine, in the
/// vectors of `model`: (document, place, cosine similarity), nearest first. Ownership is part
/// of the query; the HNSW index of the query's dimension answers it, with pgvector's
/// iterative scan so that the owner and document filters never starve the result.
pub async fn nearest(
    pool: &PgPool,
    owner: Uuid,
    ids: &[Uuid],
    model: &str,
    query: &[f32],
    limit: u32,
) -> Result<Vec<(Uuid, i32, f32)>, sqlx::Error> {
    let dims = query.len();
    if dims == 0 || ids.is_empty() {
        return Ok(vec![]);
    }
    let cast = if dims <= 16_000 {
        format!("vector({dims})")
    } else {
        "vector".to_owned()
    };
    let sql = format!(
        "SELECT c.document_id, c.chunk_index, \
         (1 - (v.embedding::{cast} <=> $4::{cast}))::real AS score \
         FROM chunk_vectors v JOIN document_chunks c ON c.hash = v.hash \
         WHERE v.model = $1 AND v.dims = {dims} AND c.owner_id = $2 \
         AND c.document_id = ANY($3) \
         ORDER BY v.embedding::{cast} <=> $4::{cast} LIMIT $5"
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
        .execute(&mut *tx)
        .await?;
    let mut rows: Vec<(Uuid, i32, f32)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(model)
        .bind(owner)
        .bind(ids)
        .bind(literal(query))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    // relaxed_order may return neighbours slightly out of order.
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_written_in_pgvectors_text_form() {
        assert_eq!(literal(&[1.0, -0.5, f32::NAN]), "[1,-0.5,0]");
        assert_eq!(literal(&[]), "[]");
    }
}
