//! Messages of wire protocol version 1 (docs/protocol.md): constants, enums, client-message parsing and the
//! server messages, serialised with the field order and separators of the suite's Python server.

use std::fmt;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::audio::{decode_audio, Encoding};

/// The protocol version this kit speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// WebSocket endpoint path.
pub const SPEAK_PATH: &str = "/api/v1/speak";
/// Output sample rate, Hz.
pub const SAMPLE_RATE_HZ: u32 = 24_000;
/// Samples per codec frame: 24 kHz / 12.5 Hz.
pub const SAMPLES_PER_FRAME: usize = 1920;
/// Codebooks per codec frame (codebook 0 from the talker, 1-15 from the code predictor).
pub const CODEBOOKS: usize = 16;
/// Longest text a `speak` may carry, in characters (the suite's MAX_TEXT_CHARS).
pub const MAX_TEXT_CHARS: usize = 5000;
/// A `dump_path` names a safetensors stage dump.
pub const DUMP_SUFFIX: &str = ".safetensors";
/// Longest `dump_path`, in characters: a relative name, not a place.
pub const MAX_DUMP_PATH_CHARS: usize = 200;
/// Directory levels a `dump_path` may have under the dump directory.
pub const MAX_DUMP_PATH_PARTS: usize = 4;
/// Codes are ids of 2048-entry codebooks (3072 talker ids); anything at or above this is garbage.
pub const MAX_CODE: i64 = 1 << 16;
/// Longest forced speaker embedding (the released model's is 1024 values).
pub const MAX_EMBEDDING_DIMS: usize = 8192;
/// Most forced reference-code frames: a 30 s reference clip at 12.5 frames/s, plus one.
pub const MAX_REF_FRAMES: usize = 376;

/// Codes of `error` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or out-of-order message, bad field value.
    InvalidRequest,
    /// The client's protocol version is not served.
    UnsupportedProtocol,
    /// `start` named a voice_id the server does not hold.
    VoiceNotFound,
    /// A valid request this implementation cannot do (a capability it lacks).
    Unsupported,
    /// `speak` or `start` while an utterance is in progress.
    Busy,
    /// The model is not loaded or has failed.
    TtsUnavailable,
    /// The model failed while generating.
    SynthesisError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            ErrorCode::VoiceNotFound => "VOICE_NOT_FOUND",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Busy => "BUSY",
            ErrorCode::TtsUnavailable => "TTS_UNAVAILABLE",
            ErrorCode::SynthesisError => "SYNTHESIS_ERROR",
        }
    }
}

/// Optional abilities a worker declares in `hello`; the harness never uses one that is not declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// Writes parity stage dumps (`speak.dump_path`).
    StageDumps,
    /// Accepts teacher-forced codes (`speak.forced_codes`).
    ForcedCodes,
    /// Sampling is reproducible from `speak.seed`.
    SeededSampling,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::StageDumps => "stage_dumps",
            Capability::ForcedCodes => "forced_codes",
            Capability::SeededSampling => "seeded_sampling",
        }
    }
}

/// Stages a worker may report with a `mark` message (the harness times them on arrival).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkStage {
    /// Speaker embedding and reference codes computed.
    PromptReady,
    /// The talker has processed the whole prompt.
    PrefillDone,
    /// All 16 codes of the first frame exist.
    FirstFrame,
    /// The first packet's frames exist; its decode starts.
    FirstPacketCodes,
}

impl MarkStage {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkStage::PromptReady => "prompt_ready",
            MarkStage::PrefillDone => "prefill_done",
            MarkStage::FirstFrame => "first_frame",
            MarkStage::FirstPacketCodes => "first_packet_codes",
        }
    }
}

/// Voice-clone mode of a `speak`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneMode {
    /// In-context learning: reference codes and transcript are part of the prompt.
    Icl,
    /// Speaker embedding (x-vector) only.
    Xvector,
}

