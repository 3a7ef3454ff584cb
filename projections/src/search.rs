//! Full-text search text: how message content and queries are folded so that case and accents
//! never matter, and how a user's words become a query each database accepts safely.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lower case, compatibility-decomposed, without combining marks: "Crème BRÛLÉE" → "creme
/// brulee". Message content is stored folded beside the original, and queries are folded the
/// same way.
pub fn fold(s: &str) -> String {
    s.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The words of a folded text: runs of letters and digits.
pub fn words(folded: &str) -> Vec<&str> {
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The key that scopes a user's messages in the full-text index: `u` and the owner id's 32
/// lower-case hex digits, one token for either database's tokenizer.
pub fn owner_key(owner: uuid::Uuid) -> String {
    format!("u{}", owner.simple())
}

/// An FTS5 `MATCH` expression requiring every word of `query`, in any order, in the
/// `search_text` column, of a message whose `owner_key` column is `owner`'s; each word is a
/// quoted string, so nothing the user types is read as query syntax. `None` when the query has
/// no words.
pub fn fts5_query(query: &str, owner: uuid::Uuid) -> Option<String> {
    let folded = fold(query);
    let ws = words(&folded);
    if ws.is_empty() {
        return None;
    }
    let words = ws
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ");
    Some(format!(
        "owner_key : \"{}\" AND search_text : ({words})",
        owner_key(owner)
    ))
}

/// Ranks the messages a query matched by BM25 (k1 = 1.2, b = 0.75) computed over those
/// matches alone: every match holds every query word, so each word weighs the same and a
/// message ranks higher the more often the words occur in it relative to its length.
pub struct Ranker {
    words: Vec<String>,
}

impl Ranker {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;

    /// The ranker of a user's query, folded as message text is.
    pub fn new(query: &str) -> Self {
        let folded = fold(query);
        let mut words: Vec<String> = words(&folded).into_iter().map(str::to_owned).collect();
        words.sort();
        words.dedup();
        Ranker { words }
    }

    /// The keys of the `limit` best of `hits` (key, folded text) after skipping `offset`, best
    /// first; among equal scores, the greater key (the later message) first.
    pub fn page<'a>(
        &self,
        hits: impl IntoIterator<Item = (i64, &'a str)>,
        offset: usize,
        limit: usize,
    ) -> Vec<i64> {
        let docs: Vec<(i64, Vec<u32>, usize)> = hits
            .into_iter()
            .map(|(key, text)| {
                let mut tf = vec![0u32; self.words.len()];
                let mut len = 0;
                for w in words(text) {
                    len += 1;
                    if let Some(i) = self.words.iter().position(|q| q == w) {
                        tf[i] += 1;
                    }
                }
                (key, tf, len)
            })
            .collect();
        if docs.is_empty() {
            return Vec::new();
        }
        let avg = docs.iter().map(|d| d.2).sum::<usize>() as f64 / docs.len() as f64;
        let avg = avg.max(1.0);
        let mut scored: Vec<(f64, i64)> = docs
            .iter()
            .map(|(key, tf, len)| {
                let norm = Self::K1 * (1.0 - Self::B + Self::B * *len as f64 / avg);
                let score = tf
                    .iter()
                    .map(|&t| f64::from(t) * (Self::K1 + 1.0) / (f64::from(t) + norm))
                    .sum::<f64>();
                (score, *key)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        scored
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, key)| key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_removes_case_and_accents() {
        assert_eq!(fold("Crème BRÛLÉE"), "creme brulee");
        assert_eq!(fold("Ångström ﬁx"), "angstrom fix");
        assert_eq!(fold("日本語"), "日本語");
    }

    #[test]
    fn queries_are_quoted_words_only_scoped_to_the_owner() {
        let owner = uuid::Uuid::from_u128(0xabc);
        let scoped = |words: &str| {
            format!("owner_key : \"u00000000000000000000000000000abc\" AND search_text : ({words})")
        };
        assert_eq!(
            fts5_query("Hello, WORLD!", owner),
            Some(scoped("\"hello\" \"world\""))
        );
        assert_eq!(
            fts5_query("a\" OR b*", owner),
            Some(scoped("\"a\" \"or\" \"b\""))
        );
        assert_eq!(fts5_query("  ?! ", owner), None);
        assert_eq!(
            fts5_query("naïve café", owner),
            Some(scoped("\"naive\" \"cafe\""))
        );
    }

    #[test]
    fn ranking_prefers_denser_matches_then_later_ones() {
        let r = Ranker::new("Rust ASYNC rust");
        let hits = [
            (
                1,
                "rust and async in a long sentence about many other things",
            ),
            (2, "rust async"),
            (3, "rust async rust async"),
            (4, "rust async"),
        ];
        assert_eq!(r.page(hits, 0, 10), vec![3, 4, 2, 1]);
        assert_eq!(r.page(hits, 1, 2), vec![4, 2]);
        assert_eq!(r.page(hits, 4, 2), Vec::<i64>::new());
        assert_eq!(r.page([], 0, 2), Vec::<i64>::new());
    }
}
