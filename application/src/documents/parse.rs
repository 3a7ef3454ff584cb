//! What an uploaded file is, judged by its bytes, and its text: plain text (UTF-8, or UTF-16
//! with a byte-order mark), Markdown, HTML (rendered to Markdown-like text that keeps its
//! headings), DOCX (the paragraphs of `word/document.xml`, headings as `#` lines) and PDF.
//!
//! A file that cannot be read fails with a reason the user can act on ([`ParseError`]). PDF
//! parsing must never take the process down: it runs on a blocking thread under
//! `catch_unwind` and a time bound, and compressed streams that would expand past a limit are
//! refused before the parser decompresses them.

use std::io::Read;
use std::time::Duration;

/// The kinds of file accepted for retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocType {
    /// PDF.
    Pdf,
    /// Plain text.
    Txt,
    /// Markdown.
    Md,
    /// HTML.
    Html,
    /// Word (Office Open XML).
    Docx,
}

impl DocType {
    /// Every kind, in the order of the default configuration.
    pub const ALL: [DocType; 5] = [
        DocType::Pdf,
        DocType::Txt,
        DocType::Md,
        DocType::Html,
        DocType::Docx,
    ];

    /// The configuration name (`pdf`, `txt`, `md`, `html`, `docx`).
    pub fn name(self) -> &'static str {
        match self {
            DocType::Pdf => "pdf",
            DocType::Txt => "txt",
            DocType::Md => "md",
            DocType::Html => "html",
            DocType::Docx => "docx",
        }
    }

    /// Reads a configuration name.
    pub fn parse(name: &str) -> Option<DocType> {
        DocType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The media type recorded and shown.
    pub fn media_type(self) -> &'static str {
        match self {
            DocType::Pdf => "application/pdf",
            DocType::Txt => "text/plain",
            DocType::Md => "text/markdown",
            DocType::Html => "text/html",
            DocType::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
        }
    }

    /// The kind of a recorded media type.
    pub fn from_media_type(media_type: &str) -> Option<DocType> {
        DocType::ALL
            .into_iter()
            .find(|t| t.media_type() == media_type)
    }

    /// Whether the text follows Markdown structure (chunking splits on it).
    pub fn is_markdown(self) -> bool {
        matches!(self, DocType::Md | DocType::Html | DocType::Docx)
    }
}

/// Judges the kind of `bytes`: binary formats by their signature (the `infer` crate, which
/// also looks inside a ZIP for a Word document); anything else must be text (UTF-8, or UTF-16
/// with a byte-order mark), which is HTML if it starts like HTML, Markdown if its name says so,
/// else plain text. `None` for anything else (an image, an archive, a binary file).
pub fn sniff(bytes: &[u8], filename: &str) -> Option<DocType> {
    if let Some(kind) = infer::get(bytes) {
        return match kind.mime_type() {
            "application/pdf" => Some(DocType::Pdf),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
                Some(DocType::Docx)
            }
            "text/html" => Some(DocType::Html),
            // `infer` judges OOXML by the order of the archive's first entries; a Word document
            // whose entries come in another order is still one if it holds the main part.
            "application/zip" => zip::ZipArchive::new(std::io::Cursor::new(bytes))
                .ok()
                .and_then(|mut z| z.by_name("word/document.xml").ok().map(|_| DocType::Docx)),
            // `infer` reads some text as XML or a shell script; those are text too.
            "text/xml" | "text/x-shellscript" => text_kind(bytes, filename),
            _ => None,
        };
    }
    text_kind(bytes, filename)
}

fn text_kind(bytes: &[u8], filename: &str) -> Option<DocType> {
    let text = decode_text(bytes).ok()?;
    // Text has no NULs or other control characters than layout.
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}'))
    {
        return None;
    }
    let head: String = text
        .trim_start()
        .chars()
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase();
    if head.starts_with("<!doctype html") || head.starts_with("<html") {
        return Some(DocType::Html);
    }
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".md") || lower.ends_with(".markdown") {
        Some(DocType::Md)
    } else {
        Some(DocType::Txt)
    }
}

