//! Seeds a Confab database for the search benchmark (`bench/search.sh`): for each user id read
//! from a file (users signed up through the API, so they have real sessions), creates chats and
//! messages by deciding the same domain commands the API sends and appending their events to
//! the event log in large appends. The read models are built by the projections as usual when
//! the server next starts, so search runs over exactly what the API would have produced.
//!
//! `CONFAB_DATABASE_URL=... cargo run --release --example seed_messages -- <users-file>
//!  <chats-per-user> <messages-per-chat>`
//!
//! Message text is drawn from a fixed vocabulary of 4,000 made-up words with a Zipf-like
//! distribution (a few very common words, a long tail of rare ones), seeded, so every run seeds
//! the same text.

use anyhow::Context;
use chrono::{Duration, Utc};
use confab::backend::{Backend, Migrations};
use confab::config::Config;
use confab_domain::chat::{Chat, ChatCommand};
use confab_domain::{Aggregate, ChatTitle, EventSchema, MessageContent, MessageKind, Role};
use confab_eventstore::{EventMetadata, ExpectedVersion, NewEvent};
use uuid::Uuid;

/// A small deterministic generator (xorshift64*), so runs are reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The vocabulary: 4,000 words made of syllables, and the cumulative Zipf weights.
fn vocabulary() -> (Vec<String>, Vec<f64>) {
    const SYLLABLES: [&str; 20] = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "vu", "shi", "ga", "mo", "el", "an",
        "tor", "bel", "qui", "zen", "ur",
    ];
    let mut words = Vec::new();
    'outer: for a in SYLLABLES {
        for b in SYLLABLES {
            for c in SYLLABLES {
                words.push(format!("{a}{b}{c}"));
                if words.len() == 4_000 {
                    break 'outer;
                }
            }
        }
    }
    let mut cumulative = Vec::with_capacity(words.len());
    let mut total = 0.0;
    for rank in 1..=words.len() {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    (words, cumulative)
}

fn sentence(rng: &mut Rng, words: &[String], cumulative: &[f64]) -> String {
    let total = *cumulative.last().expect("vocabulary");
    let n = 8 + rng.below(23);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let x = (rng.next() as f64 / u64::MAX as f64) * total;
        let i = cumulative.partition_point(|c| *c < x).min(words.len() - 1);
        out.push(words[i].as_str());
    }
    out.join(" ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, users_file, chats_per_user, per_chat] = args.as_slice() else {
        anyhow::bail!("usage: seed_messages <users-file> <chats-per-user> <messages-per-chat>");
    };
    let chats_per_user: usize = chats_per_user.parse().context("chats-per-user")?;
    let per_chat: usize = per_chat.parse().context("messages-per-chat")?;
    let users: Vec<Uuid> = std::fs::read_to_string(users_file)
        .with_context(|| format!("cannot read {users_file}"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()
        .context("the users file holds one user id per line")?;
    let config = Config::load(None)?;
    let backend = Backend::open(&config, Migrations::Apply).await?;
    let store = backend.store;
    let (words, cumulative) = vocabulary();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = Utc::now() - Duration::days(365);
    let total = users.len() * chats_per_user * per_chat;
    let mut done = 0usize;
    let began = std::time::Instant::now();
    for (u, owner) in users.iter().enumerate() {
        for c in 0..chats_per_user {
            let chat_id = Uuid::now_v7();
            let mut chat = Chat::default();
            let mut events = Vec::with_capacity(per_chat + 1);
            let mut commands = vec![ChatCommand::Create {
                chat_id,
                owner: *owner,
                title: ChatTitle::parse(&format!("chat {c} of user {u}"))?,
                at: start,
            }];
            for m in 0..per_chat {
                commands.push(ChatCommand::SendMessage {
                    message_id: Uuid::now_v7(),
                    actor: *owner,
                    role: if m % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    content: MessageContent::parse(&sentence(&mut rng, &words, &cumulative))?,
                    kind: MessageKind::Text,
                    at: start + Duration::seconds((u * 10_000 + c * 1_000 + m) as i64),
                });
            }
            for command in commands {
                for e in chat.decide(command)? {
                    events.push(NewEvent::new(
                        e.event_type(),
                        e.schema_version(),
                        e.to_payload(),
                        EventMetadata {
                            actor: Some(*owner),
                            ..EventMetadata::default()
                        },
                    ));
                    chat = chat.evolve(&e);
                }
            }
            let stream = Chat::stream_name(&chat_id);
            let mut version = 0;
            for chunk in events.chunks(1_000) {
                let appended = store
                    .append(&stream, ExpectedVersion::Exact(version), chunk.to_vec())
                    .await?;
                version = appended.next_expected_version;
            }
            done += per_chat;
        }
        if (u + 1) % 50 == 0 || u + 1 == users.len() {
            eprintln!(
                "seeded {done}/{total} messages ({} users) in {:.1}s",
                u + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    // Print the vocabulary ranks the benchmark queries use: common, middling and rare words.
    println!(
        "common={} middle={} {} rare={}",
        words[0], words[40], words[41], words[900]
    );
    Ok(())
}
