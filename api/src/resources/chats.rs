//! Chats, messages and attachments: the `/api/chats...` routes show them in camelCase, the
//! seed-002 routes (`/chat/conversations...`) as [`Snake`](super::Snake) of the same types.

use super::SnakeCase;
use chrono::{DateTime, Utc};
use confab_application::chats::{EditedMessage, MessageVersion, VersionKind};
use confab_application::{Page, PageRequest};
use confab_projections::chats::{AttachmentRow, ChatRow, MessageRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// What a message holds.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    /// Prose.
    Text,
    /// Source code.
    Code,
    /// An image reference.
    Image,
}

/// Who speaks in a message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// The person using the product.
    User,
    /// The model's reply.
    Assistant,
    /// Instructions to the model.
    System,
}

/// A chat (a conversation, on the seed-002 routes).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    /// The chat's id.
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Its title.
    pub title: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl SnakeCase for Chat {}

impl From<ChatRow> for Chat {
    fn from(c: ChatRow) -> Self {
        Chat {
            id: c.id,
            user_id: c.owner_id,
            title: c.title,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A conversation: a chat as the seed-002 routes show it.
pub type Conversation = super::Snake<Chat>;

/// A message as the seed-002 routes show it.
pub type ConversationMessage = super::Snake<Message>;

/// A chat just created.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewChat {
    /// The chat's id.
    pub id: Uuid,
    /// Its title.
    pub title: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<ChatRow> for NewChat {
    fn from(c: ChatRow) -> Self {
        NewChat {
            id: c.id,
            title: c.title,
            created_at: c.created_at,
        }
    }
}

/// A page of chats, most recent activity first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatPage {
    /// The chats of this page.
    pub chats: Vec<Chat>,
    /// Chats in all.
    pub total: u64,
    /// This page, from 1.
    pub page: u32,
    /// The page size.
    pub limit: u32,
}

impl From<Page<ChatRow>> for ChatPage {
    fn from(p: Page<ChatRow>) -> Self {
        ChatPage {
            chats: p.items.into_iter().map(Chat::from).collect(),
            total: p.total,
            page: p.request.page,
            limit: p.request.limit,
        }
    }
}

/// A message.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The message's id.
    pub id: Uuid,
    /// Its chat (`conversation_id` on the seed-002 routes).
    pub chat_id: Uuid,
    /// Who speaks.
    #[schema(value_type = RoleName)]
    pub role: String,
    /// The text.
    pub content: String,
    /// What it holds.
    #[serde(rename = "type")]
    #[schema(value_type = KindName)]
    pub kind: String,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl SnakeCase for Message {
    const RENAMES: &'static [(&'static str, &'static str)] = &[("chatId", "conversation_id")];
}

impl From<MessageRow> for Message {
    fn from(m: MessageRow) -> Self {
        Message {
            id: m.id,
            chat_id: m.chat_id,
            role: m.role,
            content: m.content,
            kind: m.kind,
            user_id: m.user_id,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A page of messages: oldest first, or most relevant first for a search.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessagePage {
    /// The messages of this page.
    pub messages: Vec<Message>,
    /// Messages that match, in all.
    pub total: u64,
    /// This page, from 1.
    pub page: u32,
    /// The page size.
    pub limit: u32,
}

impl From<Page<MessageRow>> for MessagePage {
    fn from(p: Page<MessageRow>) -> Self {
        MessagePage {
            messages: p.items.into_iter().map(Message::from).collect(),
            total: p.total,
            page: p.request.page,
            limit: p.request.limit,
        }
    }
}

/// A message as an edit left it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageEdit {
    /// The message's id.
    pub id: Uuid,
    /// The text.
    pub content: String,
    /// What it holds.
    #[serde(rename = "type")]
    #[schema(value_type = KindName)]
    pub kind: String,
    /// When it changed.
    pub updated_at: DateTime<Utc>,
}

impl From<EditedMessage> for MessageEdit {
    fn from(m: EditedMessage) -> Self {
        MessageEdit {
            id: m.id,
            content: m.content,
            kind: m.kind,
            updated_at: m.updated_at,
        }
    }
}

/// What one version of a message records.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionKindName {
    /// It was sent.
    Created,
    /// Its content or type changed.
    Edited,
    /// It was deleted, on its own or with its chat.
    Deleted,
    /// Its deletion was undone.
    Restored,
}

impl From<VersionKind> for VersionKindName {
    fn from(k: VersionKind) -> Self {
        match k {
            VersionKind::Created => VersionKindName::Created,
            VersionKind::Edited => VersionKindName::Edited,
            VersionKind::Deleted => VersionKindName::Deleted,
            VersionKind::Restored => VersionKindName::Restored,
        }
    }
}

/// One version of a message.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageVersionBody {
    /// From 1, oldest first.
    pub version: u32,
    /// What happened.
    pub kind: VersionKindName,
    /// The text from then on; absent for a deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub content: Option<String>,
    /// What it holds from then on; absent for a deletion.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<KindName>)]
    pub message_type: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// Whether the message is deleted from then on.
    pub deleted: bool,
}

impl From<MessageVersion> for MessageVersionBody {
    fn from(v: MessageVersion) -> Self {
        let (content, message_type) = v.content.unzip();
        MessageVersionBody {
            version: v.version,
            kind: v.kind.into(),
            content,
            message_type,
            at: v.at,
            deleted: v.kind == VersionKind::Deleted,
        }
    }
}

/// Every version of a message, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageHistory {
    /// The message.
    pub message_id: Uuid,
    /// Its versions: creation, each edit, deletion and restoration.
    pub versions: Vec<MessageVersionBody>,
}

/// `?asOf`: a past time to read the chat at.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// An RFC 3339 date-time: answer as things were then, built from the event log.
    #[param(value_type = Option<DateTime<Utc>>, format = DateTime)]
    pub as_of: Option<String>,
}

