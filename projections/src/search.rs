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

/// An FTS5 `MATCH` expression requiring every word of `query`, in any order; each word is a
/// quoted string, so nothing the user types is read as query syntax. `None` when the query has
/// no words.
pub fn fts5_query(query: &str) -> Option<String> {
    let folded = fold(query);
    let ws = words(&folded);
    if ws.is_empty() {
        return None;
    }
    Some(
        ws.iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" "),
    )
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
    fn queries_are_quoted_words_only() {
        assert_eq!(
            fts5_query("Hello, WORLD!").as_deref(),
            Some("\"hello\" \"world\"")
        );
        assert_eq!(
            fts5_query("a\" OR b*").as_deref(),
            Some("\"a\" \"or\" \"b\"")
        );
        assert_eq!(fts5_query("  ?! "), None);
        assert_eq!(
            fts5_query("naïve café").as_deref(),
            Some("\"naive\" \"cafe\"")
        );
    }
}
