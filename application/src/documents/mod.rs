//! Documents and retrieval (issue 14): uploading a file (kept in the object store, recorded as
//! `document.uploaded`), the two background steps that make it retrievable (parse and chunk,
//! recording the chunks as events; embed the chunks into the derived vector index), reading
//! and deleting one's documents, and hybrid retrieval (lexical and vector, fused by reciprocal
//! rank) that grounds chat replies.
//!
//! Both steps are idempotent: chunks are recorded once (the aggregate refuses a second set),
//! vectors are stored under (chunk hash, model) and a hash already embedded is not sent again,
//! and `document.ready` is recorded once per model. A step that meets a file or a provider it
//! cannot get past records `document.failed` with a reason the user can act on.

pub mod chunk;
pub mod embed;
pub mod index;
pub mod parse;

use crate::ai::llm::{CallPolicy, Endpoint, Turn};
use crate::jobs::{DocumentStep, Job, ProcessDocument};
use crate::{Actor, AppError, Page, PageRequest, Services, metadata, now};
use bytes::Bytes;
use chunk::ChunkSizing;
use confab_domain::document::{Document, DocumentCommand, DocumentError, DocumentUploaded};
use confab_domain::sources::{RecordedSource, ReplySources};
use confab_eventstore::EventMetadata;
use confab_projections::documents::{self, ChunkRow, DocumentRow};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parse::DocType;
use std::collections::HashMap;
use uuid::Uuid;

/// How documents are accepted, cut and embedded, and how much retrieval returns.
#[derive(Debug, Clone)]
pub struct DocumentSettings {
    /// The kinds accepted.
    pub types: Vec<DocType>,
    /// Largest upload, in bytes.
    pub max_bytes: usize,
    /// The embedding model.
    pub embedding_model: String,
    /// The provider (by name) whose endpoint embeds.
    pub embedding_provider: String,
    /// Chunk size and overlap, in tokens.
    pub sizing: ChunkSizing,
    /// Chunks put into a reply's context.
    pub top_k: usize,
    /// Texts per embeddings request.
    pub batch: usize,
    /// Whether vectors are also kept and searched with pgvector (PostgreSQL with the
    /// extension, unless `CONFAB_PGVECTOR=off`).
    pub pgvector: bool,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        DocumentSettings {
            types: DocType::ALL.to_vec(),
            max_bytes: 10 * 1024 * 1024,
            embedding_model: "text-embedding-3-small".into(),
            embedding_provider: "openai".into(),
            sizing: ChunkSizing::default(),
            top_k: 5,
            batch: 64,
            pgvector: false,
        }
    }
}

/// Most documents one chat request may name.
pub const MAX_DOCUMENTS_PER_REQUEST: usize = 20;
/// Longest filename kept, in characters.
pub const MAX_FILENAME_CHARS: usize = 255;

impl From<DocumentError> for AppError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::NotFound => AppError::NotFound("document"),
            DocumentError::AlreadyExists => AppError::conflict(e.to_string()),
            DocumentError::NoChunks => AppError::conflict(e.to_string()),
        }
    }
}

/// The name an upload is kept under: its last path segment, without control characters,
/// trimmed to [`MAX_FILENAME_CHARS`]; `document` when nothing is left.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "document".into()
    } else {
        cleaned.to_owned()
    }
}