impl CloneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CloneMode::Icl => "icl",
            CloneMode::Xvector => "xvector",
        }
    }
}

/// The talker prompt layout a port builds in each clone mode: the `non_streaming_mode` value it implements
/// (false: the reference's default layout, true: the whole text up front), None for a mode it does not serve.
/// Announced in `hello.implementation.layouts` ({"icl": false, "xvector": true}); the kit refuses any other
/// layout or mode as UNSUPPORTED before the worker sees the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    pub icl: Option<bool>,
    pub xvector: Option<bool>,
}

impl Layouts {
    /// The same layout in both modes.
    pub fn both(non_streaming_mode: bool) -> Self {
        Layouts {
            icl: Some(non_streaming_mode),
            xvector: Some(non_streaming_mode),
        }
    }

    /// The layout built in `mode`, if the mode is served.
    pub fn of(&self, mode: CloneMode) -> Option<bool> {
        match mode {
            CloneMode::Icl => self.icl,
            CloneMode::Xvector => self.xvector,
        }
    }

    /// `hello.implementation.layouts`: served modes only.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for mode in [CloneMode::Icl, CloneMode::Xvector] {
            if let Some(layout) = self.of(mode) {
                map.insert(mode.as_str().to_owned(), Value::Bool(layout));
            }
        }
        Value::Object(map)
    }

    /// Check `request` against the declared layouts; fills in the declared layout when none was asked for.
    pub fn admit(&self, request: &mut SpeakRequest) -> Result<(), ProtocolError> {
        let mode = request.mode.as_str();
        let Some(built) = self.of(request.mode) else {
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                format!("speak: this port does not serve {mode} mode (hello.implementation.layouts)"),
            ));
        };
        match request.non_streaming_mode {
            Some(asked) if asked != built => Err(ProtocolError::new(
                ErrorCode::Unsupported,
                format!(
                    "speak: non_streaming_mode {asked} asked, but in {mode} mode this port builds only the \
                     non_streaming_mode {built} prompt layout (hello.implementation.layouts)"
                ),
            )),
            _ => {
                request.non_streaming_mode = Some(built);
                Ok(())
            }
        }
    }
}

/// A client message the server answers with an `error`; `fatal` ends the session.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ProtocolError {}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidRequest, message)
}

/// The reference voice of a session: 24 kHz mono samples and their transcript.
#[derive(Clone, Debug, PartialEq)]
pub struct Voice {
    pub audio: Vec<f32>,
    pub text: String,
}

/// Decoding settings of a `speak`; absent fields take the suite's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// False: greedy (argmax) decoding.
    pub do_sample: bool,
    /// Softmax temperature when sampling.
    pub temperature: f64,
    /// Keep the k most likely tokens when sampling.
    pub top_k: i64,
    /// Nucleus mass when sampling.
    pub top_p: f64,
    /// Applies to greedy decoding too (the official generation_config default is 1.05).
    pub repetition_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            do_sample: false,
            temperature: 0.9,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.05,
        }
    }
}

/// What a `start` asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum StartVoice {
    /// A voice uploaded in the message.
    Upload(Voice),
    /// A voice the server cached earlier, by the id its `ready` gave.
    Cached(String),
}

/// A validated `start`.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    /// Sample format of the audio frames the server sends.
    pub encoding: Encoding,
    pub voice: StartVoice,
}

/// A validated `speak`: one utterance to synthesise with the session's voice.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeakRequest {
    /// Text to speak (non-empty, at most MAX_TEXT_CHARS characters).
    pub text: String,
    /// Language name as the reference API takes it ("english", "auto", ...).
    pub language: String,
    pub mode: CloneMode,
    /// Frame budget: generation stops here if EOS never comes.
    pub max_frames: u64,
    /// Seed applied right before generation.
    pub seed: i64,
    pub sampling: Sampling,
    /// Whether `complete` should carry the generated codes.
    pub return_codes: bool,
    /// The talker prompt layout asked for (the reference's `non_streaming_mode`: the whole text up front when
    /// true); None: the port's own. With `Worker::layouts` declared, the kit refuses a layout the port does not
    /// build and fills in the declared one when none was asked for.
    pub non_streaming_mode: Option<bool>,
    /// A parity request: the stage dump's name under the dump directory (validated by `parse_dump_path`).
    pub dump_path: Option<String>,
    /// Teacher forcing (parity requests only, `forced_codes` capability).
    pub forced: Option<Forced>,
}

