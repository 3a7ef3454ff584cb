//! Stand-ins for the services Confab calls, as real local HTTP servers speaking their wire
//! formats: an OpenAI-compatible chat-completions endpoint ([`openai`]) and the Stripe API with
//! its webhook signatures ([`stripe`]); and Stripe's objects and events as Stripe sends them
//! ([`stripe_fixtures`]). Tests script and inspect them; the `stripe-stand-in`
//! binary serves the Stripe one on its own for tools that need a running server.

pub mod openai;
pub mod stripe;
pub mod stripe_fixtures;
