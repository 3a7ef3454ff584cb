//! Documents and retrieval (issue 14), on SQLite and PostgreSQL: uploads judged by their bytes
//! and bounded in size, the parse → chunk → embed pipeline in the document worker (against the
//! OpenAI stand-in's embeddings), every kind of file parsed to its text, a hostile file failing
//! only its document, ownership everywhere, chats grounded on the relevant chunk, deletion
//! removing the chunks from retrieval, and re-processing.

use crate::helpers::{
    Db, Killed, Queue, TestApp, assert_error, confab_command, database_for, eventually, free_port,
    listening, on_both, parts, png, poll, spawn_app_on, spawn_app_with, spawn_quiet,
};
use confab::Config;
use confab_projections::ReadDb;
use confab_testkit::openai::{Act, OpenAiStandIn};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::time::Duration;

on_both!(
    a_markdown_upload_is_chunked_embedded_listed_and_read,
    every_kind_of_file_is_parsed_to_its_text,
    uploads_of_the_wrong_kind_or_size_are_refused,
    a_hostile_pdf_fails_its_document_and_the_server_stays_healthy,
    another_users_documents_are_invisible,
    a_chat_with_documents_sends_the_relevant_chunk_and_not_an_irrelevant_one,
    a_document_not_ready_cannot_ground_a_chat,
    deleting_a_document_removes_its_chunks_from_retrieval,
    identical_chunks_are_embedded_once,
    a_refused_embedding_fails_the_document_and_rag_processes_it_again,
    a_rate_limited_embeddings_call_is_retried,
    changing_the_embedding_model_builds_the_new_index_while_the_old_one_answers,
    a_grounded_answer_lists_its_sources_even_after_its_document_is_deleted,
    a_process_killed_mid_embedding_resumes_without_duplicates,
    embedding_usage_is_charged_to_the_uploader_once_per_batch,
    an_embedding_model_priced_at_zero_is_charged_nothing,
    document_jobs_are_queued_where_the_database_says,
    projections_status_shows_the_rebuild_of_a_new_embedding_model,
);

/// The app with the stand-in as the `openai` provider (chat and embeddings) and small chunks.
async fn app(db: Db, up: &OpenAiStandIn, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(db, |c| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.llm_first_token_timeout_ms = 2_000;
        c.llm_retries = 2;
        c.llm_backoff_ms = 20;
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
        tweak(c);
    })
    .await
}

async fn upload(
    app: &TestApp,
    token: Option<&str>,
    field: &str,
    name: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let part = Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str("application/octet-stream")
        .expect("mime");
    let form = Form::new().part(field.to_owned(), part);
    parts(
        app.request(Method::POST, "/api/upload", token)
            .multipart(form)
            .send()
            .await
            .expect("upload"),
    )
    .await
}

/// Uploads `bytes` as `name` and returns the new document's id.
async fn uploaded(app: &TestApp, token: &str, name: &str, bytes: Vec<u8>) -> String {
    let (status, body) = upload(app, Some(token), "file", name, bytes).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "processing");
    body["documentId"].as_str().expect("documentId").to_owned()
}

/// Waits until document `id` has left `processing`, and returns it.
async fn settled(app: &TestApp, token: &str, id: &str) -> Value {
    let path = format!("/api/documents/{id}");
    let (status, doc) = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || app.get(&path, Some(token)),
        |(status, doc)| *status != 200 || doc["status"] != "processing",
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_ne!(doc["status"], "processing", "still processing: {doc}");
    doc
}

/// Document `id`'s chunk texts as the read model holds them, in order.
async fn chunk_texts(app: &TestApp, id: &str) -> Vec<String> {
    let id: uuid::Uuid = id.parse().expect("uuid");
    let rows: Vec<(String,)> = match app.read_db().await {
        ReadDb::Sqlite(p) => sqlx::query_as(
            "SELECT text FROM document_chunks WHERE document_id = $1 ORDER BY chunk_index",
        )
        .bind(id)
        .fetch_all(&p)
        .await
        .expect("chunks"),
        ReadDb::Postgres(p) => sqlx::query_as(
            "SELECT text FROM document_chunks WHERE document_id = $1 ORDER BY chunk_index",
        )
        .bind(id)
        .fetch_all(&p)
        .await
        .expect("chunks"),
    };
    rows.into_iter().map(|(t,)| t).collect()
}

fn words(word: &str, n: usize) -> String {
    vec![word; n].join(" ")
}

/// Two Markdown sections about unrelated things.
fn two_topics() -> Vec<u8> {
    format!(
        "# Volcanoes\n\n{} magma erupts from the crater.\n\n# Orchids\n\n{} petals bloom in the greenhouse.\n",
        words("volcano", 30),
        words("orchid", 30)
    )
    .into_bytes()
}

/// A one-page PDF showing `text`.
pub fn pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.push_str(&format!("{} 0 obj\n{body}\nendobj\n", i + 1));
    }
    let xref = out.len();
    out.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for o in offsets {
        out.push_str(&format!("{o:010} 00000 n \n"));
    }
    out.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    out.into_bytes()
}

/// A Word document: a heading and a paragraph, its parts in the order Word writes them.
fn docx(heading: &str, paragraph: &str) -> Vec<u8> {
    use std::io::Write;
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>{heading}</w:t></w:r></w:p>
<w:p><w:r><w:t>{paragraph}</w:t></w:r></w:p></w:body></w:document>"#
    );
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in [
        (
            "[Content_Types].xml",
            r#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#.to_owned(),
        ),
        (
            "_rels/.rels",
            r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#.to_owned(),
        ),
        ("word/document.xml", document),
    ] {
        zip.start_file(name, opts).expect("entry");
        zip.write_all(body.as_bytes()).expect("write");
    }
    zip.finish().expect("zip").into_inner()
}

