//! Users: the account as `GET /api/me` and sign-in show it, the sign-up and sign-in forms, and
//! the profile.

use chrono::{DateTime, Utc};
use confab_application::accounts::SignedIn;
use confab_projections::accounts::UserRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A user, as they see themselves.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// Their address, normalised.
    pub email: String,
    /// Their display name.
    pub name: String,
    /// Where their profile image is served, if they uploaded one.
    pub image_url: Option<String>,
    /// `user` or `admin`.
    #[schema(example = "user")]
    pub role: String,
    /// The billing tier.
    #[schema(example = "free")]
    pub tier: String,
    /// The credit balance.
    pub credits: i64,
}

impl User {
    /// The user of `row` with `credits`.
    pub fn new(row: &UserRow, credits: i64) -> Self {
        User {
            id: row.id,
            email: row.email.clone(),
            name: row.name.clone(),
            image_url: row.image_url.clone(),
            role: row.role.clone(),
            tier: row.tier.clone(),
            credits,
        }
    }
}

/// `{user}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserEnvelope {
    /// The user.
    pub user: User,
}

/// A new session: the user and the token to authenticate with (also set as the
/// `confab_session` cookie).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    /// The user.
    pub user: User,
    /// The bearer token; given once, never stored.
    pub token: String,
}

impl From<&SignedIn> for Session {
    fn from(s: &SignedIn) -> Self {
        Session {
            user: User::new(&s.user, s.credits),
            token: s.token.clone(),
        }
    }
}

/// The sign-up form.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignUpBody {
    /// An email address no account holds.
    #[schema(max_length = 254, pattern = "patterns::EMAIL")]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// The display name.
    #[schema(max_length = 100, pattern = "patterns::TRIMMED_LINE")]
    pub name: String,
}

/// The sign-in form.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignInBody {
    /// The account's address.
    pub email: String,
    /// Its password.
    pub password: String,
}

/// `DELETE /api/me`: the password again, to confirm the erasure.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteMeBody {
    /// The account's password.
    pub password: String,
}

/// A profile change: either field, or both.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProfileBody {
    /// The new display name.
    #[schema(nullable = false, max_length = 100, pattern = "patterns::TRIMMED_LINE")]
    #[serde(default, deserialize_with = "super::not_null")]
    pub name: Option<String>,
    /// The new address (409 if another account holds it).
    #[schema(nullable = false, max_length = 254, pattern = "patterns::EMAIL")]
    #[serde(default, deserialize_with = "super::not_null")]
    pub email: Option<String>,
}

/// The profile as a change left it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The display name.
    pub name: String,
    /// The address.
    pub email: String,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
}

/// `{user: {name, email, updatedAt}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProfileEnvelope {
    /// The profile.
    pub user: Profile,
}

/// A new profile image.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileImage {
    /// Where it is served.
    pub image_url: String,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
}

/// The multipart form of `POST /api/profile/image`: one file field, nothing else.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ImageForm {
    /// A JPEG, PNG or GIF file, at most 5 MB and 2048x2048 pixels.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
}

/// One chat of an export, with every message, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedChat {
    /// The chat.
    #[serde(flatten)]
    pub chat: super::chats::Chat,
    /// Its messages.
    pub messages: Vec<super::chats::Message>,
}

/// `GET /api/me/export`: everything Confab holds about the caller. Streamed: `chats` comes
/// last, one chat at a time.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportDocument {
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The account.
    pub user: User,
    /// The settings.
    pub settings: super::settings::Settings,
    /// Every document's metadata (not its text), newest first.
    pub documents: Vec<super::documents::DocumentInfo>,
    /// The whole credit history, newest first.
    pub credit_history: Vec<super::ai::CreditTransaction>,
    /// The invoices.
    pub invoices: Vec<super::billing::Invoice>,
    /// Every chat with its messages, most recent activity first. Must stay the last field:
    /// the export streams it after the rest.
    pub chats: Vec<ExportedChat>,
}