/// Why a file's text could not be read: each message says what the user can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not text in a known encoding.
    #[error("the file is not UTF-8 or UTF-16 text; save it as UTF-8 and upload it again")]
    NotText,
    /// The PDF is encrypted.
    #[error("the PDF is encrypted; upload a copy without a password")]
    Encrypted,
    /// Nothing readable.
    #[error(
        "no text could be found in the file (a scanned PDF holds only images); upload a file with selectable text"
    )]
    NoText,
    /// Compressed content that would expand too far.
    #[error("the file expands to more than {0} MB when decompressed; upload a smaller file")]
    TooLarge(u64),
    /// The parser gave up or broke.
    #[error(
        "the {kind} file could not be read ({reason}); check that it opens, or export it again"
    )]
    Unreadable {
        /// pdf, docx, html.
        kind: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// Parsing took too long.
    #[error("reading the file took longer than {0} seconds; upload a simpler or smaller file")]
    Timeout(u64),
}

/// Most bytes compressed content may expand to (a DOCX's XML, a PDF's streams together).
pub const MAX_EXPANDED_BYTES: u64 = 200 * 1024 * 1024;
/// Longest a PDF may take to parse.
pub const PDF_TIMEOUT: Duration = Duration::from_secs(60);

/// Decodes text: UTF-8 (a byte-order mark is dropped), or UTF-16 LE or BE with its mark.
pub fn decode_text(bytes: &[u8]) -> Result<String, ParseError> {
    let utf16 = |bytes: &[u8], le: bool| {
        if !bytes.len().is_multiple_of(2) {
            return Err(ParseError::NotText);
        }
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|p| {
                if le {
                    u16::from_le_bytes([p[0], p[1]])
                } else {
                    u16::from_be_bytes([p[0], p[1]])
                }
            })
            .collect();
        String::from_utf16(&units).map_err(|_| ParseError::NotText)
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| ParseError::NotText)
        }
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false),
        _ => String::from_utf8(bytes.to_vec()).map_err(|_| ParseError::NotText),
    }
}

/// The text of a file of kind `kind`, blank runs tidied. PDF parsing blocks, so this is async.
pub async fn extract(kind: DocType, bytes: Vec<u8>) -> Result<String, ParseError> {
    let text = match kind {
        DocType::Txt | DocType::Md => decode_text(&bytes)?,
        DocType::Html => html(&bytes)?,
        DocType::Docx => docx(&bytes)?,
        DocType::Pdf => pdf(bytes, PDF_TIMEOUT, MAX_EXPANDED_BYTES).await?,
    };
    let text = tidy(&text);
    if text.trim().is_empty() {
        return Err(ParseError::NoText);
    }
    Ok(text)
}

/// Trailing spaces dropped, runs of more than two blank lines folded, NULs removed.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.replace("\r\n", "\n").replace('\0', "").lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_owned()
}

/// HTML rendered as text: headings stay (`# Title`), links and emphasis as Markdown.
fn html(bytes: &[u8]) -> Result<String, ParseError> {
    let source = decode_text(bytes)?;
    html2text::config::plain()
        .string_from_read(source.as_bytes(), 10_000)
        .map_err(|e| ParseError::Unreadable {
            kind: "html",
            reason: e.to_string(),
        })
}

/// A DOCX's paragraphs, one a line, headings (`Heading1`..`Heading9` styles, or `Title`) as
/// Markdown headings, table cells separated by ` | `.
fn docx(bytes: &[u8]) -> Result<String, ParseError> {
    use quick_xml::events::Event;
    let unreadable = |reason: String| ParseError::Unreadable {
        kind: "docx",
        reason,
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| unreadable(e.to_string()))?;
    let entry = archive
        .by_name("word/document.xml")
        .map_err(|_| unreadable("it has no word/document.xml".into()))?;
    if entry.size() > MAX_EXPANDED_BYTES {
        return Err(ParseError::TooLarge(MAX_EXPANDED_BYTES / (1024 * 1024)));
    }
    let mut xml = Vec::new();
    entry
        .take(MAX_EXPANDED_BYTES + 1)
        .read_to_end(&mut xml)
        .map_err(|e| unreadable(e.to_string()))?;
    if xml.len() as u64 > MAX_EXPANDED_BYTES {
        return Err(ParseError::TooLarge(MAX_EXPANDED_BYTES / (1024 * 1024)));
    }

    let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut paragraph = String::new();
    let mut heading: Option<usize> = None;
    let mut in_text = false;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                "t" => in_text = true,
                "p" => {
                    paragraph.clear();
                    heading = None;
                }
                _ => {}
            },
            Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                "pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == "val" {
                            let v = a.value.to_ascii_lowercase();
                            heading = if v == "title" {
                                Some(1)
                            } else {
                                v.strip_prefix("heading")
                                    .and_then(|n| n.parse::<usize>().ok())
                                    .map(|n| n.clamp(1, 6))
                            };
                        }
                    }
                }
                "tab" => paragraph.push('\t'),
                "br" | "cr" => paragraph.push('\n'),
                _ => {}
            },
            Ok(Event::Text(t)) if in_text => {
                paragraph.push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0));
            }
            Ok(Event::GeneralRef(r)) if in_text => {
                let name: &str = r.as_ref();
                let c = match name {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    _ => r.resolve_char_ref().ok().flatten(),
                };
                if let Some(c) = c {
                    paragraph.push(c);
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "tc" => paragraph.push_str(" | "),
                "p" => {
                    let line = paragraph.trim();
                    if !line.is_empty() {
                        if let Some(level) = heading {
                            out.push('\n');
                            out.push_str(&"#".repeat(level));
                            out.push(' ');
                        }
                        out.push_str(line);
                        out.push_str("\n\n");
                    }
                    paragraph.clear();
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Err(e) => return Err(unreadable(e.to_string())),
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

/// A PDF's text, on a blocking thread with panics contained and a time bound. The document is
/// first loaded alone to refuse encryption and streams that would expand past
/// [`MAX_EXPANDED_BYTES`] (each checked with a bounded decoder), so the text extraction never
/// meets a decompression bomb. A run that times out is abandoned (its thread finishes on its
/// own; its result is dropped).
async fn pdf(bytes: Vec<u8>, timeout: Duration, limit: u64) -> Result<String, ParseError> {
    let run = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(move || pdf_blocking(&bytes, limit)).unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the parser failed".into());
            Err(ParseError::Unreadable {
                kind: "pdf",
                reason,
            })
        })
    });
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ParseError::Unreadable {
            kind: "pdf",
            reason: join.to_string(),
        }),
        Err(_) => Err(ParseError::Timeout(timeout.as_secs())),
    }
}