async fn a_markdown_upload_is_chunked_embedded_listed_and_read(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("docs@example.com").await;
    let (status, body) = upload(&app, Some(&token), "file", "notes.md", two_topics()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["filename"], "notes.md");
    assert_eq!(body["status"], "processing");
    let id = body["documentId"].as_str().unwrap().to_owned();

    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["contentType"], "text/markdown");
    assert_eq!(doc["bytes"], two_topics().len());
    assert_eq!(doc["embeddingModel"], "text-embedding-3-small");
    assert_eq!(doc["error"], Value::Null);
    assert!(doc["chunks"].as_i64().unwrap() >= 2, "{doc}");
    assert!(doc["createdAt"].is_string() && doc["updatedAt"].is_string());
    let texts = chunk_texts(&app, &id).await;
    assert_eq!(texts.len() as i64, doc["chunks"].as_i64().unwrap());
    assert!(texts[0].starts_with("# Volcanoes"), "{texts:?}");

    // The embeddings went through the configured provider, with its key and the model.
    let calls = up.embedding_requests();
    assert!(!calls.is_empty());
    assert_eq!(calls[0].authorization, "Bearer server-key");
    assert_eq!(calls[0].body["model"], "text-embedding-3-small");

    // Newest first, paged.
    let second = uploaded(&app, &token, "b.txt", b"plain words".to_vec()).await;
    let (s, page) = app.get("/api/documents?page=1&limit=1", Some(&token)).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["total"], 2);
    assert_eq!(
        (page["page"].clone(), page["limit"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(page["documents"][0]["id"], second.as_str());
    let (s, page) = app.get("/api/documents?page=2&limit=1", Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(page["documents"][0]["id"], id.as_str());
    let (s, body) = app.get("/api/documents?limit=0", Some(&token)).await;
    assert_eq!(s, 400);
    assert_error(&body, "validation_error");
    let (s, _) = app.get("/api/documents", None).await;
    assert_eq!(s, 401);
    app.shutdown().await;
}

async fn every_kind_of_file_is_parsed_to_its_text(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("kinds@example.com").await;
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(
        "Grüße aus UTF-16"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes()),
    );
    let html = b"<!DOCTYPE html><html><head><style>p{}</style></head><body>\
        <h1>Harbour Guide</h1><p>Boats <em>dock</em> at pier nine.</p></body></html>"
        .to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, Vec<&str>)> = vec![
        (
            "report.pdf",
            pdf("Lighthouse keepers log the tides"),
            "application/pdf",
            vec!["Lighthouse keepers log the tides"],
        ),
        (
            "memo.docx",
            docx("Budget Memo", "Spending stays flat this year."),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            vec!["# Budget Memo", "Spending stays flat this year."],
        ),
        (
            "guide.html",
            html,
            "text/html",
            vec!["# Harbour Guide", "at pier nine."],
        ),
        (
            "readme.md",
            b"## Setup\n\nRun the *installer* first.\n".to_vec(),
            "text/markdown",
            vec!["## Setup\n\nRun the *installer* first."],
        ),
        (
            "greeting.txt",
            utf16,
            "text/plain",
            vec!["Grüße aus UTF-16"],
        ),
    ];
    for (name, bytes, media_type, expected) in cases {
        let id = uploaded(&app, &token, name, bytes).await;
        let doc = settled(&app, &token, &id).await;
        assert_eq!(doc["status"], "ready", "{name}: {doc}");
        assert_eq!(doc["contentType"], media_type, "{name}");
        let text = chunk_texts(&app, &id).await.join("\n");
        for e in expected {
            assert!(text.contains(e), "{name}: {e:?} not in {text:?}");
        }
        assert!(
            !text.contains('<') && !text.contains("p{}"),
            "{name}: {text:?}"
        );
    }
    app.shutdown().await;
}

async fn uploads_of_the_wrong_kind_or_size_are_refused(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |c| {
        c.upload_max_bytes = 2_000;
        c.upload_types = "txt,md,pdf".into();
    })
    .await;
    let (token, _) = app.sign_up("refused@example.com").await;
    let t = Some(token.as_str());

    let (s, body) = upload(&app, None, "file", "a.txt", b"hello".to_vec()).await;
    assert_eq!(s, 401, "{body}");
    // An image named like text is judged by its bytes.
    let (s, body) = upload(&app, t, "file", "a.txt", png(4, 4)).await;
    assert_eq!(s, 400, "{body}");
    assert_error(&body, "validation_error");
    assert!(body["error"]["details"]["file"].is_string(), "{body}");
    // A kind that exists but is not configured.
    let (s, body) = upload(&app, t, "file", "a.docx", docx("A", "b")).await;
    assert_eq!(s, 400, "{body}");
    // Binary junk, an empty file, a wrong field.
    let (s, _) = upload(&app, t, "file", "a.txt", vec![0, 159, 146, 150, 0, 1]).await;
    assert_eq!(s, 400);
    let (s, _) = upload(&app, t, "file", "a.txt", vec![]).await;
    assert_eq!(s, 400);
    let (s, body) = upload(&app, t, "document", "a.txt", b"hello".to_vec()).await;
    assert_eq!(s, 400, "{body}");
    // Over the configured size: 400 naming the file (API.md); a body beyond the size and the
    // form's framing is cut off by the body limit: 413.
    let (s, body) = upload(&app, t, "file", "a.txt", vec![b'a'; 2_001]).await;
    assert_eq!(s, 400, "{body}");
    assert_error(&body, "validation_error");
    assert!(body["error"]["details"]["file"].is_string(), "{body}");
    // (On its own connection: the server may close it before reading the whole body.)
    let form = Form::new().part("file", Part::bytes(vec![b'a'; 200_000]).file_name("a.txt"));
    let r = reqwest::Client::new()
        .post(format!("{}/api/upload", app.base))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(
            r.status().as_u16(),
            400,
            "refused at the file's first bytes over the size"
        );
    }
    // Not a form at all.
    let (s, body) = app.post("/api/upload", t, &json!({"file": "x"})).await;
    assert_eq!(s, 415, "{body}");
    // Nothing was stored.
    let (_, page) = app.get("/api/documents", t).await;
    assert_eq!(page["total"], 0, "{page}");
    // Exactly the limit is fine.
    let (s, body) = upload(&app, t, "file", "a.txt", vec![b'a'; 2_000]).await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