/// Stores `bytes` as a new document of `actor`'s, named `filename`, and queues its processing.
/// The kind is judged by the bytes and must be one of the configured kinds; the size at most
/// the configured maximum.
pub async fn upload(
    svc: &Services,
    actor: &Actor,
    filename: &str,
    bytes: Bytes,
) -> Result<DocumentRow, AppError> {
    let settings = &svc.documents;
    if bytes.len() > settings.max_bytes {
        return Err(AppError::invalid(
            "file",
            format!("must be at most {} bytes", settings.max_bytes),
        ));
    }
    if bytes.is_empty() {
        return Err(AppError::invalid("file", "the file is empty"));
    }
    let filename = clean_filename(filename);
    let accepted: Vec<&str> = settings.types.iter().map(|t| t.name()).collect();
    let kind = parse::sniff(&bytes, &filename)
        .filter(|k| settings.types.contains(k))
        .ok_or_else(|| {
            AppError::invalid(
                "file",
                format!(
                    "unsupported file type; accepted: {} (judged by the content)",
                    accepted.join(", ")
                ),
            )
        })?;
    let owner = actor.id();
    let document_id = Uuid::now_v7();
    let object_key = format!("documents/{owner}/{document_id}");
    let content_hash = chunk::hash_bytes(&bytes);
    let size = bytes.len() as u64;
    svc.objects
        .put(&ObjectPath::from(object_key.as_str()), bytes.into())
        .await
        .map_err(|e| AppError::internal("storing an uploaded document", e))?;
    let done = svc
        .commands
        .execute::<Document>(
            &document_id,
            DocumentCommand::Upload(DocumentUploaded {
                document_id,
                owner,
                filename,
                content_type: kind.media_type().to_owned(),
                bytes: size,
                content_hash,
                object_key,
                at: now(),
            }),
            actor.metadata(),
        )
        .await?;
    svc.visible(documents::NAME, done.appended.map(|a| a.last_position))
        .await?;
    queue(
        svc,
        document_id,
        DocumentStep::Parse,
        None,
        actor.correlation_id,
    )
    .await?;
    documents::get(&svc.db, document_id, owner)
        .await?
        .ok_or(AppError::bug("an uploaded document is not readable"))
}

async fn queue(
    svc: &Services,
    document_id: Uuid,
    step: DocumentStep,
    after: Option<u64>,
    correlation_id: Option<Uuid>,
) -> Result<(), AppError> {
    svc.jobs
        .push(Job::Document(ProcessDocument {
            document_id,
            step,
            after,
            correlation_id,
        }))
        .await?;
    Ok(())
}

/// One page of `actor`'s documents, newest first.
pub async fn list(
    svc: &Services,
    actor: &Actor,
    page: PageRequest,
) -> Result<Page<DocumentRow>, AppError> {
    let (items, total) = documents::list(&svc.db, actor.id(), page.limit, page.offset()).await?;
    Ok(Page {
        items,
        total,
        request: page,
    })
}

/// `actor`'s document `id` (another user's is not found).
pub async fn get(svc: &Services, actor: &Actor, id: Uuid) -> Result<DocumentRow, AppError> {
    documents::get(&svc.db, id, actor.id())
        .await?
        .ok_or(AppError::NotFound("document"))
}

/// Deletes `actor`'s document `id`: its chunks leave every index before this returns, and its
/// file leaves the object store.
pub async fn delete(svc: &Services, actor: &Actor, id: Uuid) -> Result<(), AppError> {
    let row = get(svc, actor, id).await?;
    let done = svc
        .commands
        .execute::<Document>(
            &id,
            DocumentCommand::Delete {
                actor: actor.id(),
                at: now(),
            },
            actor.metadata(),
        )
        .await?;
    svc.visible(documents::NAME, done.appended.map(|a| a.last_position))
        .await?;
    if let Err(e) = svc
        .objects
        .delete(&ObjectPath::from(row.object_key.as_str()))
        .await
    {
        // The record is gone; a stray file is only space.
        tracing::warn!(document = %id, error = %e, "could not remove a deleted document's file");
    }
    Ok(())
}

