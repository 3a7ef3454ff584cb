//! The `confab` binary's library: configuration, start-up wiring and the command line.

pub mod admin;
pub mod app;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod config;
pub mod events;
pub mod privacy;
pub mod rebuild;

pub use app::Application;
pub use config::Config;
