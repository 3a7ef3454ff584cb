//! The JSON Schema `pattern` of each validated text type: exactly the strings its `parse`
//! accepts (the length bound goes in `maxLength`, on the raw string, as `parse` counts it).
//!
//! The API document declares these, so a client (or a generator such as schemathesis) knows
//! beforehand what the server will accept. The tests below hold each pattern and its parser
//! to the same answers.
//!
//! Whitespace is Rust's (`char::is_whitespace`, Unicode `White_Space`) and control characters
//! are Unicode `Cc` (`char::is_control`), spelled out as ranges so that every regex dialect
//! reads them alike. The patterns avoid look-around, for the same reason.

/// Unicode `White_Space`, as a character-class body.
macro_rules! ws {
    () => {
        r"\t\n\u000B\u000C\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
    };
}

/// Unicode `Cc` (control characters), as a character-class body.
macro_rules! cc {
    () => {
        r"\u0000-\u001F\u007F-\u009F"
    };
}

/// Text that, trimmed, is not empty and holds no control character: titles, names.
pub const TRIMMED_LINE: &str = concat!(
    "^[",
    ws!(),
    "]*[^",
    ws!(),
    cc!(),
    "](?:[^",
    cc!(),
    "]*[^",
    ws!(),
    cc!(),
    "])?[",
    ws!(),
    "]*$"
);

/// Text that is not blank and holds no NUL: message content.
pub const NOT_BLANK: &str = concat!(r"^[^\u0000]*[^", ws!(), r"\u0000][^\u0000]*$");

/// Text without NUL: free-text settings.
pub const NO_NUL: &str = r"^[^\u0000]*$";

/// One token without whitespace or control characters: file types, API keys.
pub const TOKEN: &str = concat!("^[^", ws!(), cc!(), "]+$");

/// An email address as [`crate::account::Email::parse`] accepts it: optional surrounding
/// whitespace, a local part, `@`, and a domain of dot-separated labels.
pub const EMAIL: &str = concat!(
    "^[",
    ws!(),
    "]*[^@",
    ws!(),
    cc!(),
    "]+@[^@.",
    ws!(),
    cc!(),
    r"]+(?:\.[^@.",
    ws!(),
    cc!(),
    "]+)+[",
    ws!(),
    "]*$"
);

/// One segment of a path that is not `..` (it may be empty, `.`, or `...`).
macro_rules! segment {
    () => {
        concat!(
            r"(?:[^./\\",
            cc!(),
            r"][^/\\",
            cc!(),
            r"]*|\.|\.[^./\\",
            cc!(),
            r"][^/\\",
            cc!(),
            r"]*|\.\.[^/\\",
            cc!(),
            r"]+)?"
        )
    };
}

/// A path without control characters and without `..` segments, `/` or `\` separated (seed
/// 002's attachments); `minLength` 1 keeps it from being empty.
pub const SAFE_PATH: &str = concat!("^", segment!(), r"(?:[/\\]", segment!(), ")*$");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{DisplayName, Email};
    use crate::{ChatTitle, MessageContent};
    use regex::Regex;

    /// Strings that probe every edge: blanks of each kind of whitespace, control characters
    /// inside and at the ends, NUL, the separators that are neither.
    fn corpus() -> Vec<String> {
        let mut c: Vec<String> = [
            "",
            " ",
            "a",
            " a ",
            "\ta\n",
            "a\tb",
            "a b",
            "\u{3000}",
            "\u{3000}x\u{3000}",
            "\u{85}",
            "x\u{85}",
            "\u{1c}",
            "x\u{1c}y",
            "\u{a0}",
            "é",
            "a\0b",
            "\0",
            "\n",
            "a\n",
            "\u{2028}x",
            "x\u{200b}",
            "\u{7f}",
            "a@b.co",
            " A@B.CO ",
            "a@b",
            "a@.b.co",
            "a@b.co.",
            "a@b..co",
            "@b.co",
            "a@@b.co",
            "a b@c.de",
            "a@b.c\u{3000}",
            "a@b.c@d.e",
            "\u{1c}a@b.co",
            "a@b.c\u{1c}",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for i in 0u32..0x3100 {
            if let Some(ch) = char::from_u32(i) {
                c.push(ch.to_string());
                c.push(format!("x{ch}"));
                c.push(format!("{ch}x"));
            }
        }
        c
    }

    fn agree(pattern: &str, parses: impl Fn(&str) -> bool) {
        let re = Regex::new(pattern).expect("pattern compiles");
        for s in corpus() {
            assert_eq!(re.is_match(&s), parses(&s), "{pattern} on {s:?}");
        }
    }

    #[test]
    fn titles_and_names_match_their_pattern() {
        agree(TRIMMED_LINE, |s| ChatTitle::parse(s).is_ok());
        agree(TRIMMED_LINE, |s| DisplayName::parse(s).is_ok());
    }

    #[test]
    fn content_matches_its_pattern() {
        agree(NOT_BLANK, |s| MessageContent::parse(s).is_ok());
    }

    #[test]
    fn emails_match_their_pattern() {
        agree(EMAIL, |s| Email::parse(s).is_ok());
    }

    #[test]
    fn tokens_have_no_whitespace_or_controls() {
        agree(TOKEN, |s| {
            !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        agree(NO_NUL, |s| !s.contains('\0'));
    }

    #[test]
    fn safe_paths_have_no_parent_segments() {
        let mut extra = corpus();
        for p in [
            "..", "a/..", "../a", "a/../b", "a\\..\\b", "...", ".a", "a/.", "a//b", "/a",
        ] {
            extra.push(p.to_owned());
        }
        let re = Regex::new(SAFE_PATH).expect("pattern compiles");
        for s in extra {
            let ok = !s.chars().any(char::is_control) && !s.split(['/', '\\']).any(|g| g == "..");
            assert_eq!(re.is_match(&s), ok, "{s:?}");
        }
    }
}
