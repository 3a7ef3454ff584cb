//! Validated value types, parsed at the edge so that the domain only ever sees valid data.

use serde::{Deserialize, Serialize};

/// Input that failed validation: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field, as named in the API.
    pub field: &'static str,
    /// A human-readable reason.
    pub reason: String,
}

impl ValidationError {
    /// A validation error on `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ValidationError {
            field,
            reason: reason.into(),
        }
    }
}

/// A chat title: at most 200 characters as sent, trimmed, not empty, no control characters
/// ([`crate::patterns::TRIMMED_LINE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChatTitle(String);

impl ChatTitle {
    /// Longest title, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Validates a title.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ValidationError::new("title", "must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::new(
                "title",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if t.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "title",
                "must not contain control characters",
            ));
        }
        Ok(ChatTitle(t.to_owned()))
    }

    /// The title text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message's content: not blank, at most 100,000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageContent(String);

impl MessageContent {
    /// Longest content, in characters.
    pub const MAX_CHARS: usize = 100_000;

    /// Validates content; it is kept as written (not trimmed), since whitespace can matter in code.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.trim().is_empty() {
            return Err(ValidationError::new("content", "must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::new(
                "content",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if s.contains('\0') {
            return Err(ValidationError::new("content", "must not contain NUL"));
        }
        Ok(MessageContent(s.to_owned()))
    }

    /// The content text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a message holds (seed 000's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Prose.
    Text,
    /// Source code.
    Code,
    /// An image reference.
    Image,
}

impl MessageKind {
    /// Parses `text`, `code` or `image`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "text" => Ok(MessageKind::Text),
            "code" => Ok(MessageKind::Code),
            "image" => Ok(MessageKind::Image),
            _ => Err(ValidationError::new(
                "type",
                "must be one of text, code, image",
            )),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Code => "code",
            MessageKind::Image => "image",
        }
    }
}

/// Who speaks in a message (seeds 002 and 003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person using the product.
    User,
    /// The model's reply.
    Assistant,
    /// Instructions to the model.
    System,
}

impl Role {
    /// Parses `user`, `assistant` or `system`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "system" => Ok(Role::System),
            _ => Err(ValidationError::new(
                "role",
                "must be one of user, assistant, system",
            )),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(ChatTitle::parse("  Hello ").unwrap().as_str(), "Hello");
        assert!(ChatTitle::parse("   ").is_err());
        assert!(ChatTitle::parse(&"é".repeat(200)).is_ok());
        assert!(ChatTitle::parse(&"é".repeat(201)).is_err());
        assert!(
            ChatTitle::parse(&format!(" {}", "é".repeat(200))).is_err(),
            "counted as sent"
        );
        assert!(ChatTitle::parse("a\u{7}b").is_err());
    }

    #[test]
    fn content_keeps_whitespace_but_refuses_blank_and_huge() {
        assert_eq!(MessageContent::parse("  x\n").unwrap().as_str(), "  x\n");
        assert!(MessageContent::parse(" \n\t").is_err());
        assert!(MessageContent::parse(&"a".repeat(100_001)).is_err());
        assert!(MessageContent::parse("a\0b").is_err());
    }

    #[test]
    fn kinds_and_roles_parse_only_their_names() {
        assert_eq!(MessageKind::parse("code"), Ok(MessageKind::Code));
        assert_eq!(MessageKind::parse("Code").unwrap_err().field, "type");
        assert_eq!(Role::parse("assistant"), Ok(Role::Assistant));
        assert!(Role::parse("admin").is_err());
    }
}
