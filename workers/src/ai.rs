//! AI chat jobs: generating a reply (the LLM call, streamed to the hub, stored as the chat's
//! assistant message, charged to the credit ledger) and the monthly credit reset.
//!
//! Every effect is idempotent, so a job that is retried or re-run after a crash changes state
//! once: the assistant message's id is the reply's id (the chat refuses a second message with
//! it), and the credits are consumed or released by the reservation's id (the ledger ignores a
//! second consumption or release).

use crate::llm::{self, CallError, CallPolicy, Endpoint, ProviderSpec, Turn, Usage};
use crate::relay::{Relay, ReplyWriter};
use crate::replies::Ending;
use chrono::Utc;
use confab_domain::catalogue::{Catalogue, Model, estimate_tokens};
use confab_domain::chat::{Chat, ChatCommand, ChatError};
use confab_domain::credits::{CreditAccount, CreditAction, CreditCommand, CreditError};
use confab_domain::{MessageContent, MessageKind, Role};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::{CommandExecutor, ExecuteError};
use confab_projections::{Positions, ReadDb};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Shown at the end of a reply the provider cut short, and kept in the stored message.
pub const INTERRUPTED: &str = "[reply interrupted";

/// The job: generate the reply `reply_id` in `chat_id` for `user`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateReply {
    /// The reply, its assistant message and its credit reservation share this id.
    pub reply_id: Uuid,
    /// The chat.
    pub chat_id: Uuid,
    /// The chat's owner, who pays.
    pub user: Uuid,
    /// The catalogue's model id.
    pub model: String,
    /// The conversation to answer.
    pub turns: Vec<Turn>,
    /// The request that asked for it.
    pub correlation_id: Option<Uuid>,
}

/// Decrypts a user's stored provider key.
pub type Decrypt = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What AI jobs and the chat routes share.
#[derive(Clone)]
pub struct Ai {
    /// Runs commands.
    pub commands: Arc<CommandExecutor>,
    /// Read models.
    pub db: ReadDb,
    /// Projection positions, for read-your-writes.
    pub positions: Positions,
    /// Where live replies travel to their listeners.
    pub relay: Relay,
    /// Models and tiers.
    pub catalogue: Arc<Catalogue>,
    /// Configured providers.
    pub providers: Arc<Vec<ProviderSpec>>,
    /// Time limits and retries of provider calls.
    pub policy: CallPolicy,
    /// Decrypts users' own keys.
    pub decrypt: Decrypt,
    /// How long to wait for a write to become readable.
    pub write_timeout: Duration,
}

/// Why no provider can serve a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no provider is configured for model {model:?} (provider {provider:?}): set {setting}, \
     or add your own key for {provider:?} in your LLM configs"
)]
pub struct NoProvider {
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// The setting that would configure it.
    pub setting: String,
}

impl Ai {
    /// Where a call of `model` for `user` goes: the user's own key for the model's provider if
    /// they set one, or else the configured provider.
    pub async fn endpoint(&self, user: Uuid, model: &Model) -> anyhow::Result<Endpoint> {
        if let Some((base_url, sealed)) = confab_projections::providers::user_key_by_provider_name(
            &self.db,
            user,
            &model.provider,
        )
        .await?
            && let Some(key) = (self.decrypt)(&sealed)
        {
            return Ok(Endpoint {
                base_url,
                api_key: Some(key),
            });
        }
        match self.providers.iter().find(|p| p.name == model.provider) {
            Some(p) => Ok(Endpoint {
                base_url: p.base_url.clone(),
                api_key: p.api_key.clone(),
            }),
            None => Err(NoProvider {
                model: model.id.clone(),
                provider: model.provider.clone(),
                setting: match model.provider.as_str() {
                    "openai" => "OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)".into(),
                    "anthropic" => "ANTHROPIC_API_KEY".into(),
                    other => format!("a [[providers]] entry named {other:?} in the config file"),
                },
            }
            .into()),
        }
    }

    /// The starting allowance of `user`'s tier.
    pub async fn opening(&self, user: Uuid) -> anyhow::Result<i64> {
        let tier = confab_projections::accounts::tier(&self.db, user)
            .await?
            .unwrap_or_default();
        Ok(self.catalogue.tier(&tier).starting_credits)
    }

    async fn credits(
        &self,
        user: Uuid,
        action: CreditAction,
        meta: EventMetadata,
    ) -> anyhow::Result<Option<u64>> {
        Ok(self.run_credits(user, action, meta).await??)
    }