/// Runs `actor`'s document `id` through processing again (parsing if it never got its chunks,
/// embedding otherwise). Another user's document is forbidden, an unknown one not found.
pub async fn reprocess(svc: &Services, actor: &Actor, id: Uuid) -> Result<(), AppError> {
    let row = documents::get_any(&svc.db, id)
        .await?
        .ok_or(AppError::NotFound("document"))?;
    if row.owner_id != actor.id() {
        return Err(AppError::Forbidden(
            "the document belongs to another user".into(),
        ));
    }
    let done = svc
        .commands
        .execute::<Document>(
            &id,
            DocumentCommand::RequestProcessing {
                actor: actor.id(),
                at: now(),
            },
            actor.metadata(),
        )
        .await?;
    let pos = done.appended.map(|a| a.last_position);
    svc.visible(documents::NAME, pos).await?;
    let step = if row.chunks > 0 {
        DocumentStep::Embed
    } else {
        DocumentStep::Parse
    };
    queue(svc, id, step, pos, actor.correlation_id).await
}

/// Queues the next step of every document still processing (a crash between an append and a
/// push, a lost queue file), and the embedding of every ready document whose vectors are of
/// another model than the configured one: its new index is built beside the old one, which
/// retrieval keeps using until `document.ready` names the new model. The steps are
/// idempotent, so one queued twice does no harm. Returns how many were queued.
pub async fn requeue_processing(svc: &Services) -> Result<usize, AppError> {
    let ids = documents::processing(&svc.db).await?;
    for id in &ids {
        let step = match documents::get_any(&svc.db, *id).await? {
            Some(row) if row.chunks > 0 => DocumentStep::Embed,
            _ => DocumentStep::Parse,
        };
        queue(svc, *id, step, None, None).await?;
    }
    let stale = documents::ready_with_other_model(&svc.db, &svc.documents.embedding_model).await?;
    for id in &stale {
        queue(svc, *id, DocumentStep::Embed, None, None).await?;
    }
    if !stale.is_empty() {
        tracing::info!(
            documents = stale.len(),
            model = %svc.documents.embedding_model,
            "building the vector index of the configured embedding model beside the old one"
        );
    }
    Ok(ids.len() + stale.len())
}

/// The body of the document job: one step of one document.
pub async fn process(svc: &Services, job: &ProcessDocument) -> Result<(), AppError> {
    svc.visible(documents::NAME, job.after).await?;
    let (doc, _) =
        confab_eventstore::aggregate::load::<Document>(svc.store.as_ref(), &job.document_id)
            .await?;
    let Some(uploaded) = doc.uploaded.clone() else {
        return Err(AppError::NotFound("document"));
    };
    if doc.deleted {
        return Ok(());
    }
    let meta = metadata(Some(uploaded.owner), job.correlation_id);
    match job.step {
        DocumentStep::Parse if doc.chunked => {
            queue(
                svc,
                job.document_id,
                DocumentStep::Embed,
                None,
                job.correlation_id,
            )
            .await
        }
        DocumentStep::Parse => parse_and_chunk(svc, &uploaded, meta, job.correlation_id).await,
        DocumentStep::Embed if !doc.chunked => {
            queue(
                svc,
                job.document_id,
                DocumentStep::Parse,
                None,
                job.correlation_id,
            )
            .await
        }
        DocumentStep::Embed => {
            let rebuild = doc.status == confab_domain::document::Status::Ready;
            embed_chunks(svc, &uploaded, doc.chunks, rebuild, meta).await
        }
    }
}

