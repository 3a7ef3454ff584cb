//! The in-memory vector index of retrieval: for each (document, embedding model) asked for,
//! the sign bits of its chunks' vectors (one bit per dimension, 192 bytes for 1,536), kept in
//! a memory-bounded cache. A query ranks a document set's chunks by Hamming distance over
//! those bits (microseconds per thousand chunks), then re-ranks the best candidates by exact
//! cosine over their stored vectors; a set no larger than the candidate pool is ranked by exact
//! cosine outright.
//!
//! Nothing here needs invalidating: a document's chunks are recorded once and a vector is keyed
//! by (chunk hash, model), so the vectors of a document ready with a model never change. A
//! deleted document is never asked for (retrieval only names documents the read model still
//! shows its owner), and its entry leaves the cache with the others, least recently used
//! first, when the budget is reached.

use confab_projections::ReadDb;
use confab_projections::documents;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Chunks re-ranked by exact cosine at least (and more when retrieval asks for more).
pub const MIN_CANDIDATES: usize = 256;

/// The sign bits of one document's vectors of one model.
#[derive(Debug)]
pub struct DocumentBits {
    /// Each chunk's place and hash, in the order of `bits`.
    pub chunks: Vec<(i32, String)>,
    /// `words` u64s per chunk.
    pub bits: Vec<u64>,
    /// u64s per chunk.
    pub words: usize,
}

impl DocumentBits {
    fn bytes(&self) -> usize {
        self.bits.len() * 8 + self.chunks.iter().map(|(_, h)| h.len() + 40).sum::<usize>() + 64
    }
}

/// The sign bits of `v`: bit i is set when v[i] > 0.
pub fn sign_bits(v: &[f32], words: usize) -> Vec<u64> {
    let mut out = vec![0u64; words];
    for (i, x) in v.iter().enumerate().take(words * 64) {
        if *x > 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

struct Entry {
    bits: Arc<DocumentBits>,
    used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<(Uuid, String), Entry>,
    bytes: usize,
    clock: u64,
}

/// The cache of documents' sign bits, bounded in bytes.
pub struct VectorIndex {
    budget: usize,
    cache: Mutex<Cache>,
}

impl Default for VectorIndex {
    fn default() -> Self {
        VectorIndex::new(512 * 1024 * 1024)
    }
}

impl VectorIndex {
    /// An empty index that keeps at most about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        VectorIndex {
            budget,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a consistent map (every update is one insert
        // or remove), so the poison is ignored.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bits of `owner`'s document `id` in `model`, read from the store (owner-scoped) the
    /// first time. They are kept only once all of its `chunks` have a vector (a document whose
    /// index is incomplete is read again next time).
    pub async fn document(
        &self,
        db: &ReadDb,
        owner: Uuid,
        id: Uuid,
        model: &str,
        chunks: usize,
    ) -> Result<Arc<DocumentBits>, sqlx::Error> {
        let key = (id, model.to_owned());
        {
            let mut cache = self.lock();
            cache.clock += 1;
            let now = cache.clock;
            if let Some(e) = cache.entries.get_mut(&key) {
                e.used = now;
                return Ok(e.bits.clone());
            }
        }
        let rows = documents::vectors_of(db, owner, id, model).await?;
        let dims = rows.first().map(|(_, _, v)| v.len() / 4).unwrap_or(0);
        let words = dims.div_ceil(64).max(1);
        let expected = chunks;
        let mut chunks = Vec::with_capacity(rows.len());
        let mut bits = Vec::with_capacity(rows.len() * words);
        for (index, hash, v) in rows {
            let v = super::embed::from_bytes(&v);
            bits.extend(sign_bits(&v, words));
            chunks.push((index, hash));
        }
        let complete = chunks.len() >= expected;
        let doc = Arc::new(DocumentBits {
            chunks,
            bits,
            words,
        });
        if !complete {
            return Ok(doc);
        }
        let mut cache = self.lock();
        cache.clock += 1;
        let now = cache.clock;
        let size = doc.bytes();
        while cache.bytes + size > self.budget && !cache.entries.is_empty() {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest
                && let Some(e) = cache.entries.remove(&k)
            {
                cache.bytes -= e.bits.bytes();
            }
        }
        if let Some(old) = cache.entries.insert(
            key,
            Entry {
                bits: doc.clone(),
                used: now,
            },
        ) {
            cache.bytes -= old.bits.bytes();
        }
        cache.bytes += size;
        Ok(doc)
    }
}

/// A chunk found by the vector side: its document, place and cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    /// Its document.
    pub document_id: Uuid,
    /// Its place.
    pub chunk_index: i32,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// The `depth` chunks of `docs` nearest to `query` by cosine: the best `candidates` by
/// Hamming distance of sign bits, re-ranked by the exact cosine of their stored vectors (all
/// of them when there are no more than `candidates`).
pub async fn nearest(
    db: &ReadDb,
    model: &str,
    docs: &[(Uuid, Arc<DocumentBits>)],
    query: &[f32],
    depth: usize,
    candidates: usize,
) -> Result<Vec<VectorHit>, sqlx::Error> {
    let total: usize = docs.iter().map(|(_, d)| d.chunks.len()).sum();
    let mut pool: Vec<(u32, usize, usize)> = Vec::with_capacity(total);
    for (di, (_, d)) in docs.iter().enumerate() {
        let q = sign_bits(query, d.words);
        for (ci, code) in d.bits.chunks_exact(d.words).enumerate() {
            let distance: u32 = code.iter().zip(&q).map(|(a, b)| (a ^ b).count_ones()).sum();
            pool.push((distance, di, ci));
        }
    }
    let keep = candidates.max(depth);
    if pool.len() > keep {
        pool.select_nth_unstable_by_key(keep - 1, |(d, _, _)| *d);
        pool.truncate(keep);
    }
    let hashes: Vec<&str> = pool
        .iter()
        .map(|(_, di, ci)| docs[*di].1.chunks[*ci].1.as_str())
        .collect();
    let vectors = documents::embeddings_by_hash(db, model, &hashes).await?;
    let mut hits: Vec<VectorHit> = pool
        .iter()
        .filter_map(|(_, di, ci)| {
            let (doc, bits) = &docs[*di];
            let (index, hash) = &bits.chunks[*ci];
            let v = super::embed::from_bytes(vectors.get(hash)?);
            Some(VectorHit {
                document_id: *doc,
                chunk_index: *index,
                score: super::embed::cosine(query, &v),
            })
        })
        .collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.document_id.cmp(&b.document_id))
            .then(a.chunk_index.cmp(&b.chunk_index))
    });
    hits.truncate(depth);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_bits_set_the_positive_dimensions() {
        let mut v = vec![-1.0f32; 130];
        v[0] = 0.5;
        v[65] = 2.0;
        v[129] = 0.1;
        let bits = sign_bits(&v, 3);
        assert_eq!(bits, vec![1, 2, 2]);
    }
}
