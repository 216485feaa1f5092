//! The port side of [qtts-eval](../../../../README.md): everything a Rust (candle) port of Qwen3-TTS needs to be
//! measured and checked by the suite, so that it only implements the model.
//!
//! - [`protocol`]: the messages of wire protocol v1 (docs/protocol.md), parsed and validated as the suite's
//!   server does;
//! - [`framing`]: stdio frames (4-byte big-endian length, kind byte, payload);
//! - [`audio`]: f32 and pcm16 sample encodings;
//! - [`server`]: the [`Worker`] trait and the session loop, [`serve_stdio`] (and `serve_websocket` with the
//!   `websocket` feature);
//! - [`dump`]: parity stage dumps (docs/parity.md) through [`DumpWriter`], valid by construction;
//! - [`taps`]: a thread-local tap store that fills a dump from inside the model code, with forced codes;
//! - [`weights_hash`]: the checkpoint hash `hello.implementation` carries, in the suite's scheme.
//!
//! docs/porting.md walks through a complete worker; it is compiled as a doc test of this crate.

pub mod audio;
pub mod dump;
pub mod framing;
pub mod protocol;
pub mod server;
pub mod taps;
pub mod voice_id;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use audio::Encoding;
pub use dump::{DumpMeta, DumpWriter};
pub use protocol::{
    Capability, CloneMode, ErrorCode, Layouts, MarkStage, SpeakRequest, Voice, SAMPLES_PER_FRAME,
};
pub use server::{serve_stdio, Cancelled, ServeOptions, SpeakError, Spoken, Utterance, Worker};
pub use voice_id::weights_hash;
#[cfg(feature = "websocket")]
pub use websocket::serve_websocket;

/// The port author's guide (docs/porting.md), compiled so that its worker keeps building.
#[cfg(doctest)]
#[doc = include_str!("../../../../docs/porting.md")]
pub struct PortingGuide;
