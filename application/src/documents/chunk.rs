//! Token-aware chunking with overlap: text is cut into pieces of at most `tokens` tokens
//! (cl100k, the tokenizer of OpenAI's embedding models), neighbours sharing up to `overlap`
//! tokens, at the highest semantic level that fits: Markdown structure (headings, blocks,
//! paragraphs) for Markdown-like text, paragraphs and sentences for plain text (`text-splitter`).

use confab_domain::document::Chunk;
use sha2::{Digest, Sha256};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

/// How chunks are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizing {
    /// Most tokens in a chunk.
    pub tokens: usize,
    /// Most tokens two neighbouring chunks share.
    pub overlap: usize,
}

impl Default for ChunkSizing {
    fn default() -> Self {
        ChunkSizing {
            tokens: 512,
            overlap: 64,
        }
    }
}

/// Why a sizing cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the chunk overlap ({overlap}) must be smaller than the chunk size ({tokens}), which must be at least 1"
)]
pub struct BadSizing {
    /// Tokens.
    pub tokens: usize,
    /// Overlap.
    pub overlap: usize,
}

impl ChunkSizing {
    /// Checks the sizing.
    pub fn validate(self) -> Result<Self, BadSizing> {
        if self.tokens == 0 || self.overlap >= self.tokens {
            return Err(BadSizing {
                tokens: self.tokens,
                overlap: self.overlap,
            });
        }
        Ok(self)
    }
}

/// SHA-256 of `text`, lower-case hex.
pub fn hash(text: &str) -> String {
    hash_bytes(text.as_bytes())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Cuts `text` into chunks, each with its index and hash; Markdown-aware when `markdown`.
pub fn chunk(text: &str, markdown: bool, sizing: ChunkSizing) -> Result<Vec<Chunk>, BadSizing> {
    let sizing = sizing.validate()?;
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let config = ChunkConfig::new(sizing.tokens)
        .with_overlap(sizing.overlap)
        .map_err(|_| BadSizing {
            tokens: sizing.tokens,
            overlap: sizing.overlap,
        })?
        .with_sizer(bpe);
    let pieces: Vec<&str> = if markdown {
        MarkdownSplitter::new(config).chunks(text).collect()
    } else {
        TextSplitter::new(config).chunks(text).collect()
    };
    Ok(pieces
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, p)| Chunk {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            text: p.to_owned(),
            hash: hash(p),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizing(tokens: usize, overlap: usize) -> ChunkSizing {
        ChunkSizing { tokens, overlap }
    }

    #[test]
    fn chunks_stay_within_the_token_budget_and_cover_the_text() {
        let text = (0..200)
            .map(|i| format!("Sentence number {i} talks about topic {}.", i % 7))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk(&text, false, sizing(50, 10)).unwrap();
        let bpe = tiktoken_rs::cl100k_base_singleton();
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(bpe.encode_ordinary(&c.text).len() <= 50, "{}", c.text);
            assert_eq!(c.hash, hash(&c.text));
        }
        assert!(chunks[0].text.starts_with("Sentence number 0 "));
        assert!(chunks.last().unwrap().text.ends_with("topic 3."));
        let indexes: Vec<u32> = chunks.iter().map(|c| c.index).collect();
        assert_eq!(indexes, (0..chunks.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn neighbouring_chunks_overlap() {
        let text = (0..100)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk(&text, false, sizing(30, 10)).unwrap();
        assert!(chunks.len() >= 2);
        let first_words: Vec<&str> = chunks[0].text.split(' ').collect();
        let last_of_first = first_words.last().unwrap();
        assert!(
            chunks[1].text.contains(last_of_first),
            "{:?} / {:?}",
            chunks[0].text,
            chunks[1].text
        );
    }

    #[test]
    fn markdown_sections_are_kept_apart() {
        let section = |title: &str, word: &str| {
            format!(
                "# {title}\n\n{}\n\n",
                (0..30).map(|_| word).collect::<Vec<_>>().join(" ")
            )
        };
        let text = format!("{}{}", section("Apples", "apple"), section("Pears", "pear"));
        let chunks = chunk(&text, true, sizing(60, 0)).unwrap();
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(chunks[0].text.starts_with("# Apples") && !chunks[0].text.contains("pear"));
        assert!(chunks[1].text.starts_with("# Pears"));
    }

    #[test]
    fn an_overlap_as_large_as_the_chunk_is_refused() {
        assert!(chunk("x", false, sizing(10, 10)).is_err());
        assert!(chunk("x", false, sizing(0, 0)).is_err());
    }
}
