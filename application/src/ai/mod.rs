//! AI chat (seed 003): starting a reply (the user's message stored, the reply's worst-case
//! cost reserved, the job queued), resuming it, generating it in a worker (the LLM call,
//! streamed to the relay, stored as the chat's assistant message, charged to the ledger), and
//! the models a user may use.
//!
//! Every effect of a reply is idempotent, so a job that is retried or re-run after a crash
//! changes state once: the assistant message's id is the reply's id (the chat refuses a second
//! message with it), and the credits are consumed or released by the reservation's id (the
//! ledger ignores a second consumption or release). The provider is called once: an attempt
//! after one that got past its first token finishes the reply from the text kept as it
//! streamed ([`relay::Relay::draft`]).

pub mod llm;
pub mod relay;
pub mod replies;

use crate::jobs::{GenerateReply, Job};
use crate::{Actor, AppError, Details, Problems, Services, credits, now};
use chrono::Utc;
use confab_domain::catalogue::{Model, estimate_tokens};
use confab_domain::chat::{Chat, ChatCommand, ChatError};
use confab_domain::credits::CreditAction;
use confab_domain::{ChatTitle, MessageContent, MessageKind, Role};
use confab_eventstore::EventMetadata;
use confab_eventstore::aggregate::ExecuteError;
use confab_projections::chats;
use llm::{CallError, CallPolicy, Endpoint, ProviderSpec, Turn, Usage};
use replies::{Ending, Reply};
use std::sync::Arc;
use uuid::Uuid;

/// Shown at the end of a reply the provider cut short, and kept in the stored message.
pub const INTERRUPTED: &str = "[reply interrupted";

/// Most messages one request may send as context.
pub const MAX_TURNS: usize = 200;