/// What a teacher-forced parity request replaces: use these instead of computing them. Each input is forced
/// or left free on its own (partial forcing); a request with any `forced_*` field is a forced one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forced {
    /// [T][16] generated codes of the reference: at step t choose exactly these (and condition on them).
    pub codes: Option<Vec<[i64; CODEBOOKS]>>,
    /// [T_ref][16] reference-audio codes instead of encoding the clip (ICL).
    pub ref_codes: Option<Vec<[i64; CODEBOOKS]>>,
    /// The speaker embedding instead of computing it.
    pub spk_embedding: Option<Vec<f32>>,
}

/// The `speak` fields of a forced run.
pub const FORCED_FIELDS: [&str; 3] = ["forced_codes", "forced_ref_codes", "forced_spk_embedding"];

/// A message from the client, parsed and validated as the suite's server does.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    Start(Start),
    /// A raw `speak`: validated against the session (voice, capabilities) by `parse_speak`.
    Speak(Map<String, Value>),
    Cancel,
    Stop,
}

/// Parse a JSON control message into a client message; errors carry the code the server answers with.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("malformed JSON control message: {e}")))?;
    let Value::Object(message) = value else {
        return Err(invalid(
            "control message must be a JSON object with a string 'type'",
        ));
    };
    let Some(Value::String(kind)) = message.get("type") else {
        return Err(invalid(
            "control message must be a JSON object with a string 'type'",
        ));
    };
    match kind.as_str() {
        "start" => parse_start(&message).map(ClientMessage::Start),
        "speak" => Ok(ClientMessage::Speak(message)),
        "cancel" => Ok(ClientMessage::Cancel),
        "stop" => Ok(ClientMessage::Stop),
        other => Err(invalid(format!("unknown message type {other:?}"))),
    }
}

fn wrong_field(kind: &str, name: &str) -> ProtocolError {
    invalid(format!("{kind}: field {name:?} is missing or wrong type"))
}

fn string_field(
    message: &Map<String, Value>,
    kind: &str,
    name: &str,
    default: Option<&str>,
) -> Result<String, ProtocolError> {
    match message.get(name) {
        Some(Value::String(value)) => Ok(value.clone()),
        None if default.is_some() => Ok(default.unwrap_or_default().to_owned()),
        _ => Err(wrong_field(kind, name)),
    }
}

fn int_field(
    message: &Map<String, Value>,
    kind: &str,
    name: &str,
    default: Option<i64>,
) -> Result<i64, ProtocolError> {
    match message.get(name) {
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
        None if default.is_some() => Ok(default.unwrap_or_default()),
        _ => Err(wrong_field(kind, name)),
    }
}