/// Records `document.failed` with `reason` (unless the document was deleted meanwhile).
async fn fail(
    svc: &Services,
    id: Uuid,
    reason: String,
    meta: EventMetadata,
) -> Result<(), AppError> {
    tracing::info!(document = %id, %reason, "document processing failed");
    match svc
        .commands
        .execute::<Document>(&id, DocumentCommand::Fail { reason, at: now() }, meta)
        .await
    {
        Ok(_) => Ok(()),
        Err(confab_eventstore::aggregate::ExecuteError::Domain(DocumentError::NotFound)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(document = %uploaded.document_id))]
async fn parse_and_chunk(
    svc: &Services,
    uploaded: &DocumentUploaded,
    meta: EventMetadata,
    correlation_id: Option<Uuid>,
) -> Result<(), AppError> {
    let id = uploaded.document_id;
    let Some(kind) = DocType::from_media_type(&uploaded.content_type) else {
        let reason = format!("files of type {} are not accepted", uploaded.content_type);
        return fail(svc, id, reason, meta).await;
    };
    let got = match svc
        .objects
        .get(&ObjectPath::from(uploaded.object_key.as_str()))
        .await
    {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            let reason = "the uploaded file is gone; upload it again".to_owned();
            return fail(svc, id, reason, meta).await;
        }
        Err(e) => return Err(AppError::internal("reading an uploaded document", e)),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| AppError::internal("reading an uploaded document", e))?;
    let text = match parse::extract(kind, bytes.to_vec()).await {
        Ok(t) => t,
        Err(e) => return fail(svc, id, e.to_string(), meta).await,
    };
    let chunks = chunk::chunk(&text, kind.is_markdown(), svc.documents.sizing)
        .map_err(|e| AppError::internal("chunking a document", e))?;
    if chunks.is_empty() {
        return fail(svc, id, parse::ParseError::NoText.to_string(), meta).await;
    }
    let done = svc
        .commands
        .execute::<Document>(
            &id,
            DocumentCommand::RecordChunks { chunks, at: now() },
            meta,
        )
        .await?;
    queue(
        svc,
        id,
        DocumentStep::Embed,
        done.appended.map(|a| a.last_position),
        correlation_id,
    )
    .await
}

/// Where embeddings of `owner`'s documents are made: the owner's own key for the embedding
/// provider if they set one, else the configured provider.
async fn embedding_endpoint(svc: &Services, owner: Uuid) -> Result<Option<Endpoint>, AppError> {
    let provider = &svc.documents.embedding_provider;
    if let Some(own) = crate::ai::user_endpoint(svc, owner, provider).await? {
        return Ok(Some(own));
    }
    Ok(crate::ai::configured_endpoint(svc, provider))
}

