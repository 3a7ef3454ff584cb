//! The model catalogue and the billing tiers: which models exist, which provider serves each,
//! what a call costs in credits, and which tier may use which model. Loaded from configuration;
//! the defaults hold the seed's five models and the free and pro tiers.

use serde::{Deserialize, Serialize};

/// A billing tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Its name, as an account's `tier` holds it (`free`, `pro`, ...).
    pub name: String,
    /// Credits a new account starts with.
    pub starting_credits: i64,
    /// Credits the monthly reset restores the balance to.
    pub monthly_credits: i64,
}

/// A model users may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// The id clients send as `modelId`.
    pub id: String,
    /// The provider that serves it (a name from the provider configuration).
    pub provider: String,
    /// The model's name at the provider.
    pub upstream_model: String,
    /// The lowest tier that may use it.
    pub min_tier: String,
    /// Credits per 1,000 input tokens.
    pub input_price_per_1k: u32,
    /// Credits per 1,000 output tokens.
    pub output_price_per_1k: u32,
    /// The most output tokens one reply may have (sent to the provider as the limit, and the
    /// basis of the credits reserved before the call).
    pub max_output_tokens: u32,
}

/// The price of an embedding model (documents' vectors are charged to their uploader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingPrice {
    /// The model's name, as `CONFAB_EMBEDDING_MODEL` names it.
    pub id: String,
    /// Credits per 1,000,000 tokens embedded (embeddings cost a small fraction of a chat
    /// model's input, hence the larger unit).
    pub price_per_1m: u32,
}

/// Tiers, lowest first, and models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    /// Tiers, lowest first: a model allowed to a tier is allowed to every tier after it.
    pub tiers: Vec<Tier>,
    /// The models.
    pub models: Vec<Model>,
    /// The model used when a request names none.
    pub default_model: String,
    /// Embedding models' prices; a model not listed costs nothing (a local server's).
    #[serde(default)]
    pub embedding_models: Vec<EmbeddingPrice>,
}

/// Why a catalogue cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    /// No tiers at all.
    #[error("the catalogue needs at least one tier")]
    NoTiers,
    /// A model names a tier that does not exist.
    #[error("model {model:?} needs tier {tier:?}, which is not among the tiers")]
    UnknownTier {
        /// The model.
        model: String,
        /// The tier it names.
        tier: String,
    },
    /// Two models share an id.
    #[error("model id {0:?} appears twice")]
    DuplicateModel(String),
    /// The default model is not in the catalogue.
    #[error("the default model {0:?} is not in the catalogue")]
    UnknownDefault(String),
}

impl Catalogue {
    /// Checks the catalogue is coherent.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        if self.tiers.is_empty() {
            return Err(CatalogueError::NoTiers);
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.models {
            if !seen.insert(&m.id) {
                return Err(CatalogueError::DuplicateModel(m.id.clone()));
            }
            if self.rank(&m.min_tier).is_none() {
                return Err(CatalogueError::UnknownTier {
                    model: m.id.clone(),
                    tier: m.min_tier.clone(),
                });
            }
        }
        if self.model(&self.default_model).is_none() {
            return Err(CatalogueError::UnknownDefault(self.default_model.clone()));
        }
        Ok(())
    }

    fn rank(&self, tier: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == tier)
    }

    /// The tier named `name`; an unknown name is treated as the lowest tier.
    pub fn tier(&self, name: &str) -> &Tier {
        let i = self.rank(name).unwrap_or(0);
        &self.tiers[i]
    }

    /// The model with this id.
    pub fn model(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Credits for embedding `tokens` tokens with `model`, rounded up: zero for a model the
    /// catalogue does not price, or prices at zero.
    pub fn embedding_cost(&self, model: &str, tokens: u64) -> i64 {
        let Some(price) = self.embedding_models.iter().find(|m| m.id == model) else {
            return 0;
        };
        let micro = u128::from(tokens) * u128::from(price.price_per_1m);
        i64::try_from(micro.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }

    /// Whether an account of `tier` may use `model`.
    pub fn allows(&self, tier: &str, model: &Model) -> bool {
        let have = self.rank(tier).unwrap_or(0);
        self.rank(&model.min_tier).is_some_and(|need| have >= need)
    }
}

impl Model {
    /// Credits for a call of `input` and `output` tokens, rounded up.
    pub fn cost(&self, input: u64, output: u64) -> i64 {
        let milli = u128::from(input) * u128::from(self.input_price_per_1k)
            + u128::from(output) * u128::from(self.output_price_per_1k);
        i64::try_from(milli.div_ceil(1000)).unwrap_or(i64::MAX)
    }

    /// The credits to reserve before a call whose prompt is `prompt_tokens` long: its cost if
    /// the reply is as long as allowed.
    pub fn reservation(&self, prompt_tokens: u64) -> i64 {
        self.cost(prompt_tokens, u64::from(self.max_output_tokens))
    }
}

/// A generous estimate of the tokens of `texts` before the provider counts them: a token per
/// three bytes, and a few per message for the chat format.
pub fn estimate_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts
        .into_iter()
        .map(|t| (t.len() as u64).div_ceil(3) + 4)
        .sum()
}