/// The configured providers and the rules of calling them.
#[derive(Debug, Clone, Default)]
pub struct LlmSettings {
    /// Providers by name.
    pub providers: Vec<ProviderSpec>,
    /// Time limits and retries.
    pub policy: CallPolicy,
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

impl From<NoProvider> for AppError {
    fn from(np: NoProvider) -> Self {
        let mut details = Details::new();
        details.insert("setting".into(), np.setting.clone().into());
        details.insert("provider".into(), np.provider.clone().into());
        AppError::Unavailable {
            message: np.to_string(),
            details,
        }
    }
}

/// `user`'s own endpoint for `provider`, when they stored a key for it: the registered
/// provider's URL, checked at connect time. A stored key that cannot be decrypted is an
/// error the user sees, never a silent fall-back to the operator's key (which would bill the
/// operator for the user's traffic and hide that their key is unusable).
pub async fn user_endpoint(
    svc: &Services,
    user: Uuid,
    provider: &str,
) -> Result<Option<Endpoint>, AppError> {
    let Some(stored) =
        confab_projections::providers::user_key_by_provider_name(&svc.db, user, provider).await?
    else {
        return Ok(None);
    };
    let scope = crate::providers::KeyScope {
        user,
        provider: stored.provider_id,
    };
    let key = svc
        .cipher
        .decrypt(&stored.encrypted_key, scope)
        .map_err(|e| {
            tracing::error!(user = %user, provider = %provider, error = %e,
                "a stored provider key cannot be decrypted");
            let mut details = Details::new();
            details.insert("provider".into(), provider.into());
            AppError::Unavailable {
                message: format!("your key for {provider} cannot be used; set it again"),
                details,
            }
        })?;
    Ok(Some(Endpoint {
        base_url: stored.api_endpoint,
        api_key: Some(key),
        guard: Some(crate::providers::GuardedResolver::new(
            svc.provider_hosts_allowlist.to_vec(),
        )),
    }))
}

/// The operator's configured endpoint for `provider`, if any.
pub fn configured_endpoint(svc: &Services, provider: &str) -> Option<Endpoint> {
    svc.llm
        .providers
        .iter()
        .find(|p| p.name == provider)
        .map(|p| Endpoint {
            base_url: p.base_url.clone(),
            api_key: p.api_key.clone(),
            guard: None,
        })
}

/// Where a call of `model` for `user` goes: the user's own key for the model's provider if
/// they set one, or else the configured provider.
pub async fn endpoint(svc: &Services, user: Uuid, model: &Model) -> Result<Endpoint, AppError> {
    if let Some(own) = user_endpoint(svc, user, &model.provider).await? {
        return Ok(own);
    }
    configured_endpoint(svc, &model.provider).ok_or_else(|| {
        NoProvider {
            model: model.id.clone(),
            provider: model.provider.clone(),
            setting: match model.provider.as_str() {
                "openai" => "OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)".into(),
                "anthropic" => "ANTHROPIC_API_KEY".into(),
                other => format!("a [[providers]] entry named {other:?} in the config file"),
            },
        }
        .into()
    })
}

/// The models `actor`'s tier may use.
pub fn models(svc: &Services, actor: &Actor) -> Vec<Model> {
    svc.catalogue
        .models
        .iter()
        .filter(|m| svc.catalogue.allows(&actor.user.tier, m))
        .cloned()
        .collect()
}

/// What a client asks to be answered.
#[derive(Debug, Clone, Default)]
pub struct ReplyRequest {
    /// The conversation; the last message is the user's.
    pub messages: Vec<Turn>,
    /// The chat to answer in; a new one when absent.
    pub chat_id: Option<Uuid>,
    /// The catalogue's model; the default when absent.
    pub model_id: Option<String>,
    /// Documents to ground the answer on.
    pub document_ids: Vec<Uuid>,
}

/// A reply on its way.
pub struct StartedReply {
    /// The chat it answers in (new or given).
    pub chat_id: Uuid,
    /// The live reply, to listen to.
    pub reply: Arc<Reply>,
    /// Where the user's message was appended: read-your-writes for the end of the stream.
    pub user_message_at: Option<u64>,
}

/// Checks a reply request: at most [`MAX_TURNS`] messages, each with a known role and some
/// content, the last one the user's, a known model.
fn validate(svc: &Services, request: &ReplyRequest) -> Result<(Model, MessageContent), Problems> {
    let mut problems = Problems::new();
    if request.messages.is_empty() {
        problems.add("messages", "must hold at least one message");
    } else if request.messages.len() > MAX_TURNS {
        problems.add("messages", format!("at most {MAX_TURNS} messages"));
    }
    for (i, m) in request.messages.iter().enumerate() {
        if Role::parse(&m.role).is_err() {
            problems.add(
                format!("messages[{i}].role"),
                "must be user, assistant or system",
            );
        }
        if m.content.trim().is_empty() {
            problems.add(format!("messages[{i}].content"), "must not be empty");
        }
    }
    let last = request.messages.last();
    if last.is_some_and(|m| m.role != "user") {
        problems.add("messages", "the last message must be the user's");
    }
    let content = last.map(|m| MessageContent::parse(&m.content));
    if let Some(Err(e)) = &content {
        problems.add("messages[-1].content", e.reason.clone());
    }
    let model_id = request
        .model_id
        .as_deref()
        .unwrap_or(&svc.catalogue.default_model);
    let model = svc.catalogue.model(model_id).cloned();
    if model.is_none() {
        let known: Vec<&str> = svc.catalogue.models.iter().map(|m| m.id.as_str()).collect();
        problems.add(
            "modelId",
            format!("unknown model; one of {}", known.join(", ")),
        );
    }
    if request.document_ids.len() > crate::documents::MAX_DOCUMENTS_PER_REQUEST {
        problems.add(
            "documentIds",
            format!(
                "at most {} documents",
                crate::documents::MAX_DOCUMENTS_PER_REQUEST
            ),
        );
    }
    match (model, content, problems.is_empty()) {
        (Some(model), Some(Ok(content)), true) => Ok((model, content)),
        _ => Err(problems),
    }
}

/// Starts a reply for `actor`: the user's message is stored (in a new chat when none is
/// given), the reply's worst-case cost is reserved, and a worker is asked to generate it.
/// The reply then streams from the returned handle; if the client goes away it is still
/// generated, stored and charged.
pub async fn start_reply(
    svc: &Services,
    actor: &Actor,
    request: ReplyRequest,
) -> Result<StartedReply, AppError> {
    let (model, content) = validate(svc, &request)?;
    let user = actor.id();
    if !svc.catalogue.allows(&actor.user.tier, &model) {
        return Err(AppError::Forbidden(format!(
            "model {:?} needs the {:?} tier or above; your tier is {:?}",
            model.id, model.min_tier, actor.user.tier
        )));
    }
    endpoint(svc, user, &model).await?;
    let (chat_id, new_chat) = match request.chat_id {
        Some(id) => {
            chats::get_chat(&svc.db, id, user)
                .await?
                .ok_or(AppError::NotFound("chat"))?;
            (id, false)
        }
        None => (Uuid::now_v7(), true),
    };
    // Grounding: the most relevant chunks of the named documents, as a system message before
    // the conversation (unknown or foreign ids are not found, unready ones a conflict).
    let mut turns = request.messages.clone();
    let grounding =
        crate::documents::context_for(svc, user, &request.document_ids, content.as_str()).await?;
    let (sources, embedding_model) = match grounding {
        Some(g) => {
            turns.insert(0, g.turn);
            (g.sources, g.embedding_model)
        }
        None => (Vec::new(), None),
    };

    // Hold the worst-case cost first: a request the balance cannot cover changes nothing.
    let reply_id = Uuid::now_v7();
    let meta = actor.metadata();
    let prompt = estimate_tokens(turns.iter().map(|m| m.content.as_str()));
    credits::run(
        svc,
        user,
        CreditAction::Reserve {
            reservation_id: reply_id,
            amount: model.reservation(prompt).max(1),
            chat_id,
            model: model.id.clone(),
            // A crash before the job is queued, or a job that runs out of attempts, leaves
            // the hold to the sweeper.
            expires_at: Utc::now() + svc.hold_ttl,
        },
        meta.clone(),
    )
    .await?;

    let stored = async {
        if new_chat {
            let title: String = content.as_str().trim().chars().take(80).collect();
            let title = ChatTitle::parse(&title).or_else(|_| ChatTitle::parse("New chat"))?;
            svc.commands
                .execute::<Chat>(
                    &chat_id,
                    ChatCommand::Create {
                        chat_id,
                        owner: user,
                        title,
                        at: now(),
                    },
                    meta.clone(),
                )
                .await?;
        }
        let sent = svc
            .commands
            .execute::<Chat>(
                &chat_id,
                ChatCommand::SendMessage {
                    message_id: Uuid::now_v7(),
                    actor: user,
                    role: Role::User,
                    content,
                    kind: MessageKind::Text,
                    at: now(),
                },
                meta.clone(),
            )
            .await
            .map_err(|e| match e {
                // The chat was deleted since it was read.
                ExecuteError::Domain(_) => AppError::NotFound("chat"),
                other => other.into(),
            })?;
        let reply = svc.relay.open(reply_id, chat_id, user).await?;
        svc.jobs
            .push(Job::Reply(GenerateReply {
                reply_id,
                chat_id,
                user,
                model: model.id.clone(),
                turns: turns.clone(),
                correlation_id: meta.correlation_id,
                sources: sources.clone(),
                embedding_model: embedding_model.clone(),
            }))
            .await?;
        Ok::<_, AppError>((reply, sent.appended.map(|a| a.last_position)))
    }
    .await;
    match stored {
        Ok((reply, user_message_at)) => Ok(StartedReply {
            chat_id,
            reply,
            user_message_at,
        }),
        Err(e) => {
            let released = credits::run(
                svc,
                user,
                CreditAction::Release {
                    reservation_id: reply_id,
                },
                meta,
            )
            .await;
            if let Err(release) = released {
                tracing::warn!(reply = %reply_id, error = %release, "could not release a reservation after a failed request");
            }
            // Whoever finds the reply (a resumed stream) learns it will not come.
            svc.relay
                .writer(reply_id, chat_id, user)
                .finish(Ending::Failed("the reply could not be queued".into()))
                .await;
            Err(e)
        }
    }
}

/// The latest reply in `actor`'s chat `chat_id`, running or just finished, if any.
pub async fn resume(
    svc: &Services,
    actor: &Actor,
    chat_id: Uuid,
) -> Result<Option<Arc<Reply>>, AppError> {
    chats::get_chat(&svc.db, chat_id, actor.id())
        .await?
        .ok_or(AppError::NotFound("chat"))?;
    Ok(svc.relay.latest_in_chat(chat_id, actor.id()).await?)
}

/// Generates, relays, stores and charges one reply: the body of the reply job. Failures that
/// are the provider's are handled here (reported in the reply, credits released or charged for
/// what was produced); an `Err` is the store's or the read models', and the job should be
/// retried when [`AppError::is_retryable`] says so.
pub async fn generate_reply(svc: &Services, job: &GenerateReply) -> Result<(), AppError> {
    let mut reply = svc.relay.writer(job.reply_id, job.chat_id, job.user);
    let meta = EventMetadata {
        actor: Some(job.user),
        correlation_id: job.correlation_id,
        causation_id: Some(job.reply_id),
    };
    // Nothing produced: the whole reservation goes back and the reply ends with why.
    let give_up = |reply: relay::ReplyWriter, why: String| async {
        credits::run(
            svc,
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
    let Some(model) = svc.catalogue.model(&job.model).cloned() else {
        let why = format!("model {:?} is no longer in the catalogue", job.model);
        return give_up(reply, why).await;
    };
    let (text, outcome) = match svc.relay.draft(job.reply_id).await? {
        // An earlier attempt got past its first token (and then crashed, or failed to store
        // the reply): the user has seen its text, and the provider was paid for it. Finish
        // from it, as it ended or as cut short, and never call the provider again.
        Some(draft) => {
            tracing::info!(reply = %job.reply_id, chars = draft.text.len(),
                "finishing a reply from the text an earlier attempt streamed");
            reply.resume(&draft.text);
            let outcome = draft.outcome.unwrap_or_else(|| {
                relay::StreamOutcome::Cut(
                    "the reply stopped when its worker did; this is what had arrived".into(),
                )
            });
            (draft.text, outcome)
        }
        None => {
            let endpoint = match endpoint(svc, job.user, &model).await {
                Ok(e) => e,
                Err(e @ AppError::Unavailable { .. }) => {
                    return give_up(reply, e.to_string()).await;
                }
                Err(e) => return Err(e),
            };
            // An earlier attempt may have announced the reply without text: start it over.
            reply.restart();
            let result = llm::stream_reply(
                &endpoint,
                &svc.llm.policy,
                &model.upstream_model,
                model.max_output_tokens,
                &job.turns,
                |t| reply.push(t),
            )
            .await;
            let outcome = match result {
                Ok(usage) => relay::StreamOutcome::Complete(usage),
                Err(CallError::BeforeFirstToken(why)) => {
                    tracing::warn!(reply = %job.reply_id, %why, "reply failed before its first token");
                    return give_up(reply, why).await;
                }
                Err(CallError::AfterFirstToken(why)) => {
                    tracing::warn!(reply = %job.reply_id, %why, "reply cut short");
                    relay::StreamOutcome::Cut(why)
                }
            };
            // Kept before the reply is stored, so an attempt after a failure from here on
            // finishes it the same way.
            reply.streamed(&outcome);
            (reply.text().to_owned(), outcome)
        }
    };
    let (ending, stored, usage) = match outcome {
        relay::StreamOutcome::Complete(usage) => (Ending::Done, text.clone(), usage),
        relay::StreamOutcome::Cut(why) => {
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
        let sent = svc
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
        let stored_message = match sent {
            Ok(done) => {
                position = done.appended.map(|a| a.last_position);
                true
            }
            // Stored by an earlier run of this job.
            Err(ExecuteError::Domain(ChatError::MessageAlreadyExists)) => true,
            // The chat was deleted meanwhile.
            Err(ExecuteError::Domain(ChatError::ChatNotFound)) => false,
            Err(e) => return Err(e.into()),
        };
        // The provenance of a grounded reply, recorded once beside it.
        if stored_message && !job.sources.is_empty() {
            svc.commands
                .execute::<confab_domain::sources::ReplySources>(
                    &job.reply_id,
                    confab_domain::sources::SourcesRecorded {
                        message_id: job.reply_id,
                        chat_id: job.chat_id,
                        owner: job.user,
                        model: job.model.clone(),
                        embedding_model: job.embedding_model.clone(),
                        sources: job.sources.clone(),
                        at: Utc::now(),
                    },
                    meta.clone(),
                )
                .await?;
        }
    }
    let charged = credits::run(
        svc,
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
        (chats::NAME, position),
        (confab_projections::credits::NAME, charged),
    ] {
        if let Err(e) = svc.visible(projection, pos).await {
            tracing::debug!(error = %e, "a reply's effect was not yet readable when it ended");
        }
    }
    reply.finish(ending).await;
    Ok(())
}