#[tracing::instrument(skip_all, fields(document = %uploaded.document_id))]
async fn embed_chunks(
    svc: &Services,
    uploaded: &DocumentUploaded,
    chunks: u32,
    rebuild: bool,
    meta: EventMetadata,
) -> Result<(), AppError> {
    let id = uploaded.document_id;
    if documents::chunk_count(&svc.db, id).await? < u64::from(chunks) {
        return Err(AppError::bug("the document's chunks are not yet readable"));
    }
    let settings = &svc.documents;
    let model = settings.embedding_model.clone();
    let Some(endpoint) = embedding_endpoint(svc, uploaded.owner).await? else {
        if rebuild {
            tracing::warn!(document = %id, "no embeddings provider to re-index with; the document keeps its old vectors");
            return Ok(());
        }
        let reason = format!(
            "no embeddings provider is configured (provider {:?}); set OPENAI_API_KEY or \
             OPENAI_BASE_URL, or add your own key, then process the document again",
            settings.embedding_provider
        );
        return fail(svc, id, reason, meta).await;
    };
    let missing = documents::unembedded(&svc.db, id, &model).await?;
    let mut charged = None;
    for batch in missing.chunks(settings.batch.max(1)) {
        let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
        let embedded = match embed::embed(&endpoint, &svc.llm.policy, &model, &texts).await {
            Ok(e) => e,
            // A ready document being re-indexed stays ready on its old vectors: a refusal is
            // logged, an outage retried later.
            Err(embed::EmbedError::Refused(m)) if rebuild => {
                tracing::warn!(document = %id, model, reason = %m, "re-indexing refused; the document keeps its old vectors");
                return Ok(());
            }
            Err(e @ embed::EmbedError::Unavailable(_)) if rebuild => {
                return Err(AppError::Upstream {
                    message: e.to_string(),
                    details: crate::Details::new(),
                });
            }
            Err(embed::EmbedError::Refused(m)) => {
                let reason = format!(
                    "the embeddings provider refused the document ({m}); check the embedding \
                     model {model:?} and the key, then process it again"
                );
                return fail(svc, id, reason, meta).await;
            }
            Err(embed::EmbedError::Unavailable(m)) => {
                let reason = format!(
                    "the embeddings provider is unavailable ({m}); process the document again later"
                );
                return fail(svc, id, reason, meta).await;
            }
        };
        // Charged before the vectors are stored: a job killed in between embeds the same
        // batch again on its retry, whose charge (keyed by the batch's content) is already
        // recorded, so the uploader never pays twice for one batch.
        let position =
            charge_embedding(svc, uploaded, &model, batch, embedded.tokens, meta.clone()).await?;
        charged = charged.max(position);
        let rows: Vec<(String, Vec<f32>)> = batch
            .iter()
            .map(|(hash, _)| hash.clone())
            .zip(embedded.vectors)
            .collect();
        documents::store_embeddings(&svc.db, &model, &rows).await?;
        if let (true, confab_projections::ReadDb::Postgres(pool)) = (settings.pgvector, &svc.db) {
            confab_projections::pgvector::store(pool, &model, &rows).await?;
        }
        tracing::debug!(
            texts = texts.len(),
            tokens = embedded.tokens,
            "embedded a batch"
        );
    }
    // Whoever sees the document ready sees what it cost.
    if let Err(e) = svc
        .visible(confab_projections::credits::NAME, charged)
        .await
    {
        tracing::debug!(error = %e, "a document's charges were not yet readable when it became ready");
    }
    match svc
        .commands
        .execute::<Document>(
            &id,
            DocumentCommand::MarkReady {
                embedding_model: model,
                at: now(),
            },
            meta,
        )
        .await
    {
        Ok(_)
        | Err(confab_eventstore::aggregate::ExecuteError::Domain(DocumentError::NotFound)) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The key of a batch's charge: the document, the model, and a digest of the batch's chunk
/// hashes, so the same batch sent again (a retried job) has the same key.
fn charge_key(document: Uuid, model: &str, batch: &[(String, String)]) -> String {
    let hashes: Vec<&str> = batch.iter().map(|(h, _)| h.as_str()).collect();
    let digest = chunk::hash(&hashes.join(","));
    format!(
        "embedding:{document}:{model}:{}",
        &digest[..32.min(digest.len())]
    )
}

/// Charges the uploader of `uploaded` for embedding `batch` with `model`: `tokens` as the
/// provider reported them, at the catalogue's price (nothing when it prices the model at
/// zero), once per batch. Returns the position of the charge (none when already charged).
async fn charge_embedding(
    svc: &Services,
    uploaded: &DocumentUploaded,
    model: &str,
    batch: &[(String, String)],
    tokens: u64,
    meta: EventMetadata,
) -> Result<Option<u64>, AppError> {
    let amount = svc.catalogue.embedding_cost(model, tokens);
    crate::credits::run(
        svc,
        uploaded.owner,
        confab_domain::credits::CreditAction::Charge {
            charge_id: charge_key(uploaded.document_id, model, batch),
            amount,
            model: model.to_owned(),
            input_tokens: tokens,
            document_id: Some(uploaded.document_id),
        },
        meta,
    )
    .await
}

/// A chunk chosen for a reply's context.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Its document.
    pub document_id: Uuid,
    /// The document's name.
    pub filename: String,
    /// Its place in the document.
    pub chunk_index: u32,
    /// Its fused score (reciprocal rank fusion).
    pub score: f64,
    /// The text.
    pub text: String,
}

/// The constant of reciprocal rank fusion: a hit at rank r scores 1 / (K + r).
const RRF_K: f64 = 60.0;

/// The `top_k` chunks of `owner`'s `docs` most relevant to `query`: the lexical ranking
/// (FTS5 / tsvector, owner-scoped) and the vector ranking (cosine over the owner's chunk
/// vectors, through the in-memory [`index`]) fused by reciprocal rank. Without an embeddings
/// endpoint, or if it fails, the lexical ranking alone.
pub async fn retrieve(
    svc: &Services,
    owner: Uuid,
    docs: &[DocumentRow],
    query: &str,
    top_k: usize,
) -> Result<Vec<Source>, AppError> {
    let depth = u32::try_from(top_k.saturating_mul(4).max(20)).unwrap_or(u32::MAX);
    // The two rankings run side by side: the vector side waits on the query's embedding (a
    // round trip to the provider) while the lexical side asks the read model.
    let ids: Vec<Uuid> = docs.iter().map(|d| d.id).collect();
    let (per_doc, vector) = tokio::join!(
        documents::lexical_many(&svc.db, owner, &ids, query, depth),
        vector_ranking(svc, owner, docs, query, depth),
    );
    let (per_doc, vector) = (per_doc?, vector?);

    // Lexical: each document's ranking, interleaved so that every document's best come first.
    let mut rankings: Vec<Vec<ChunkRow>> = Vec::new();
    let mut lexical = Vec::new();
    let longest = per_doc.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for list in &per_doc {
            if let Some(c) = list.get(i) {
                lexical.push(c.clone());
            }
        }
    }
    rankings.push(lexical);
    if let Some(hits) = vector {
        // The vector side names chunks by place; their texts are read for those that win.
        rankings.push(
            hits.into_iter()
                .map(|h| ChunkRow {
                    document_id: h.document_id,
                    chunk_index: h.chunk_index,
                    text: String::new(),
                })
                .collect(),
        );
    }

    let mut fused = fuse(rankings, top_k);
    let missing: Vec<(Uuid, i32)> = fused
        .iter()
        .filter(|(_, c)| c.text.is_empty())
        .map(|(_, c)| (c.document_id, c.chunk_index))
        .collect();
    if !missing.is_empty() {
        let texts = documents::chunk_texts(&svc.db, owner, &missing).await?;
        for (_, c) in fused.iter_mut().filter(|(_, c)| c.text.is_empty()) {
            if let Some(t) = texts
                .iter()
                .find(|t| t.document_id == c.document_id && t.chunk_index == c.chunk_index)
            {
                c.text = t.text.clone();
            }
        }
    }
    let names: HashMap<Uuid, &str> = docs.iter().map(|d| (d.id, d.filename.as_str())).collect();
    Ok(fused
        .into_iter()
        .map(|(score, c)| Source {
            document_id: c.document_id,
            filename: names.get(&c.document_id).copied().unwrap_or("").to_owned(),
            chunk_index: u32::try_from(c.chunk_index).unwrap_or(0),
            score,
            text: c.text,
        })
        .collect())
}