impl Default for Catalogue {
    /// The seed's five models: OpenAI's through the `openai` provider and Anthropic's through
    /// its OpenAI-compatible endpoint (`anthropic`); the larger ones need the `pro` tier.
    fn default() -> Self {
        let model = |id: &str, provider: &str, tier: &str, input: u32, output: u32| Model {
            id: id.to_owned(),
            provider: provider.to_owned(),
            upstream_model: id.to_owned(),
            min_tier: tier.to_owned(),
            input_price_per_1k: input,
            output_price_per_1k: output,
            max_output_tokens: 4096,
        };
        Catalogue {
            tiers: vec![
                Tier {
                    name: "free".into(),
                    starting_credits: 1_000,
                    monthly_credits: 1_000,
                },
                Tier {
                    name: "pro".into(),
                    starting_credits: 20_000,
                    monthly_credits: 20_000,
                },
            ],
            models: vec![
                model("gpt-4o-mini", "openai", "free", 1, 4),
                model("gpt-4o", "openai", "pro", 10, 40),
                model("gpt-4-turbo", "openai", "pro", 30, 90),
                model("claude-3-5-sonnet-20241022", "anthropic", "pro", 12, 60),
                model("claude-3-opus-20240229", "anthropic", "pro", 60, 300),
            ],
            default_model: "gpt-4o-mini".into(),
            // In proportion to the chat prices (gpt-4o-mini's input, 1 credit per 1,000
            // tokens, is $0.15 per million): OpenAI's $0.02, $0.13 and $0.10 per million.
            embedding_models: vec![
                EmbeddingPrice {
                    id: "text-embedding-3-small".into(),
                    price_per_1m: 134,
                },
                EmbeddingPrice {
                    id: "text-embedding-3-large".into(),
                    price_per_1m: 867,
                },
                EmbeddingPrice {
                    id: "text-embedding-ada-002".into(),
                    price_per_1m: 667,
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalogue_is_coherent_and_holds_the_seed_models() {
        let c = Catalogue::default();
        c.validate().expect("valid");
        for id in [
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-4-turbo",
            "claude-3-5-sonnet-20241022",
            "claude-3-opus-20240229",
        ] {
            assert!(c.model(id).is_some(), "{id}");
        }
    }

    #[test]
    fn a_higher_tier_may_use_what_a_lower_one_may() {
        let c = Catalogue::default();
        let mini = c.model("gpt-4o-mini").expect("mini");
        let big = c.model("gpt-4o").expect("4o");
        assert!(c.allows("free", mini));
        assert!(!c.allows("free", big));
        assert!(c.allows("pro", big));
        assert!(!c.allows("nonsense", big), "unknown tiers are the lowest");
        assert_eq!(c.tier("nonsense").name, "free");
    }

    #[test]
    fn costs_round_up_and_reservations_assume_the_longest_reply() {
        let c = Catalogue::default();
        let mini = c.model("gpt-4o-mini").expect("mini");
        assert_eq!(mini.cost(0, 0), 0);
        assert_eq!(mini.cost(1, 0), 1);
        assert_eq!(mini.cost(1000, 1000), 5);
        assert_eq!(mini.cost(1001, 1000), 6);
        assert_eq!(mini.reservation(1000), 1 + 4 * 4096 / 1000 + 1);
        assert_eq!(estimate_tokens(["abc", "abcd"]), 1 + 4 + 2 + 4);
    }

    #[test]
    fn embeddings_cost_by_the_million_rounded_up_and_unpriced_models_nothing() {
        let c = Catalogue::default();
        assert_eq!(c.embedding_cost("text-embedding-3-small", 0), 0);
        assert_eq!(c.embedding_cost("text-embedding-3-small", 1), 1);
        assert_eq!(c.embedding_cost("text-embedding-3-small", 1_000_000), 134);
        assert_eq!(c.embedding_cost("text-embedding-3-small", 1_000_001), 135);
        assert_eq!(c.embedding_cost("nomic-embed-text", 5_000_000), 0);
        let mut free = c.clone();
        free.embedding_models[0].price_per_1m = 0;
        assert_eq!(free.embedding_cost("text-embedding-3-small", 5_000_000), 0);
    }

    #[test]
    fn incoherent_catalogues_are_explained() {
        let mut c = Catalogue::default();
        c.models[1].min_tier = "gold".into();
        assert!(matches!(
            c.validate(),
            Err(CatalogueError::UnknownTier { .. })
        ));
        let c = Catalogue {
            default_model: "nope".into(),
            ..Catalogue::default()
        };
        assert_eq!(
            c.validate(),
            Err(CatalogueError::UnknownDefault("nope".into()))
        );
        let mut c = Catalogue::default();
        c.models.push(c.models[0].clone());
        assert!(matches!(
            c.validate(),
            Err(CatalogueError::DuplicateModel(_))
        ));
    }
}
