//! End-to-end tests, one test binary (one link, one copy of the dependencies on disk).
//!
//! Run one group with a filter, e.g. `cargo test -p automodel-tests golden_text::`.
//! `hub.rs` stays a binary of its own: it sets process environment variables.

mod common;

mod configs;
mod data;
mod gemma3_270m;
mod golden_audio;
mod golden_text;
mod golden_vision;
mod hardening;
mod lora;
mod matformer;
mod multimodal;
mod processor;
mod weights;