/// The vector ranking of `docs` for `query`: each document's chunks in the index of the model
/// it was made ready with (so that while a new model's index is being built the old one still
/// answers), best `depth` first. `None` when no document has vectors or there is no embeddings
/// endpoint; a failed query embedding leaves that model out (retrieval goes on by words).
async fn vector_ranking(
    svc: &Services,
    owner: Uuid,
    docs: &[DocumentRow],
    query: &str,
    depth: u32,
) -> Result<Option<Vec<index::VectorHit>>, AppError> {
    let mut models: Vec<&str> = docs
        .iter()
        .filter_map(|d| d.embedding_model.as_deref())
        .collect();
    models.sort_unstable();
    models.dedup();
    if models.is_empty() {
        return Ok(None);
    }
    let Some(endpoint) = embedding_endpoint(svc, owner).await? else {
        return Ok(None);
    };
    let fast = CallPolicy {
        retries: 1,
        ..svc.llm.policy.clone()
    };
    let mut hits = Vec::new();
    for model in models {
        let q = match embed::embed(&endpoint, &fast, model, &[query.to_owned()]).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, model, "query embedding failed; retrieving by words alone");
                continue;
            }
        };
        let qv = q.vectors.into_iter().next().unwrap_or_default();
        let of_model = docs
            .iter()
            .filter(|d| d.embedding_model.as_deref() == Some(model));
        if let (true, confab_projections::ReadDb::Postgres(pool)) =
            (svc.documents.pgvector, &svc.db)
        {
            let ids: Vec<Uuid> = of_model.map(|d| d.id).collect();
            let near =
                confab_projections::pgvector::nearest(pool, owner, &ids, model, &qv, depth).await?;
            hits.extend(near.into_iter().map(|(document_id, chunk_index, score)| {
                index::VectorHit {
                    document_id,
                    chunk_index,
                    score,
                }
            }));
            continue;
        }
        let mut set = Vec::new();
        for d in of_model {
            set.push((
                d.id,
                svc.vectors
                    .document(&svc.db, owner, d.id, model, d.chunks.max(0) as usize)
                    .await?,
            ));
        }
        let candidates = (depth as usize * 8).max(index::MIN_CANDIDATES);
        hits.extend(index::nearest(&svc.db, model, &set, &qv, depth as usize, candidates).await?);
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(depth as usize);
    Ok(Some(hits))
}

