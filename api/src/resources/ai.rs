//! AI chat: the request that starts a reply, the models, credit history and the reset.

use chrono::{DateTime, Utc};
use confab_domain::catalogue::Model;
use confab_projections::credits::TransactionRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `{message}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusMessage {
    /// What the route says.
    pub message: String,
}

/// One message of the conversation a client sends.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct InTurn {
    /// Who speaks.
    #[schema(value_type = super::chats::RoleName)]
    pub role: String,
    /// The text: not blank, at most 100,000 characters.
    #[schema(max_length = 100_000, pattern = "patterns::NOT_BLANK")]
    pub content: String,
}

/// The body of `POST /api/chat`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatBody {
    /// The conversation, 1 to 200 messages; the last one must be the user's (422 otherwise).
    #[schema(min_items = 1, max_items = 200)]
    pub messages: Vec<InTurn>,
    /// The chat to answer in (the caller's); a new chat when absent.
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub chat_id: Option<Uuid>,
    /// A model of `GET /api/models`; the default model when absent.
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub model_id: Option<String>,
    /// The caller's documents whose most relevant passages ground the answer, at most 20
    /// (404 for an unknown or another user's id, 409 for one not ready).
    #[schema(nullable = false, max_items = 20)]
    #[serde(default, deserialize_with = "super::not_null")]
    pub document_ids: Option<Vec<Uuid>>,
}

/// A model the caller may use, with its credit price.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The id to send as `modelId`.
    pub id: String,
    /// The provider that serves it.
    pub provider: String,
    /// The lowest tier that may use it.
    pub tier: String,
    /// Credits per 1,000 input tokens.
    pub input_price_per_1k: u32,
    /// Credits per 1,000 output tokens.
    pub output_price_per_1k: u32,
    /// The longest reply, in tokens.
    pub max_output_tokens: u32,
}

impl From<&Model> for ModelInfo {
    fn from(m: &Model) -> Self {
        ModelInfo {
            id: m.id.clone(),
            provider: m.provider.clone(),
            tier: m.min_tier.clone(),
            input_price_per_1k: m.input_price_per_1k,
            output_price_per_1k: m.output_price_per_1k,
            max_output_tokens: m.max_output_tokens,
        }
    }
}

/// `{models, defaultModel}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelList {
    /// The models the caller's tier may use.
    pub models: Vec<ModelInfo>,
    /// The model used when a request names none.
    pub default_model: String,
}

/// The kinds of credit transaction.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransactionKind {
    /// A reply's charge.
    Usage,
    /// The monthly reset.
    Reset,
    /// Credits bought.
    Topup,
    /// A subscription's monthly credits.
    Subscription,
    /// The starting credits the account opened with.
    Grant,
    /// An operator's correction of the balance (`reference.reason` says why, `reference.by`
    /// who).
    Adjustment,
    /// A reply's hold given back because it expired unsettled (amount 0: a hold never took
    /// credits away, it kept them from use; `reference.released` says how many).
    Release,
}

/// What a transaction refers to.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum CreditReference {
    /// A reply's charge: its chat, model and tokens; or a document's embeddings: the
    /// document, the embedding model and the tokens embedded (as input tokens).
    #[serde(rename_all = "camelCase")]
    Usage {
        /// The chat.
        chat_id: Option<Uuid>,
        /// The document whose embeddings were charged (absent on a reply's charge).
        #[serde(skip_serializing_if = "Option::is_none")]
        document_id: Option<Uuid>,
        /// The model.
        model: Option<String>,
        /// Input tokens.
        input_tokens: Option<i64>,
        /// Output tokens.
        output_tokens: Option<i64>,
    },
    /// A reset or the starting grant: its month.
    Reset {
        /// The month, `YYYY-MM`.
        period: Option<String>,
    },
    /// An operator's adjustment: why and who.
    Adjustment {
        /// The reason the operator gave.
        reason: Option<String>,
        /// The operator.
        by: Option<String>,
    },
    /// A release: the chat and model the expired hold was for, and what it gave back.
    #[serde(rename_all = "camelCase")]
    Release {
        /// The chat.
        chat_id: Option<Uuid>,
        /// The model.
        model: Option<String>,
        /// Credits the hold gave back.
        released: Option<i64>,
    },
    /// A grant: the payment (invoice or checkout session) it came from.
    Payment {
        /// Stripe's id.
        payment: Option<String>,
    },
}

/// One credit transaction.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditTransaction {
    /// The transaction's id.
    pub id: Uuid,
    /// Its kind.
    #[serde(rename = "type")]
    #[schema(value_type = TransactionKind)]
    pub kind: String,
    /// Credits added (negative when charged).
    pub amount: i64,
    /// The balance after it.
    pub balance_after: i64,
    /// When.
    pub created_at: DateTime<Utc>,
    /// What it refers to.
    #[schema(schema_with = credit_reference_any_of)]
    pub reference: CreditReference,
}

/// [`CreditReference`]'s schema as `anyOf`: its variants are objects of optional fields that
/// overlap (a reply's charge and a release both have `chatId` and `model`), so one answer can
/// match several of them, which `oneOf` forbids.
fn credit_reference_any_of() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AnyOfBuilder, Schema};
    match <CreditReference as utoipa::PartialSchema>::schema() {
        RefOr::T(Schema::OneOf(one)) => RefOr::T(Schema::AnyOf(
            one.items
                .into_iter()
                .fold(AnyOfBuilder::new(), |b, item| b.item(item))
                .description(Some(
                    "What the transaction refers to: the fields of its kind.",
                ))
                .build(),
        )),
        other => other,
    }
}

impl From<TransactionRow> for CreditTransaction {
    fn from(r: TransactionRow) -> Self {
        let reference = match r.kind.as_str() {
            "usage" => CreditReference::Usage {
                chat_id: r.chat_id,
                document_id: r.reference.as_deref().and_then(|d| d.parse().ok()),
                model: r.model,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
            },
            "reset" | "grant" => CreditReference::Reset {
                period: r.reference,
            },
            "adjustment" => CreditReference::Adjustment {
                reason: r.reference,
                by: r.actor,
            },
            "release" => CreditReference::Release {
                chat_id: r.chat_id,
                model: r.model,
                released: r.released,
            },
            _ => CreditReference::Payment {
                payment: r.reference,
            },
        };
        CreditTransaction {
            id: r.id,
            kind: r.kind,
            amount: r.amount,
            balance_after: r.balance_after,
            created_at: r.created_at,
            reference,
        }
    }
}

/// A page of credit history, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreditHistory {
    /// The transactions of this page.
    pub transactions: Vec<CreditTransaction>,
    /// Transactions in all.
    pub total: u64,
    /// The page size.
    pub limit: u32,
    /// Transactions skipped.
    pub offset: u64,
}

/// The largest whole number every JSON client reads exactly (2^53 - 1): the bound of offsets.
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// `?limit&offset&type` of the credit history.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Transactions to skip (default 0).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub offset: Option<String>,
    /// Only transactions of this kind.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<TransactionKind>)]
    pub kind: Option<String>,
}

/// `?offset` of a resumed reply.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OffsetQuery {
    /// Bytes of the reply already received (default 0: from its start).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub offset: Option<String>,
}

/// `{message: "Credit reset completed", resetCount}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetResult {
    /// `Credit reset completed`.
    pub message: String,
    /// Accounts reset by this run (an account is reset once a month).
    pub reset_count: u64,
}