async fn a_hostile_pdf_fails_its_document_and_the_server_stays_healthy(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("hostile@example.com").await;
    // A PDF header over garbage: the parser gives up; nothing panics past the job.
    let mut junk = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\n".to_vec();
    junk.extend((0..5_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let id = uploaded(&app, &token, "evil.pdf", junk).await;
    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    let reason = doc["error"].as_str().expect("a reason");
    assert!(reason.contains("PDF") || reason.contains("pdf"), "{reason}");
    assert_eq!(doc["chunks"], 0);
    // A PDF with no text at all fails with what to do about it.
    let id = uploaded(&app, &token, "blank.pdf", pdf("")).await;
    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("no text"), "{doc}");
    // The server still serves, and processes the next document.
    let (s, _) = app.get("/healthz", None).await;
    assert_eq!(s, 200);
    let id = uploaded(&app, &token, "fine.txt", b"all good here".to_vec()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    app.shutdown().await;
}

async fn another_users_documents_are_invisible(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (10, 10), Duration::ZERO));
    let app = app(db, &up, |_| {}).await;
    let (alice, _) = app.sign_up("alice@example.com").await;
    let (bob, _) = app.sign_up("bob@example.com").await;
    let id = uploaded(&app, &alice, "secret.md", two_topics()).await;
    assert_eq!(settled(&app, &alice, &id).await["status"], "ready");

    let path = format!("/api/documents/{id}");
    let (s, body) = app.get(&path, Some(&bob)).await;
    assert_eq!(s, 404, "{body}");
    assert_error(&body, "not_found");
    assert_eq!(app.delete(&path, &bob).await, 404);
    let (_, page) = app.get("/api/documents", Some(&bob)).await;
    assert_eq!(page["total"], 0);
    let (s, body) = app
        .post("/api/rag", Some(&bob), &json!({ "documentId": id }))
        .await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "forbidden");
    let ask = json!({
        "messages": [{ "role": "user", "content": "volcano?" }],
        "documentIds": [id],
    });
    let (s, body) = app.post("/api/chat", Some(&bob), &ask).await;
    assert_eq!(s, 404, "{body}");
    // Unknown ids and malformed ones.
    let unknown = uuid::Uuid::now_v7();
    let (s, _) = app
        .post("/api/rag", Some(&alice), &json!({ "documentId": unknown }))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .post(
            "/api/rag",
            Some(&alice),
            &json!({ "documentId": "not-a-uuid" }),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app.post("/api/rag", Some(&alice), &json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = app.get("/api/documents/not-a-uuid", Some(&alice)).await;
    assert_eq!(s, 400);
    // Alice still has it, untouched.
    let (s, doc) = app.get(&path, Some(&alice)).await;
    assert_eq!((s, doc["status"].clone()), (200, json!("ready")));
    // Bob asked nothing of the provider.
    assert!(up.requests().is_empty());
    app.shutdown().await;
}

/// The system message of the last chat request the stand-in saw.
fn grounding(up: &OpenAiStandIn) -> String {
    let last = up.requests().pop().expect("a chat request");
    let messages = last.body["messages"].as_array().expect("messages").clone();
    assert_eq!(messages[0]["role"], "system", "{messages:?}");
    messages[0]["content"].as_str().expect("content").to_owned()
}

async fn a_chat_with_documents_sends_the_relevant_chunk_and_not_an_irrelevant_one(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["See [1]."], (10, 10), Duration::ZERO));
    let app = app(db, &up, |c| c.rag_top_k = 1).await;
    let (token, _) = app.sign_up("grounded@example.com").await;
    let id = uploaded(&app, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");

    for (question, wanted, unwanted) in [
        ("Tell me about the volcano magma", "volcano", "orchid"),
        ("Which orchid petals bloom?", "orchid", "volcano"),
    ] {
        let ask = json!({
            "messages": [{ "role": "user", "content": question }],
            "documentIds": [id],
        });
        let r = app
            .request(Method::POST, "/api/chat", Some(&token))
            .json(&ask)
            .send()
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "See [1].");
        let context = grounding(&up);
        assert!(context.contains("[1] topics.md"), "{context}");
        assert!(context.contains("Cite"), "{context}");
        assert!(context.contains(wanted), "{question}: {context}");
        assert!(!context.contains(unwanted), "{question}: {context}");
        // The question itself still follows.
        let last = up.requests().pop().unwrap();
        let messages = last.body["messages"].as_array().unwrap().clone();
        assert_eq!(messages.last().unwrap()["content"], question);
    }
    app.shutdown().await;
}

async fn a_document_not_ready_cannot_ground_a_chat(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (10, 10), Duration::ZERO));
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("early@example.com").await;
    let id = uploaded(&app, &token, "blank.pdf", pdf("")).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "failed");
    let ask = json!({
        "messages": [{ "role": "user", "content": "anything?" }],
        "documentIds": [id],
    });
    let (s, body) = app.post("/api/chat", Some(&token), &ask).await;
    assert_eq!(s, 409, "{body}");
    assert_error(&body, "conflict");
    assert_eq!(body["error"]["details"]["status"], "failed", "{body}");
    assert_eq!(
        body["error"]["details"]["documentId"],
        id.as_str(),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{body}"
    );
    assert!(up.requests().is_empty());
    // Too many ids is a validation error of this route (422).
    let many: Vec<String> = (0..21).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let ask = json!({
        "messages": [{ "role": "user", "content": "anything?" }],
        "documentIds": many,
    });
    let (s, _) = app.post("/api/chat", Some(&token), &ask).await;
    assert_eq!(s, 422);
    app.shutdown().await;
}

