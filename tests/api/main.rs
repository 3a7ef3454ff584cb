//! Confab's API tests in one binary, so the app is linked once: the real server on port 0 over
//! HTTP, WebSocket and SSE on SQLite and PostgreSQL, the `confab` binary as operators run it, and
//! the services it calls played by `confab-testkit`'s stand-ins. One module per area; what they
//! share is in `helpers`.

mod helpers;

mod ai_chat;
mod audit;
mod auth;
mod billing;
mod chats;
mod cli;
mod credit_holds;
mod documents;
mod idempotency;
mod images;
mod objects;
mod operators;
mod privacy;
mod profile;
mod ratelimit;
mod realtime;
mod seed002;
mod server;
mod settings;
mod time_travel;
