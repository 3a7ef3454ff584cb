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

/// The terms a message is indexed under on SQLite: each word of its folded text prefixed with
/// its owner's key, so that a term's postings are one user's messages only (see migration 0012).
/// Words repeat as often as they occur, so term frequencies reach the ranking.
pub fn fts5_terms(owner_key: &str, folded: &str) -> String {
    let mut terms = String::with_capacity(folded.len() + 34 * 8);
    for w in words(folded) {
        if !terms.is_empty() {
            terms.push(' ');
        }
        terms.push_str(owner_key);
        terms.push_str(w);
    }
    terms
}

/// An FTS5 `MATCH` expression requiring every word of `query`, in any order, among `owner`'s
/// terms (see [`fts5_terms`]); each term is a quoted string, so nothing the user types is read
/// as query syntax. `None` when the query has no words.
pub fn fts5_query(query: &str, owner: uuid::Uuid) -> Option<String> {
    let folded = fold(query);
    let key = owner_key(owner);
    let mut ws = words(&folded);
    ws.sort_unstable();
    ws.dedup();
    if ws.is_empty() {
        return None;
    }
    Some(
        ws.iter()
            .map(|w| format!("\"{key}{}\"", w.replace('"', "\"\"")))
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
    fn terms_are_the_owners_key_and_each_word() {
        assert_eq!(
            fts5_terms("uk", "hello, world! hello"),
            "ukhello ukworld ukhello"
        );
        assert_eq!(fts5_terms("uk", " ?! "), "");
    }

    #[test]
    fn queries_are_quoted_terms_of_the_owner_only() {
        let owner = uuid::Uuid::from_u128(0xabc);
        let k = "u00000000000000000000000000000abc";
        assert_eq!(
            fts5_query("Hello, WORLD! hello", owner),
            Some(format!("\"{k}hello\" \"{k}world\""))
        );
        assert_eq!(
            fts5_query("a\" OR b*", owner),
            Some(format!("\"{k}a\" \"{k}b\" \"{k}or\""))
        );
        assert_eq!(fts5_query("  ?! ", owner), None);
        assert_eq!(
            fts5_query("naïve café", owner),
            Some(format!("\"{k}cafe\" \"{k}naive\""))
        );
    }
}
