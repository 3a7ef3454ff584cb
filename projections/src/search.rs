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
}