/// Reciprocal rank fusion: a chunk at rank r (from 1) of a ranking scores 1 / (60 + r), its
/// scores summed over the rankings; the best `top_k`, best first (ties by document and place).
fn fuse(rankings: Vec<Vec<ChunkRow>>, top_k: usize) -> Vec<(f64, ChunkRow)> {
    let mut fused: HashMap<(Uuid, i32), (f64, ChunkRow)> = HashMap::new();
    for ranking in rankings {
        for (rank, c) in ranking.into_iter().enumerate() {
            let e = fused
                .entry((c.document_id, c.chunk_index))
                .or_insert_with(|| (0.0, c.clone()));
            if e.1.text.is_empty() {
                e.1.text = c.text;
            }
            e.0 += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut out: Vec<(f64, ChunkRow)> = fused.into_values().collect();
    out.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.document_id.cmp(&b.1.document_id))
            .then(a.1.chunk_index.cmp(&b.1.chunk_index))
    });
    out.truncate(top_k);
    out
}

/// What grounds a reply: the system message holding the chosen chunks, and those chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Grounding {
    /// The system message.
    pub turn: Turn,
    /// The chunks, best first, as recorded with the reply.
    pub sources: Vec<RecordedSource>,
    /// The embedding model of the documents' vectors.
    pub embedding_model: Option<String>,
}

/// The context a reply grounded on `document_ids` gets for `query`: a system message holding
/// the most relevant chunks, each under a numbered source marker, with the instruction to cite
/// them. Every id must be `owner`'s (else not found) and ready (else a conflict naming its
/// status). `None` without ids.
pub async fn context_for(
    svc: &Services,
    owner: Uuid,
    document_ids: &[Uuid],
    query: &str,
) -> Result<Option<Grounding>, AppError> {
    if document_ids.is_empty() {
        return Ok(None);
    }
    let mut docs: Vec<DocumentRow> = Vec::new();
    for id in document_ids {
        if docs.iter().any(|d| d.id == *id) {
            continue;
        }
        let d = documents::get(&svc.db, *id, owner)
            .await?
            .ok_or(AppError::NotFound("document"))?;
        if d.status != "ready" {
            let mut details = crate::Details::new();
            details.insert("documentId".into(), id.to_string().into());
            details.insert("status".into(), d.status.clone().into());
            return Err(AppError::Conflict {
                message: format!(
                    "document {id} is {} and cannot be used yet{}",
                    d.status,
                    d.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                details,
            });
        }
        docs.push(d);
    }
    let sources = retrieve(svc, owner, &docs, query, svc.documents.top_k).await?;
    let mut content = String::from(
        "Answer the user's question using the numbered sources below when they are relevant. \
         Cite every source you use with its marker, for example [1]. If the sources do not \
         hold the answer, say so.\n",
    );
    for (i, s) in sources.iter().enumerate() {
        content.push_str(&format!(
            "\n[{}] {} (part {})\n{}\n",
            i + 1,
            s.filename,
            s.chunk_index + 1,
            s.text.trim()
        ));
    }
    let embedding_model = docs.iter().find_map(|d| d.embedding_model.clone());
    Ok(Some(Grounding {
        turn: Turn {
            role: "system".into(),
            content,
        },
        sources: sources
            .into_iter()
            .map(|s| RecordedSource {
                document_id: s.document_id,
                filename: s.filename,
                chunk_index: s.chunk_index,
                score: s.score,
                text: s.text,
            })
            .collect(),
        embedding_model,
    }))
}

/// A source of a reply as shown now: its text is withheld once its document is deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownSource {
    /// As recorded.
    pub source: RecordedSource,
    /// Whether its document has been deleted since.
    pub deleted: bool,
}