fn parse_start(message: &Map<String, Value>) -> Result<Start, ProtocolError> {
    let version = message.get("protocol").cloned().unwrap_or(Value::Null);
    if version.as_f64() != Some(PROTOCOL_VERSION as f64) {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedProtocol,
            format!("protocol {version} is not served; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    let encoding = message
        .get("encoding")
        .and_then(Value::as_str)
        .and_then(Encoding::parse)
        .ok_or_else(|| {
            invalid(format!(
                "start: encoding {} is not pcm16 or f32",
                shown(message.get("encoding"))
            ))
        })?;
    if message.get("sample_rate").and_then(Value::as_f64) != Some(f64::from(SAMPLE_RATE_HZ)) {
        return Err(invalid(format!(
            "start: sample_rate {} is not served; audio is {SAMPLE_RATE_HZ} Hz",
            shown(message.get("sample_rate"))
        )));
    }
    if message.contains_key("voice_id") {
        let id = string_field(message, "start", "voice_id", None)?;
        return Ok(Start {
            encoding,
            voice: StartVoice::Cached(id),
        });
    }
    let Some(Value::Object(voice)) = message.get("voice") else {
        return Err(wrong_field("start", "voice"));
    };
    let audio_encoding = match voice.get("audio_encoding") {
        None => Encoding::F32,
        Some(value) => value.as_str().and_then(Encoding::parse).ok_or_else(|| {
            invalid(format!(
                "start: voice audio is unusable: audio_encoding {value} is not pcm16 or f32"
            ))
        })?,
    };
    let encoded = string_field(voice, "start", "audio", None)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| invalid(format!("start: voice audio is unusable: {e}")))?;
    let audio = decode_audio(&bytes, audio_encoding)
        .map_err(|e| invalid(format!("start: voice audio is unusable: {e}")))?;
    let text = string_field(voice, "start", "text", Some(""))?;
    Ok(Start {
        encoding,
        voice: StartVoice::Upload(Voice { audio, text }),
    })
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "None".to_owned(), Value::to_string)
}

/// Validate a `speak` against the session's voice and the worker's capabilities, in the suite's order:
/// undeclared capabilities first (UNSUPPORTED), then the request, then the parity fields (INVALID_REQUEST).
pub fn parse_speak(
    message: &Map<String, Value>,
    voice: &Voice,
    capabilities: &[Capability],
) -> Result<SpeakRequest, ProtocolError> {
    let present = |field: &str| !matches!(message.get(field), None | Some(Value::Null));
    let forcing = FORCED_FIELDS.into_iter().find(|field| present(field));
    let needs = [("dump_path", Capability::StageDumps)]
        .into_iter()
        .chain(forcing.map(|field| (field, Capability::ForcedCodes)));
    for (field, capability) in needs {
        if present(field) && !capabilities.contains(&capability) {
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                format!(
                    "speak: {field} needs the {} capability, not declared",
                    capability.as_str()
                ),
            ));
        }
    }
    let sampling = match message.get("sampling") {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(invalid("speak: 'sampling' must be an object")),
    };
    let mode = match message.get("mode").map(|v| v.as_str()) {
        None | Some(Some("icl")) => CloneMode::Icl,
        Some(Some("xvector")) => CloneMode::Xvector,
        Some(_) => {
            return Err(invalid(format!(
                "speak: mode {} is not icl or xvector",
                shown(message.get("mode"))
            )))
        }
    };
    let text = string_field(message, "speak", "text", None)?;
    let language = string_field(message, "speak", "language", Some("auto"))?;
    let max_frames = int_field(message, "speak", "max_frames", None)?;
    let seed = int_field(message, "speak", "seed", Some(0))?;
    let defaults = Sampling::default();
    let sampling = Sampling {
        do_sample: sampling.get("do_sample").map_or(Ok(defaults.do_sample), truthy)?,
        temperature: number(&sampling, "temperature", defaults.temperature)?,
        top_k: number(&sampling, "top_k", defaults.top_k as f64)? as i64,
        top_p: number(&sampling, "top_p", defaults.top_p)?,
        repetition_penalty: number(&sampling, "repetition_penalty", defaults.repetition_penalty)?,
    };
    if text.trim().is_empty() {
        return Err(invalid(
            "speak: text is empty or whitespace only; there is nothing to speak",
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(invalid(format!(
            "speak: text has {chars} characters, over the {MAX_TEXT_CHARS}-character limit; split it"
        )));
    }
    if max_frames < 1 {
        return Err(invalid(format!(
            "speak: frame budget must be at least 1 frame, got {max_frames}"
        )));
    }
    if mode == CloneMode::Icl && voice.text.trim().is_empty() {
        return Err(invalid(
            "speak: ICL mode needs the reference transcript, and ref_text is empty",
        ));
    }
    let non_streaming_mode = match message.get("non_streaming_mode") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(layout)) => Some(*layout),
        Some(_) => return Err(invalid("speak: 'non_streaming_mode' must be true or false")),
    };
    let dump_path = match message.get("dump_path") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_dump_path(value)?),
    };
    let forcing = FORCED_FIELDS
        .into_iter()
        .find(|name| !matches!(message.get(*name), None | Some(Value::Null)));
    let forced = match forcing {
        None => None,
        Some(name) if dump_path.is_none() => {
            return Err(invalid(format!(
                "speak: {name} only make sense in a parity request (dump_path)"
            )))
        }
        Some(_) => Some(parse_forced(message, max_frames as usize)?),
    };
    Ok(SpeakRequest {
        text,
        language,
        mode,
        max_frames: max_frames as u64,
        seed,
        sampling,
        return_codes: message.get("return_codes").map_or(Ok(false), truthy)?,
        non_streaming_mode,
        dump_path,
        forced,
    })
}