async fn deleting_a_document_removes_its_chunks_from_retrieval(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (10, 10), Duration::ZERO));
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("deleter@example.com").await;
    let gone = uploaded(&app, &token, "gone.md", two_topics()).await;
    let kept = uploaded(
        &app,
        &token,
        "kept.md",
        format!("# Rivers\n\n{}\n", words("river", 20)).into_bytes(),
    )
    .await;
    assert_eq!(settled(&app, &token, &gone).await["status"], "ready");
    assert_eq!(settled(&app, &token, &kept).await["status"], "ready");
    assert!(!chunk_texts(&app, &gone).await.is_empty());

    assert_eq!(
        app.delete(&format!("/api/documents/{gone}"), &token).await,
        204
    );
    let (s, _) = app
        .get(&format!("/api/documents/{gone}"), Some(&token))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        app.delete(&format!("/api/documents/{gone}"), &token).await,
        404
    );
    assert!(chunk_texts(&app, &gone).await.is_empty());
    // Neither index finds its words any more: lexical and vector retrieval read the chunks.
    let db_handle = app.read_db().await;
    let owner: uuid::Uuid = app.me(&token).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let gone_id: uuid::Uuid = gone.parse().unwrap();
    let lexical = confab_projections::documents::lexical(&db_handle, owner, gone_id, "volcano", 10)
        .await
        .unwrap();
    assert!(lexical.is_empty());
    let vectors = confab_projections::documents::vectors(
        &db_handle,
        owner,
        gone_id,
        "text-embedding-3-small",
    )
    .await
    .unwrap();
    assert!(vectors.is_empty());
    // A later answer cannot use it, and one grounded on the other document never sees it.
    let ask = |ids: Vec<&str>| json!({ "messages": [{ "role": "user", "content": "volcano magma river" }], "documentIds": ids });
    let (s, _) = app.post("/api/chat", Some(&token), &ask(vec![&gone])).await;
    assert_eq!(s, 404);
    let r = app
        .request(Method::POST, "/api/chat", Some(&token))
        .json(&ask(vec![&kept]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let context = grounding(&up);
    assert!(
        context.contains("river") && !context.contains("volcano"),
        "{context}"
    );
    let (_, page) = app.get("/api/documents", Some(&token)).await;
    assert_eq!(page["total"], 1);
    app.shutdown().await;
}

async fn identical_chunks_are_embedded_once(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("twice@example.com").await;
    let first = uploaded(&app, &token, "a.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &first).await["status"], "ready");
    let inputs = |up: &OpenAiStandIn| -> usize {
        up.embedding_requests()
            .iter()
            .map(|r| r.body["input"].as_array().map_or(1, Vec::len))
            .sum()
    };
    let after_first = inputs(&up);
    assert!(after_first >= 2);
    let second = uploaded(&app, &token, "copy.md", two_topics()).await;
    let doc = settled(&app, &token, &second).await;
    assert_eq!(doc["status"], "ready");
    assert_eq!(
        inputs(&up),
        after_first,
        "the copy's chunks were embedded again"
    );
    app.shutdown().await;
}

async fn a_refused_embedding_fails_the_document_and_rag_processes_it_again(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.embeddings_then(400);
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("again@example.com").await;
    let id = uploaded(&app, &token, "a.txt", b"some text to embed".to_vec()).await;
    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("refused"), "{doc}");
    assert_eq!(doc["chunks"], 1);

    let (s, body) = app
        .post("/api/rag", Some(&token), &json!({ "documentId": id }))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({ "success": true, "message": "Document processing started" })
    );
    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["error"], Value::Null);
    // Run again when already ready: nothing changes but the status cycle.
    let (s, _) = app
        .post("/api/rag", Some(&token), &json!({ "documentId": id }))
        .await;
    assert_eq!(s, 200);
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    app.shutdown().await;
}

async fn a_rate_limited_embeddings_call_is_retried(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.embeddings_then(429).embeddings_then(503);
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("busy@example.com").await;
    let id = uploaded(&app, &token, "a.txt", b"retry me please".to_vec()).await;
    let doc = settled(&app, &token, &id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(up.embedding_requests().len(), 3);
    app.shutdown().await;
}

async fn changing_the_embedding_model_builds_the_new_index_while_the_old_one_answers(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["ok"], (10, 10), Duration::ZERO));
    let mut first = app(db, &up, |c| c.embedding_model = "model-a".into()).await;
    let (token, _) = first.sign_up("switch@example.com").await;
    let id = uploaded(&first, &token, "topics.md", two_topics()).await;
    let doc = settled(&first, &token, &id).await;
    assert_eq!(doc["embeddingModel"], "model-a", "{doc}");
    // The same deployment restarts with another model (same database and data directory).
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().expect("tempdir"));
    let (data_dir, url) = (first.data_dir.clone(), first.database_url.clone());
    first.shutdown().await;
    let app = spawn_app_on(url, |c| {
        c.data_dir = data_dir;
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
        c.rag_top_k = 1;
        c.embedding_model = "model-b".into();
    })
    .await;
    // Retrieval answers throughout: from the old index until the new one is complete.
    let ask = json!({
        "messages": [{ "role": "user", "content": "volcano magma" }],
        "documentIds": [id],
    });
    let path = format!("/api/documents/{id}");
    let mut switched = false;
    for _ in 0..100 {
        let r = app
            .request(Method::POST, "/api/chat", Some(&token))
            .json(&ask)
            .send()
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
        r.text().await.expect("reply");
        let context = grounding(&up);
        assert!(
            context.contains("volcano") && !context.contains("orchid"),
            "{context}"
        );
        let (_, doc) = app.get(&path, Some(&token)).await;
        assert_eq!(doc["status"], "ready", "{doc}");
        if doc["embeddingModel"] == "model-b" {
            switched = true;
            break;
        }
    }
    assert!(switched, "the document never switched to the new model");
    assert!(
        up.embedding_requests()
            .iter()
            .any(|r| r.body["model"] == "model-b" && r.body["input"].is_array())
    );
    app.shutdown().await;
    drop(dir);
}