/// What a reply was grounded on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplyProvenance {
    /// The model that answered (none for a message with no recorded sources).
    pub model: Option<String>,
    /// The embedding model of the vectors retrieval used.
    pub embedding_model: Option<String>,
    /// The chunks, best first.
    pub sources: Vec<ShownSource>,
}

/// The sources of message `message_id` in `actor`'s chat `chat_id` (another user's chat, or a
/// message not in it, is not found; a message not grounded on documents has none).
pub async fn reply_sources(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
    message_id: Uuid,
) -> Result<ReplyProvenance, AppError> {
    confab_projections::chats::get_chat(&svc.db, chat_id, actor.id())
        .await?
        .ok_or(AppError::NotFound("chat"))?;
    confab_projections::chats::get_message(&svc.db, chat_id, message_id)
        .await?
        .ok_or(AppError::NotFound("message"))?;
    let (recorded, _) =
        confab_eventstore::aggregate::load::<ReplySources>(svc.store.as_ref(), &message_id).await?;
    let Some(r) = recorded.recorded.filter(|r| r.chat_id == chat_id) else {
        return Ok(ReplyProvenance::default());
    };
    let mut sources = Vec::with_capacity(r.sources.len());
    for mut source in r.sources {
        let live = documents::get(&svc.db, source.document_id, actor.id())
            .await?
            .is_some();
        if !live {
            source.text.clear();
        }
        sources.push(ShownSource {
            source,
            deleted: !live,
        });
    }
    Ok(ReplyProvenance {
        model: Some(r.model),
        embedding_model: r.embedding_model,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(doc: u128, index: i32) -> ChunkRow {
        ChunkRow {
            document_id: Uuid::from_u128(doc),
            chunk_index: index,
            text: format!("{doc}/{index}"),
        }
    }

    fn places(fused: &[(f64, ChunkRow)]) -> Vec<(u128, i32)> {
        fused
            .iter()
            .map(|(_, c)| (c.document_id.as_u128(), c.chunk_index))
            .collect()
    }

    #[test]
    fn fusion_favours_chunks_both_rankings_agree_on() {
        let lexical = vec![row(1, 0), row(1, 1)];
        let vector = vec![row(1, 1), row(1, 9)];
        let fused = fuse(vec![lexical, vector], 3);
        // 1/1 is found by both; 1/0 and 1/9 by one each, 1/0 higher.
        assert_eq!(places(&fused), [(1, 1), (1, 0), (1, 9)]);
        assert!((fused[0].0 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
        assert_eq!(fused[0].1.text, "1/1");
    }

    #[test]
    fn fusion_keeps_the_top_k_and_breaks_ties_by_place() {
        let fused = fuse(vec![vec![row(2, 0)], vec![row(1, 3)]], 5);
        assert_eq!(places(&fused), [(1, 3), (2, 0)]);
        assert_eq!(fuse(vec![vec![row(1, 0), row(1, 1)]], 1).len(), 1);
        assert!(fuse(vec![], 5).is_empty());
    }

    #[test]
    fn filenames_lose_their_path_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\docs\\a b.pdf"), "a b.pdf");
        assert_eq!(clean_filename("bad\u{0}name\n.txt"), "badname.txt");
        assert_eq!(clean_filename("  "), "document");
        assert_eq!(clean_filename(&"x".repeat(300)).len(), MAX_FILENAME_CHARS);
    }
}