/// A dump name relative to the server's dump directory: not absolute, no `..`, `.` or empty component, no
/// backslash or colon, at most MAX_DUMP_PATH_PARTS levels and MAX_DUMP_PATH_CHARS characters, ending in
/// `.safetensors`.
pub fn parse_dump_path(value: &Value) -> Result<String, ProtocolError> {
    let Some(name) = value.as_str().filter(|n| !n.is_empty()) else {
        return Err(invalid("speak: dump_path must be a non-empty string"));
    };
    let chars = name.chars().count();
    if chars > MAX_DUMP_PATH_CHARS {
        return Err(invalid(format!(
            "speak: dump_path has {chars} characters, over the {MAX_DUMP_PATH_CHARS}-character limit"
        )));
    }
    if name.starts_with('/') || name.contains('\\') || name.contains(':') {
        return Err(invalid(format!(
            "speak: dump_path {name:?} must be relative to the server's dump directory"
        )));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
        return Err(invalid(format!(
            "speak: dump_path {name:?} has '..', '.' or '//'"
        )));
    }
    if parts.len() > MAX_DUMP_PATH_PARTS {
        return Err(invalid(format!(
            "speak: dump_path {name:?} is deeper than {MAX_DUMP_PATH_PARTS} levels"
        )));
    }
    if !name.ends_with(DUMP_SUFFIX) {
        return Err(invalid(format!(
            "speak: dump_path {name:?} must end in {DUMP_SUFFIX}"
        )));
    }
    Ok(name.to_owned())
}

fn parse_forced(message: &Map<String, Value>, max_frames: usize) -> Result<Forced, ProtocolError> {
    let codes = match message.get("forced_codes") {
        None | Some(Value::Null) => None,
        value => Some(parse_codes(value, "forced_codes", max_frames)?),
    };
    let ref_codes = match message.get("forced_ref_codes") {
        None | Some(Value::Null) => None,
        value => Some(parse_codes(value, "forced_ref_codes", MAX_REF_FRAMES)?),
    };
    let text = match message.get("forced_spk_embedding") {
        None | Some(Value::Null) => {
            return Ok(Forced {
                codes,
                ref_codes,
                spk_embedding: None,
            })
        }
        Some(value) => value,
    };
    let bad = || {
        invalid(format!(
            "speak: forced_spk_embedding must be base64 of at most {MAX_EMBEDDING_DIMS} float32 values"
        ))
    };
    let text = text.as_str().ok_or_else(bad)?;
    // base64 of float32: 4 bytes per value, 4 characters per 3 bytes.
    if text.is_empty() || text.len() > MAX_EMBEDDING_DIMS * 4 * 4 / 3 + 4 {
        return Err(bad());
    }
    let unusable = |e: String| invalid(format!("speak: forced_spk_embedding is unusable: {e}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| unusable(e.to_string()))?;
    let spk_embedding = decode_audio(&bytes, Encoding::F32).map_err(|e| unusable(e.to_string()))?;
    Ok(Forced {
        codes,
        ref_codes,
        spk_embedding: Some(spk_embedding),
    })
}

fn truthy(value: &Value) -> Result<bool, ProtocolError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        Value::Number(n) => Ok(n.as_f64() != Some(0.0)),
        _ => Err(invalid(format!(
            "speak: bad sampling value: {value} is not a boolean"
        ))),
    }
}