    /// Runs a credit command on `user`'s ledger (opening it on first use): the position of
    /// what it appended (none when it changed nothing), or the ledger's refusal. The outer
    /// error is the store's.
    pub async fn run_credits(
        &self,
        user: Uuid,
        action: CreditAction,
        meta: EventMetadata,
    ) -> anyhow::Result<Result<Option<u64>, CreditError>> {
        let opening = self.opening(user).await?;
        let done = self
            .commands
            .execute::<CreditAccount>(
                &user,
                CreditCommand {
                    user,
                    opening,
                    at: Utc::now(),
                    action,
                },
                meta,
            )
            .await;
        match done {
            Ok(done) => Ok(Ok(done.appended.map(|a| a.last_position))),
            Err(ExecuteError::Domain(refused)) => Ok(Err(refused)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the monthly reset for every account: `(accounts reset now, accounts seen)`. An
    /// account already reset this month (by the schedule or the cron route, whichever ran
    /// first) is not reset again.
    pub async fn reset_all(&self) -> anyhow::Result<(u64, u64)> {
        let accounts = confab_projections::accounts::all_tiers(&self.db).await?;
        let mut reset = 0;
        let mut last = 0;
        let meta = EventMetadata {
            actor: None,
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        };
        for (user, tier) in &accounts {
            let tier = self.catalogue.tier(tier);
            let done = self
                .commands
                .execute::<CreditAccount>(
                    user,
                    CreditCommand {
                        user: *user,
                        opening: tier.starting_credits,
                        at: Utc::now(),
                        action: CreditAction::Reset {
                            allowance: tier.monthly_credits,
                        },
                    },
                    meta.clone(),
                )
                .await?;
            if let Some(a) = done.appended {
                reset += 1;
                last = last.max(a.last_position);
            }
        }
        // Whoever asked for the reset reads its effect next.
        if last > 0 {
            let _ = self
                .positions
                .wait_for(confab_projections::credits::NAME, last, self.write_timeout)
                .await;
        }
        tracing::info!(reset, accounts = accounts.len(), "monthly credit reset");
        Ok((reset, accounts.len() as u64))
    }

    /// Generates, relays, stores and charges one reply. Failures that are the provider's are
    /// handled here (reported in the reply, credits released or charged for what was
    /// produced); an `Err` means the job should be retried (the store was unreachable).
    pub async fn generate(&self, job: &GenerateReply) -> anyhow::Result<()> {
        let mut reply = self.relay.writer(job.reply_id, job.chat_id, job.user);
        let meta = EventMetadata {
            actor: Some(job.user),
            correlation_id: job.correlation_id,
            causation_id: Some(job.reply_id),
        };
        // Nothing produced: the whole reservation goes back and the reply ends with why.
        let give_up = |reply: ReplyWriter, why: String| async {
            self.credits(
                job.user,
                CreditAction::Release {
                    reservation_id: job.reply_id,
                },
                meta.clone(),
            )
            .await?;
            reply.finish(Ending::Failed(why)).await;
            Ok(())
        };
        let Some(model) = self.catalogue.model(&job.model).cloned() else {
            let why = format!("model {:?} is no longer in the catalogue", job.model);
            return give_up(reply, why).await;
        };
        let endpoint = match self.endpoint(job.user, &model).await {
            Ok(e) => e,
            Err(e) => return give_up(reply, e.to_string()).await,
        };
        // A re-run job (after a crash) starts the reply over.
        reply.restart();
        let outcome = llm::stream_reply(
            &endpoint,
            &self.policy,
            &model.upstream_model,
            model.max_output_tokens,
            &job.turns,
            |t| reply.push(t),
        )
        .await;
        let text = reply.text().to_owned();
        let (ending, stored, usage) = match outcome {
            Ok(usage) => (Ending::Done, text.clone(), usage),
            Err(CallError::BeforeFirstToken(why)) => {
                tracing::warn!(reply = %job.reply_id, %why, "reply failed before its first token");
                return give_up(reply, why).await;
            }
            Err(CallError::AfterFirstToken(why)) => {
                tracing::warn!(reply = %job.reply_id, %why, "reply cut short");
                let stored = format!("{text}\n\n{INTERRUPTED}: {why}]");
                (Ending::Failed(why), stored, None)
            }
        };
        // Charge by the provider's counts, or by an estimate when it reported none.
        let usage = usage.unwrap_or(Usage {
            input: estimate_tokens(job.turns.iter().map(|t| t.content.as_str())),
            output: (text.len() as u64).div_ceil(4),
        });
        let mut position = None;
        if let Ok(content) = MessageContent::parse(&stored) {
            let sent = self
                .commands
                .execute::<Chat>(
                    &job.chat_id,
                    ChatCommand::SendMessage {
                        message_id: job.reply_id,
                        actor: job.user,
                        role: Role::Assistant,
                        content,
                        kind: MessageKind::Text,
                        at: Utc::now(),
                    },
                    meta.clone(),
                )
                .await;
            match sent {
                Ok(done) => position = done.appended.map(|a| a.last_position),
                // Stored by an earlier run of this job, or the chat was deleted meanwhile.
                Err(ExecuteError::Domain(
                    ChatError::MessageAlreadyExists | ChatError::ChatNotFound,
                )) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let charged = self
            .credits(
                job.user,
                CreditAction::Consume {
                    reservation_id: job.reply_id,
                    used: model.cost(usage.input, usage.output),
                    input_tokens: usage.input,
                    output_tokens: usage.output,
                },
                meta,
            )
            .await?;
        // The client that reads the chat or its balance after the end of the stream sees the
        // reply and the charge.
        for (projection, pos) in [
            (confab_projections::chats::NAME, position),
            (confab_projections::credits::NAME, charged),
        ] {
            if let Some(pos) = pos {
                let _ = self
                    .positions
                    .wait_for(projection, pos, self.write_timeout)
                    .await;
            }
        }
        reply.finish(ending).await;
        Ok(())
    }
}