async fn a_grounded_answer_lists_its_sources_even_after_its_document_is_deleted(db: Db) {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["Magma, see [1]."], (10, 10), Duration::ZERO));
    let app = app(db, &up, |c| c.rag_top_k = 1).await;
    let (token, _) = app.sign_up("sources@example.com").await;
    let (other, _) = app.sign_up("sources-other@example.com").await;
    let id = uploaded(&app, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    let ask = json!({
        "messages": [{ "role": "user", "content": "What erupts from the volcano?" }],
        "documentIds": [id],
    });
    let r = app
        .request(Method::POST, "/api/chat", Some(&token))
        .json(&ask)
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let chat = r.headers()["x-chat-id"].to_str().unwrap().to_owned();
    r.text().await.unwrap();
    let (s, page) = app
        .get(&format!("/api/chats/{chat}/messages"), Some(&token))
        .await;
    assert_eq!(s, 200, "{page}");
    let messages = page["messages"].as_array().unwrap().clone();
    let find = |role: &str| {
        messages
            .iter()
            .find(|m| m["role"] == role)
            .and_then(|m| m["id"].as_str())
            .unwrap_or_else(|| panic!("a {role} message in {messages:?}"))
            .to_owned()
    };
    let (question, answer) = (find("user"), find("assistant"));
    let path = format!("/api/chats/{chat}/messages/{answer}/sources");

    let (s, body) = app.get(&path, Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["embeddingModel"], "text-embedding-3-small");
    assert!(body["model"].is_string(), "{body}");
    let sources = body["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{body}");
    assert_eq!(sources[0]["documentId"], id.as_str());
    assert_eq!(sources[0]["filename"], "topics.md");
    assert_eq!(sources[0]["chunkIndex"], 0);
    assert_eq!(sources[0]["deleted"], false);
    assert!(sources[0]["score"].as_f64().unwrap() > 0.0);
    assert!(
        sources[0]["text"].as_str().unwrap().contains("volcano"),
        "{body}"
    );

    // The question was not grounded on anything; others see nothing.
    let (s, body) = app
        .get(
            &format!("/api/chats/{chat}/messages/{question}/sources"),
            Some(&token),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({ "model": null, "embeddingModel": null, "sources": [] })
    );
    let (s, _) = app.get(&path, Some(&other)).await;
    assert_eq!(s, 404);
    let unknown = uuid::Uuid::now_v7();
    let (s, _) = app
        .get(
            &format!("/api/chats/{chat}/messages/{unknown}/sources"),
            Some(&token),
        )
        .await;
    assert_eq!(s, 404);

    // After the document is deleted the source is still listed, marked, without its text.
    assert_eq!(
        app.delete(&format!("/api/documents/{id}"), &token).await,
        204
    );
    let (s, body) = app.get(&path, Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    let source = &body["sources"][0];
    assert_eq!(source["deleted"], true, "{body}");
    assert_eq!(source["text"], Value::Null);
    assert_eq!(source["filename"], "topics.md");
    app.shutdown().await;
}

/// `confab serve` as a child process on `dir` (and `database_url`), with the stand-in as its
/// provider and one chunk per embeddings request.
async fn serve_process(
    dir: &std::path::Path,
    database_url: Option<&str>,
    up: &OpenAiStandIn,
) -> (Killed, String) {
    let port = free_port();
    let mut cmd = confab_command();
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("CONFAB_DATA_DIR", dir)
        .env("CONFAB_AUTO_MIGRATE", "true")
        .env("CONFAB_RATE_LIMIT_ENABLED", "false")
        .env("OPENAI_BASE_URL", up.base_url())
        .env("OPENAI_API_KEY", "server-key")
        .env("CONFAB_LLM_FIRST_TOKEN_TIMEOUT_MS", "120000")
        .env("CONFAB_EMBEDDING_BATCH", "1")
        .env("CONFAB_DOCUMENT_WORKER_CONCURRENCY", "1")
        .env("CONFAB_CHUNK_TOKENS", "60")
        .env("CONFAB_CHUNK_OVERLAP", "0")
        .env("RUST_LOG", "warn");
    if let Some(url) = database_url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    let child = spawn_quiet(&mut cmd);
    assert!(listening(port).await, "confab serve did not start");
    (child, format!("http://127.0.0.1:{port}"))
}

async fn a_process_killed_mid_embedding_resumes_without_duplicates(db: Db) {
    let up = OpenAiStandIn::start().await;
    // Two chunks are embedded, the third request never answers: the process dies waiting.
    up.embeddings_then(200)
        .embeddings_then(200)
        .embeddings_then(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database_for(db).await;
    let (mut first, base) = serve_process(dir.path(), url.as_deref(), &up).await;
    let http = reqwest::Client::new();
    let signed: Value = http
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({ "email": "killed@example.com", "password": "password123", "name": "K" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signed["token"].as_str().expect("token").to_owned();
    let text: String = ["rivers", "forests", "deserts", "glaciers", "islands"]
        .iter()
        .map(|w| format!("# {w}\n\n{}\n\n", words(w, 30)))
        .collect();
    let form = Form::new().part("file", Part::bytes(text.into_bytes()).file_name("geo.md"));
    let uploaded: Value = http
        .post(format!("{base}/api/upload"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = uploaded["documentId"]
        .as_str()
        .expect("documentId")
        .to_owned();
    assert!(
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async { up.embedding_requests().len() >= 3 }
        )
        .await,
        "the third embeddings request never came"
    );
    first.kill();

    // A new process on the same data: the document resumes where it stood.
    let (_second, base) = serve_process(dir.path(), url.as_deref(), &up).await;
    let doc = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let r = http
                .get(format!("{base}/api/documents/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        },
        |doc| doc["status"] != "processing",
    )
    .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    let n = doc["chunks"].as_i64().unwrap();
    assert!(n >= 4, "{doc}");
    // Every chunk was sent; the two embedded before the kill were not sent again.
    let inputs: Vec<String> = up
        .embedding_requests()
        .iter()
        .flat_map(|r| r.body["input"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap_or("").to_owned())
        .collect();
    let mut distinct = inputs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len() as i64, n, "{inputs:?}");
    for before in &inputs[..2] {
        assert_eq!(
            inputs.iter().filter(|i| *i == before).count(),
            1,
            "{before:?} sent twice"
        );
    }
    // One row per chunk and one vector per chunk: nothing recorded twice.
    let count = |sql: &'static str| {
        let url = url.clone();
        let file = dir.path().join("confab.db");
        async move {
            match url {
                Some(u) => {
                    let p = sqlx::PgPool::connect(&u).await.unwrap();
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&p)
                        .await
                        .unwrap()
                }
                None => {
                    let p = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
                        .await
                        .unwrap();
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&p)
                        .await
                        .unwrap()
                }
            }
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM document_chunks").await, n);
    assert_eq!(count("SELECT COUNT(*) FROM chunk_embeddings").await, n);
    // One embedding charge per batch (one chunk each), none twice.
    let history: Value = http
        .get(format!(
            "{base}/api/billing/credit-history?type=usage&limit=100"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let usage = history["transactions"].as_array().expect("transactions");
    assert_eq!(usage.len() as i64, n, "{history:#}");
    assert!(
        usage
            .iter()
            .all(|t| t["reference"]["documentId"] == id.as_str())
    );
}

/// The usage transactions of the embedding model in `token`'s credit history, oldest first.
async fn embedding_usage(app: &TestApp, token: &str, model: &str) -> Vec<Value> {
    let history = app.credit_history(token, "?type=usage&limit=100").await;
    let mut usage: Vec<Value> = history["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .filter(|t| t["reference"]["model"] == model)
        .cloned()
        .collect();
    usage.reverse();
    usage
}

async fn embedding_usage_is_charged_to_the_uploader_once_per_batch(db: Db) {
    let up = OpenAiStandIn::start().await;
    // One credit per token, one chunk per batch: each batch's charge is its chunk's tokens as
    // the stand-in counts them (its words).
    let app = app(db, &up, |c| {
        c.embedding_batch = 1;
        c.catalogue.embedding_models = vec![confab_domain::catalogue::EmbeddingPrice {
            id: "text-embedding-3-small".into(),
            price_per_1m: 1_000_000,
        }];
    })
    .await;
    let (token, _) = app.sign_up("charged@example.com").await;
    let before = app.me(&token).await["credits"].as_i64().expect("credits");
    let id = uploaded(&app, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    let texts = chunk_texts(&app, &id).await;
    assert!(texts.len() >= 2, "{texts:?}");
    let tokens: Vec<i64> = texts
        .iter()
        .map(|t| t.split_whitespace().count() as i64)
        .collect();

    let usage = embedding_usage(&app, &token, "text-embedding-3-small").await;
    assert_eq!(usage.len(), texts.len(), "one charge per batch: {usage:#?}");
    let mut charged: Vec<i64> = usage
        .iter()
        .map(|t| t["reference"]["inputTokens"].as_i64().expect("inputTokens"))
        .collect();
    let mut expected = tokens.clone();
    charged.sort_unstable();
    expected.sort_unstable();
    assert_eq!(charged, expected);
    for t in &usage {
        assert_eq!(t["type"], "usage");
        assert_eq!(t["reference"]["documentId"], id.as_str(), "{t}");
        assert_eq!(t["reference"]["chatId"], Value::Null, "{t}");
        assert_eq!(
            t["amount"],
            -t["reference"]["inputTokens"].as_i64().unwrap(),
            "{t}"
        );
    }
    let total: i64 = tokens.iter().sum();
    let after = app.me(&token).await["credits"].as_i64().expect("credits");
    assert_eq!(after, before - total);

    // A job that dies after charging and before storing its vectors sends the same batches
    // again: simulate it by dropping the derived vectors and processing the document again.
    let sent = up.embedding_requests().len();
    let db = app.read_db().await;
    let dropped = match &db {
        ReadDb::Sqlite(p) => sqlx::query("DELETE FROM chunk_embeddings")
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
        ReadDb::Postgres(p) => sqlx::query("DELETE FROM chunk_embeddings")
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    };
    assert_eq!(dropped.expect("drop vectors"), texts.len() as u64);
    let (status, body) = app
        .post("/api/rag", Some(&token), &json!({ "documentId": id }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    assert!(
        up.embedding_requests().len() >= sent + texts.len(),
        "the batches were embedded again"
    );
    let again = embedding_usage(&app, &token, "text-embedding-3-small").await;
    assert_eq!(again.len(), usage.len(), "charged twice: {again:#?}");
    assert_eq!(app.me(&token).await["credits"].as_i64(), Some(after));
}

async fn an_embedding_model_priced_at_zero_is_charged_nothing(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |c| {
        c.embedding_model = "local-embed".into();
        c.catalogue.embedding_models = vec![confab_domain::catalogue::EmbeddingPrice {
            id: "local-embed".into(),
            price_per_1m: 0,
        }];
    })
    .await;
    let (token, _) = app.sign_up("free-embed@example.com").await;
    let before = app.me(&token).await["credits"].as_i64().expect("credits");
    let id = uploaded(&app, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    let usage = embedding_usage(&app, &token, "local-embed").await;
    assert!(!usage.is_empty(), "the usage is recorded");
    for t in &usage {
        assert_eq!(t["amount"], 0, "{t}");
        assert!(t["reference"]["inputTokens"].as_i64().unwrap() > 0, "{t}");
        assert_eq!(t["reference"]["documentId"], id.as_str(), "{t}");
    }
    assert_eq!(app.me(&token).await["credits"].as_i64(), Some(before));
}

/// Document jobs recorded in `app`'s queue, finished or not: in `document-jobs.db` on the
/// embedded default, in the shared `apalis` schema on PostgreSQL.
async fn document_jobs(app: &TestApp) -> i64 {
    const SQL: &str = "SELECT COUNT(*) FROM {} WHERE job_type = 'process_document'";
    match app.read_db().await {
        ReadDb::Postgres(p) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.replace("{}", "apalis.jobs")))
                .fetch_one(&p)
                .await
        }
        ReadDb::Sqlite(_) => {
            let file = app.data_dir.join("document-jobs.db");
            let p = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
                .await
                .expect("document-jobs.db");
            sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.replace("{}", "Jobs")))
                .fetch_one(&p)
                .await
        }
    }
    .expect("count document jobs")
}

async fn document_jobs_are_queued_where_the_database_says(db: Db) {
    let up = OpenAiStandIn::start().await;
    let app = app(db, &up, |_| {}).await;
    let (token, _) = app.sign_up("queues@example.com").await;
    let id = uploaded(&app, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&app, &token, &id).await["status"], "ready");
    app.drained(Queue::Documents).await;
    // Parse, then embed.
    assert!(document_jobs(&app).await >= 2);
    let file = app.data_dir.join("document-jobs.db");
    match db {
        Db::Sqlite => assert!(file.exists()),
        Db::Postgres => assert!(!file.exists(), "PostgreSQL needs no queue file"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_uploaded_to_serve_without_jobs_is_processed_by_confab_work() {
    let up = OpenAiStandIn::start().await;
    let url = confab_eventstore::testing::fresh_postgres_database().await;
    // Both processes read and write the same object store, as a deployment must have them.
    let objects = tempfile::tempdir().expect("tempdir");
    let objects_url = format!("file://{}", objects.path().display());
    let api = spawn_app_on(Some(url.clone()), |c| {
        c.object_store_url = Some(objects_url.clone());
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
        c.run_jobs = false;
    })
    .await;
    let (token, _) = api.sign_up("worked@example.com").await;
    let id = uploaded(&api, &token, "topics.md", two_topics()).await;
    // Nobody works the queue yet: the document waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, doc) = api.get(&format!("/api/documents/{id}"), Some(&token)).await;
    assert_eq!(doc["status"], "processing", "{doc}");
    assert!(up.embedding_requests().is_empty());
    assert!(api.unfinished_jobs(Queue::Documents).await >= 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut work = spawn_quiet(
        confab_command()
            .arg("work")
            .env("CONFAB_DATABASE_URL", &url)
            .env("CONFAB_DATA_DIR", dir.path())
            .env("CONFAB_OBJECT_STORE_URL", &objects_url)
            .env("OPENAI_BASE_URL", up.base_url())
            .env("OPENAI_API_KEY", "server-key")
            .env("CONFAB_CHUNK_TOKENS", "60")
            .env("CONFAB_CHUNK_OVERLAP", "0")
            .env("RUST_LOG", "warn"),
    );
    let doc = settled(&api, &token, &id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert!(doc["chunks"].as_i64().unwrap() >= 2, "{doc}");
    assert!(!up.embedding_requests().is_empty());
    api.drained(Queue::Documents).await;
    // Grounding works on the serve instance with what `work` indexed.
    assert_eq!(
        chunk_texts(&api, &id).await.len() as i64,
        doc["chunks"].as_i64().unwrap()
    );
    work.kill();
    api.shutdown().await;
}

/// `confab projections status`'s line about the vectors of `model`, for the app on
/// `data_dir` / `url`.
fn vector_status(data_dir: &std::path::Path, url: Option<&str>, model: &str) -> String {
    let mut cmd = confab_command();
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["projections", "status"])
        .env("CONFAB_EMBEDDING_MODEL", model);
    if let Some(url) = url {
        cmd.env("CONFAB_DATABASE_URL", url);
    }
    let out = cmd.output().expect("confab projections status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("documents vectors"))
        .unwrap_or_else(|| panic!("no vectors line: {out:?}"))
        .to_owned()
}

async fn projections_status_shows_the_rebuild_of_a_new_embedding_model(db: Db) {
    let up = OpenAiStandIn::start().await;
    let first = app(db, &up, |c| {
        c.embedding_model = "model-a".into();
        c.embedding_batch = 1;
    })
    .await;
    let (token, _) = first.sign_up("status@example.com").await;
    let id = uploaded(&first, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&first, &token, &id).await["status"], "ready");
    let n = chunk_texts(&first, &id).await.len();
    assert!(n >= 2);
    let (data_dir, url) = (first.data_dir.clone(), first.database_url.clone());
    assert_eq!(
        vector_status(&data_dir, url.as_deref(), "model-a"),
        format!(
            "documents vectors model-a: {n}/{n} chunks, complete; serving model-a (1 document)"
        )
    );
    let dir = first.stop().await;
    // Before the restart with the new model, nothing of its index exists.
    assert_eq!(
        vector_status(&data_dir, url.as_deref(), "model-b"),
        format!("documents vectors model-b: 0/{n} chunks, building; serving model-a (1 document)")
    );
    // The new model's first chunk is embedded, the second call hangs (for the first-token
    // limit, then it is retried): the rebuild stands half-way meanwhile.
    up.embeddings_then(200).embeddings_then(0);
    let app = spawn_app_on(url.clone(), |c| {
        c.data_dir = data_dir.clone();
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
        c.embedding_batch = 1;
        c.llm_first_token_timeout_ms = 8_000;
        c.llm_backoff_ms = 20;
        c.embedding_model = "model-b".into();
    })
    .await;
    let halfway =
        format!("documents vectors model-b: 1/{n} chunks, building; serving model-a (1 document)");
    let (data, u) = (data_dir.clone(), url.clone());
    let seen = poll(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || {
            let (data, u) = (data.clone(), u.clone());
            async move {
                tokio::task::spawn_blocking(move || vector_status(&data, u.as_deref(), "model-b"))
                    .await
                    .expect("status")
            }
        },
        |line| *line == halfway,
    )
    .await;
    assert_eq!(seen, halfway);
    // Then it completes and retrieval switches.
    let path = format!("/api/documents/{id}");
    let (_, doc) = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || app.get(&path, Some(&token)),
        |(_, doc)| doc["embeddingModel"] == "model-b",
    )
    .await;
    assert_eq!(doc["embeddingModel"], "model-b", "{doc}");
    assert_eq!(
        vector_status(&data_dir, url.as_deref(), "model-b"),
        format!(
            "documents vectors model-b: {n}/{n} chunks, complete; serving model-b (1 document)"
        )
    );
    app.shutdown().await;
    drop(dir);
}

/// Whether the PostgreSQL at `url` offers the `vector` extension.
async fn pgvector_available(url: &str) -> bool {
    let pool = sqlx::PgPool::connect(url).await.expect("postgres");
    sqlx::query_scalar::<_, String>(
        "SELECT name::text FROM pg_available_extensions WHERE name = 'vector'",
    )
    .fetch_optional(&pool)
    .await
    .expect("extensions")
    .is_some()
}

async fn pg_count(url: &str, sql: &'static str) -> Option<i64> {
    let pool = sqlx::PgPool::connect(url).await.expect("postgres");
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(&pool)
        .await
        .expect("count")
}

/// Asks a grounded question and returns the context the model got.
async fn grounded(app: &TestApp, up: &OpenAiStandIn, token: &str, id: &str, q: &str) -> String {
    let r = app
        .request(Method::POST, "/api/chat", Some(token))
        .json(&json!({ "messages": [{ "role": "user", "content": q }], "documentIds": [id] }))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    r.text().await.expect("reply");
    grounding(up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_ranks_vectors_when_installed_and_off_keeps_the_exact_path() {
    let up = OpenAiStandIn::start().await;
    up.always(Act::reply(&["See [1]."], (10, 10), Duration::ZERO));
    let url = confab_eventstore::testing::fresh_postgres_database().await;
    let tweak = |c: &mut Config, mode: &str| {
        c.openai_base_url = Some(up.base_url().to_owned());
        c.openai_api_key = Some("server-key".to_owned().into());
        c.chunk_tokens = 60;
        c.chunk_overlap = 0;
        c.rag_top_k = 1;
        c.pgvector = mode.into();
    };
    // Off: the exact path, no pgvector table at all.
    let first = spawn_app_on(Some(url.clone()), |c| tweak(c, "off")).await;
    let (token, _) = first.sign_up("pgv@example.com").await;
    let id = uploaded(&first, &token, "topics.md", two_topics()).await;
    assert_eq!(settled(&first, &token, &id).await["status"], "ready");
    let n = chunk_texts(&first, &id).await.len() as i64;
    let context = grounded(&first, &up, &token, &id, "volcano magma").await;
    assert!(
        context.contains("volcano") && !context.contains("orchid"),
        "{context}"
    );
    assert_eq!(
        pg_count(
            &url,
            "SELECT COUNT(*) FROM pg_class WHERE relname = 'chunk_vectors'"
        )
        .await,
        Some(0)
    );
    let data_dir = first.data_dir.clone();
    let dir = first.stop().await;

    if !pgvector_available(&url).await {
        println!(
            "pgvector is not installed in this PostgreSQL: only the exact-scan path was tested"
        );
        return;
    }
    // Auto, with the extension: the stored vectors are copied into its index at start-up and
    // retrieval ranks with `<=>`, owner-scoped.
    let second = spawn_app_on(Some(url.clone()), |c| {
        tweak(c, "auto");
        c.data_dir = data_dir;
    })
    .await;
    assert_eq!(
        pg_count(&url, "SELECT COUNT(*) FROM chunk_vectors").await,
        Some(n),
        "backfilled"
    );
    let context = grounded(&second, &up, &token, &id, "orchid petals").await;
    assert!(
        context.contains("orchid") && !context.contains("volcano"),
        "{context}"
    );
    // A new document's vectors go to the index as they are embedded, under an HNSW index of
    // the stand-in's dimension.
    let other = uploaded(&second, &token, "more.md", two_topics_more()).await;
    assert_eq!(settled(&second, &token, &other).await["status"], "ready");
    assert!(pg_count(&url, "SELECT COUNT(*) FROM chunk_vectors").await > Some(n));
    assert_eq!(
        pg_count(
            &url,
            "SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'chunk_vectors_hnsw_256'"
        )
        .await,
        Some(1)
    );
    // Ownership is inside the query: another owner finds nothing in these documents.
    let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
    let doc: uuid::Uuid = id.parse().unwrap();
    let q = confab_testkit::openai::embedding_of("volcano");
    let stranger = confab_projections::pgvector::nearest(
        &pool,
        uuid::Uuid::now_v7(),
        &[doc],
        "text-embedding-3-small",
        &q,
        10,
    )
    .await
    .expect("nearest");
    assert!(stranger.is_empty());
    let owner: uuid::Uuid = second.me(&token).await["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let near = confab_projections::pgvector::nearest(
        &pool,
        owner,
        &[doc],
        "text-embedding-3-small",
        &q,
        10,
    )
    .await
    .expect("nearest");
    assert_eq!(near.len() as i64, n, "{near:?}");
    let texts = chunk_texts(&second, &id).await;
    assert!(texts[near[0].1 as usize].contains("volcano"), "{near:?}");
    assert!(near[0].2 > near[near.len() - 1].2);
    second.shutdown().await;
    drop(dir);
}

/// Two more sections, unlike [`two_topics`]'s.
fn two_topics_more() -> Vec<u8> {
    format!(
        "# Glaciers\n\n{} ice carves the valley.\n\n# Deserts\n\n{} dunes shift in the wind.\n",
        words("glacier", 30),
        words("desert", 30)
    )
    .into_bytes()
}