fn number(map: &Map<String, Value>, name: &str, default: f64) -> Result<f64, ProtocolError> {
    match map.get(name) {
        None => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(default)),
        Some(Value::Bool(b)) => Ok(f64::from(u8::from(*b))),
        Some(other) => Err(invalid(format!(
            "speak: bad sampling value: {name} {other} is not a number"
        ))),
    }
}

fn parse_codes(
    value: Option<&Value>,
    field: &str,
    max_rows: usize,
) -> Result<Vec<[i64; CODEBOOKS]>, ProtocolError> {
    // Bounded by the row count before anything is converted: a huge list is refused, not allocated.
    let rows = value
        .and_then(Value::as_array)
        .filter(|rows| !rows.is_empty() && rows.len() <= max_rows)
        .ok_or_else(|| invalid(format!("speak: {field} must be a list of 1 to {max_rows} frames")))?;
    let shape = || invalid(format!("speak: {field} must be [frames][{CODEBOOKS}] integers"));
    rows.iter()
        .map(|row| {
            let row = row
                .as_array()
                .filter(|r| r.len() == CODEBOOKS)
                .ok_or_else(shape)?;
            let mut frame = [0i64; CODEBOOKS];
            for (slot, code) in frame.iter_mut().zip(row) {
                *slot = code.as_i64().ok_or_else(shape)?;
                if !(0..MAX_CODE).contains(slot) {
                    return Err(invalid(format!(
                        "speak: {field} holds codes outside 0..{}",
                        MAX_CODE - 1
                    )));
                }
            }
            Ok(frame)
        })
        .collect()
}

// --- server messages ---------------------------------------------------------------------------------------

/// Messages a server sends; `to_json` writes them as the suite's server does (compact, fields in order).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    Hello {
        protocol: u64,
        capabilities: Vec<&'static str>,
        implementation: Value,
        pid: u32,
        /// The absolute directory dumps are written under; sent with `stage_dumps`.
        #[serde(skip_serializing_if = "Option::is_none")]
        dump_dir: Option<String>,
    },
    Ready {
        protocol: u64,
        voice_id: String,
        encoding: &'static str,
        sample_rate: u32,
    },
    Mark {
        stage: &'static str,
    },
    Complete {
        frames_generated: u64,
        samples: u64,
        cancelled: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        codes: Option<Vec<[i64; CODEBOOKS]>>,
    },
    Error {
        code: &'static str,
        message: String,
        fatal: bool,
    },
    /// Ends a parity request: the dump named `path` (as asked) is written, `bytes` long.
    Dumped {
        path: String,
        bytes: u64,
    },
    Stopped,
}

impl ServerMessage {
    /// The `hello` of a worker: capabilities sorted by name, as the suite's server sends them.
    pub fn hello(capabilities: &[Capability], implementation: Value, dump_dir: Option<String>) -> Self {
        let mut names: Vec<&'static str> = capabilities.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            capabilities: names,
            implementation,
            pid: std::process::id(),
            dump_dir,
        }
    }

    pub fn error(error: &ProtocolError, fatal: bool) -> Self {
        ServerMessage::Error {
            code: error.code.as_str(),
            message: error.message.clone(),
            fatal,
        }
    }

    pub fn to_json(&self) -> String {
        // Only strings, integers, booleans and a JSON value: serialisation cannot fail.
        serde_json::to_string(self).expect("a server message always serialises")
    }
}