/// A file reference on a message (seed 002).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attachment {
    /// The attachment's id.
    pub id: Uuid,
    /// Its message.
    pub message_id: Uuid,
    /// The file's type.
    pub file_type: String,
    /// Where the file is.
    pub file_path: String,
    /// When it was attached.
    pub created_at: DateTime<Utc>,
}

impl From<AttachmentRow> for Attachment {
    fn from(a: AttachmentRow) -> Self {
        Attachment {
            id: a.id,
            message_id: a.message_id,
            file_type: a.file_type,
            file_path: a.file_path,
            created_at: a.created_at,
        }
    }
}

/// A title: `{title}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TitleBody {
    /// 1 to 200 characters, trimmed; no control characters.
    #[schema(max_length = 200, pattern = "patterns::TRIMMED_LINE")]
    pub title: String,
}

/// A message to send: `{content, type}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendBody {
    /// The text: not blank, at most 100,000 characters, no NUL.
    #[schema(max_length = 100_000, pattern = "patterns::NOT_BLANK")]
    pub content: String,
    /// `text` (the default), `code` or `image`.
    #[serde(rename = "type")]
    #[schema(nullable = false, value_type = Option<KindName>)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub kind: Option<String>,
}

/// An edit: the content, the type or both.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EditBody {
    /// The new text.
    #[schema(
        nullable = false,
        max_length = 100_000,
        pattern = "patterns::NOT_BLANK"
    )]
    #[serde(default, deserialize_with = "super::not_null")]
    pub content: Option<String>,
    /// The new type.
    #[serde(rename = "type")]
    #[schema(nullable = false, value_type = Option<KindName>)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub kind: Option<String>,
}

/// A new conversation (seed 002).
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewConversation {
    /// The caller's own id (any user's, for an admin).
    pub user_id: Uuid,
    /// 1 to 200 characters, trimmed; no control characters.
    #[schema(max_length = 200, pattern = "patterns::TRIMMED_LINE")]
    pub title: String,
}

/// A new message in a conversation (seed 002).
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMessage {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Who speaks.
    #[schema(value_type = RoleName)]
    pub role: String,
    /// The text: not blank, at most 100,000 characters, no NUL.
    #[schema(max_length = 100_000, pattern = "patterns::NOT_BLANK")]
    pub content: String,
}

/// A new attachment (seed 002).
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAttachment {
    /// The message (the caller's own).
    pub message_id: Uuid,
    /// The file's type: 1 to 100 characters, no whitespace.
    #[schema(max_length = 100, pattern = "patterns::TOKEN")]
    pub file_type: String,
    /// Where the file is: 1 to 1024 characters, no control characters, no `..` segment.
    #[schema(min_length = 1, max_length = 1024, pattern = "patterns::SAFE_PATH")]
    pub file_path: String,
}

/// Which page: `?page&limit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The page, from 1 (default 1).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: Option<String>,
    /// The page size, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

/// Which messages: `?page&limit&type&search&startDate&endDate` (and `q` for the search route).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// The page, from 1 (default 1).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub page: Option<String>,
    /// The page size, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Only messages of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<KindName>)]
    pub kind: Option<String>,
    /// Words that must all occur (any order; case and accents ignored); ranks the results.
    pub search: Option<String>,
    /// Sent at or after (an ISO date, or an RFC 3339 date-time).
    #[param(value_type = Option<DateOrDateTime>)]
    pub start_date: Option<String>,
    /// Sent at or before (an ISO date, or an RFC 3339 date-time); a date includes its day.
    #[param(value_type = Option<DateOrDateTime>)]
    pub end_date: Option<String>,
    /// The search route's words (documented there).
    #[param(ignore)]
    pub q: Option<String>,
}

/// `q`, the words of `GET /api/messages/search` (which also takes the message filters).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchWords {
    /// Words that must all occur (any order; case and accents ignored).
    #[param(pattern = "patterns::NOT_BLANK")]
    pub q: String,
}

/// Validated paging from query text: every problem is recorded, by field.
pub fn page_request(
    page: Option<&str>,
    limit: Option<&str>,
    problems: &mut confab_application::Problems,
) -> PageRequest {
    let page = page.map(|p| p.parse::<u32>().unwrap_or(0));
    let limit = limit.map(|l| l.parse::<u32>().unwrap_or(0));
    PageRequest::parse(page, limit).unwrap_or_else(|more| {
        for (field, reason) in more.iter() {
            problems.add(field, reason);
        }
        PageRequest::default()
    })
}

/// An ISO date (`2026-03-01`, the whole day) or an RFC 3339 date-time.
#[derive(Debug)]
pub struct DateOrDateTime;

impl utoipa::PartialSchema for DateOrDateTime {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let of = |f| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(f)))
        };
        OneOfBuilder::new()
            .item(of(KnownFormat::Date))
            .item(of(KnownFormat::DateTime))
            .into()
    }
}

impl ToSchema for DateOrDateTime {}