fn pdf_blocking(bytes: &[u8], limit: u64) -> Result<String, ParseError> {
    let unreadable = |reason: String| ParseError::Unreadable {
        kind: "pdf",
        reason,
    };
    let doc = pdf_extract::Document::load_mem(bytes).map_err(|e| match e {
        pdf_extract::Error::Decryption(_) => ParseError::Encrypted,
        other => unreadable(other.to_string()),
    })?;
    if doc.is_encrypted() {
        return Err(ParseError::Encrypted);
    }
    let mut expanded: u64 = 0;
    for object in doc.objects.values() {
        let Ok(stream) = object.as_stream() else {
            continue;
        };
        let flate = stream
            .dict
            .get(b"Filter")
            .ok()
            .map(|f| match f {
                pdf_extract::Object::Name(n) => n.as_slice() == b"FlateDecode",
                pdf_extract::Object::Array(a) => a.iter().any(
                    |x| matches!(x, pdf_extract::Object::Name(n) if n.as_slice() == b"FlateDecode"),
                ),
                _ => false,
            })
            .unwrap_or(false);
        let size = if flate {
            let left = limit.saturating_sub(expanded) + 1;
            std::io::copy(
                &mut flate2::read::ZlibDecoder::new(stream.content.as_slice()).take(left),
                &mut std::io::sink(),
            )
            .unwrap_or(0)
        } else {
            stream.content.len() as u64
        };
        expanded += size;
        if expanded > limit {
            return Err(ParseError::TooLarge(limit / (1024 * 1024)));
        }
    }
    drop(doc);
    pdf_extract::extract_text_from_mem(bytes).map_err(|e| unreadable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_judged_by_the_bytes() {
        assert_eq!(sniff(b"%PDF-1.4\n...", "x.txt"), Some(DocType::Pdf));
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><body>hi</body></html>", "x.txt"),
            Some(DocType::Html)
        );
        assert_eq!(sniff(b"# Title\n\ntext", "notes.md"), Some(DocType::Md));
        assert_eq!(sniff(b"just words", "notes.txt"), Some(DocType::Txt));
        assert_eq!(sniff(b"just words", "notes.pdf"), Some(DocType::Txt));
        // A PNG named like text is still a PNG.
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
        assert_eq!(sniff(&png, "a.txt"), None);
        assert_eq!(sniff(&[0, 1, 2, 3, 0xff, 0xfe, 0x00], "a.txt"), None);
    }

    #[test]
    fn utf16_with_a_byte_order_mark_is_text() {
        let mut le = vec![0xFF, 0xFE];
        le.extend("héllo".encode_utf16().flat_map(|u| u.to_le_bytes()));
        assert_eq!(decode_text(&le).unwrap(), "héllo");
        let mut be = vec![0xFE, 0xFF];
        be.extend("wörld".encode_utf16().flat_map(|u| u.to_be_bytes()));
        assert_eq!(decode_text(&be).unwrap(), "wörld");
        assert_eq!(sniff(&le, "a.txt"), Some(DocType::Txt));
        assert_eq!(decode_text(&[0xC3, 0x28]), Err(ParseError::NotText));
    }

    #[tokio::test]
    async fn html_keeps_its_headings_and_drops_markup() {
        let text = extract(
            DocType::Html,
            b"<html><head><title>t</title><script>var x=1;</script></head><body>\
              <h1>Main Heading</h1><p>First <b>para</b>.</p><h2>Sub</h2><p>Second.</p></body></html>"
                .to_vec(),
        )
        .await
        .unwrap();
        assert!(text.contains("# Main Heading"), "{text}");
        assert!(text.contains("## Sub"), "{text}");
        assert!(text.contains("First") && text.contains("Second."), "{text}");
        assert!(!text.contains("<b>") && !text.contains("var x"), "{text}");
    }

    #[tokio::test]
    async fn a_file_without_text_fails_with_a_reason() {
        assert_eq!(
            extract(DocType::Txt, b"   \n\n ".to_vec()).await,
            Err(ParseError::NoText)
        );
        let broken = extract(DocType::Pdf, b"%PDF-1.4 garbage".to_vec()).await;
        assert!(
            matches!(broken, Err(ParseError::Unreadable { kind: "pdf", .. })),
            "{broken:?}"
        );
        let not_zip = extract(DocType::Docx, b"PK\x03\x04 not a zip".to_vec()).await;
        assert!(matches!(
            not_zip,
            Err(ParseError::Unreadable { kind: "docx", .. })
        ));
    }

    /// A one-page PDF showing `text` in Helvetica, its content stream compressed if `deflate`.
    pub(crate) fn tiny_pdf(text: &str, deflate: Option<Vec<u8>>) -> Vec<u8> {
        let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
        let (stream, filter) = match deflate {
            Some(raw) => {
                use std::io::Write;
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&raw).unwrap();
                (z.finish().unwrap(), " /Filter /FlateDecode")
            }
            None => (content.into_bytes(), ""),
        };
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        let objects: Vec<Vec<u8>> = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
               /Resources << /Font << /F1 5 0 R >> >> >>"
                .to_vec(),
            {
                let mut o =
                    format!("<< /Length {}{filter} >>\nstream\n", stream.len()).into_bytes();
                o.extend(&stream);
                o.extend(b"\nendstream");
                o
            },
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        ];
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend(body);
            out.extend(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
        for o in offsets {
            out.extend(format!("{o:010} 00000 n \n").as_bytes());
        }
        out.extend(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    #[tokio::test]
    async fn a_pdf_gives_its_text() {
        let text = extract(DocType::Pdf, tiny_pdf("Hello from a PDF", None))
            .await
            .unwrap();
        assert!(text.contains("Hello from a PDF"), "{text:?}");
    }

    #[tokio::test]
    async fn a_pdf_that_expands_too_far_is_refused_before_parsing() {
        let bomb = tiny_pdf("x", Some(vec![b' '; 3 * 1024 * 1024]));
        let limit = 2 * 1024 * 1024;
        assert_eq!(
            pdf(bomb.clone(), PDF_TIMEOUT, limit).await,
            Err(ParseError::TooLarge(2))
        );
        // Under a larger limit the same file parses (its text is blank, so no text).
        assert!(pdf(bomb, PDF_TIMEOUT, 8 * 1024 * 1024).await.is_ok());
    }

    #[tokio::test]
    async fn a_docx_gives_its_paragraphs_and_headings() {
        use std::io::Write;
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Quarterly Report</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Revenue grew &amp; </w:t></w:r><w:r><w:t>costs fell.</w:t></w:r></w:p>
</w:body></w:document>"#;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("[Content_Types].xml", opts).unwrap();
        zip.write_all(b"<Types/>").unwrap();
        zip.start_file("word/document.xml", opts).unwrap();
        zip.write_all(xml.as_bytes()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let text = extract(DocType::Docx, bytes).await.unwrap();
        assert_eq!(text, "# Quarterly Report\n\nRevenue grew & costs fell.");
    }

    #[test]
    fn configuration_names_read_back() {
        for t in DocType::ALL {
            assert_eq!(DocType::parse(t.name()), Some(t));
            assert_eq!(DocType::from_media_type(t.media_type()), Some(t));
        }
        assert_eq!(DocType::parse(" PDF "), Some(DocType::Pdf));
        assert_eq!(DocType::parse("exe"), None);
    }
}
