//! The server side of the protocol: the `Worker` trait a port implements and the session loop that serves it
//! (hello, start with voice upload or cached id, speak, marks, cancel, stop, errors), as the suite's Python
//! server does; `serve_stdio` runs it over stdin/stdout.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Mutex;

use serde_json::Value;

use crate::audio::{encode_audio, Encoding};
use crate::framing::{read_frame, write_frame, Frame, FrameError};
use crate::protocol::{
    parse_client_message, parse_speak, Capability, ClientMessage, ErrorCode, Layouts, MarkStage,
    ProtocolError, ServerMessage, SpeakRequest, StartVoice, Voice, CODEBOOKS, PROTOCOL_VERSION,
    SAMPLES_PER_FRAME, SAMPLE_RATE_HZ,
};
use crate::voice_id::voice_id;

/// Voices kept per server; the least recently used is dropped first (as the suite's server).
pub const VOICE_CACHE_SIZE: usize = 64;

/// What a finished utterance produced, besides the audio already sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spoken {
    /// Codec frames generated; the audio sent must be frames_generated x 1920 samples.
    pub frames_generated: u64,
    /// The generated codes, [frames][16], when the port can show them (sent if the client asked).
    pub codes: Option<Vec<[i64; CODEBOOKS]>>,
}

/// Why an utterance ended without completing.
#[derive(Clone, Debug, PartialEq)]
pub enum SpeakError {
    /// The client cancelled (or stopped, or went away): answered with `complete(cancelled)`.
    Cancelled,
    /// The port cannot or did not produce the utterance: answered with a non-fatal `error`.
    Failed(ProtocolError),
}

impl SpeakError {
    /// The model failed while generating (SYNTHESIS_ERROR).
    pub fn synthesis(message: impl Into<String>) -> Self {
        SpeakError::Failed(ProtocolError::new(ErrorCode::SynthesisError, message))
    }

    /// A valid request this port cannot do (UNSUPPORTED: the bench records it as unsupported).
    pub fn unsupported(message: impl Into<String>) -> Self {
        SpeakError::Failed(ProtocolError::new(ErrorCode::Unsupported, message))
    }
}

/// Returned by `Utterance` calls once the utterance must stop; `?` turns it into `SpeakError::Cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

impl From<Cancelled> for SpeakError {
    fn from(_: Cancelled) -> Self {
        SpeakError::Cancelled
    }
}

/// A port: loaded once, then asked to speak utterances, streaming audio through an `Utterance` as it goes.
pub trait Worker {
    /// Optional abilities, declared in `hello`; a `speak` needing an undeclared one is refused before `speak`.
    fn capabilities(&self) -> Vec<Capability> {
        Vec::new()
    }

    /// `hello.implementation`: who this is (name, version, model_ref, weights_hash, synthetic, dtype, device...).
    /// Keep values scalars (strings, numbers, booleans): each becomes a column of every record.
    fn implementation(&self) -> Value;

    /// The prompt layout built in each mode (`Layouts`). Declared, the kit announces it in
    /// `hello.implementation.layouts`, refuses other layouts and modes as UNSUPPORTED, and hands `speak` and
    /// `write_dump` requests whose `non_streaming_mode` is always the declared one. None (the default): the port
    /// reads `request.non_streaming_mode` itself and must refuse what it cannot build.
    fn layouts(&self) -> Option<Layouts> {
        None
    }

    /// Synthesise one utterance with the session's voice. Send audio (whole frames, 1920 samples each, as they
    /// exist) and optional marks through `out`; call `out.check()` during long stretches without audio so a
    /// cancel is honoured.
    fn speak(
        &mut self,
        request: &SpeakRequest,
        voice: &Voice,
        out: &mut Utterance<'_>,
    ) -> Result<Spoken, SpeakError>;

    /// A parity request (`stage_dumps`): run `request` once, streaming nothing, and write its stage dump to
    /// `path` (inside the dump directory) with `DumpWriter`. With `request.forced` (`forced_*`), use each
    /// forced input given (codes, reference codes, speaker embedding) instead of your own, and compute the others;
    /// `DumpMeta::for_request` records which in the header. It is not cancelled.
    fn write_dump(&mut self, request: &SpeakRequest, voice: &Voice, path: &Path) -> Result<(), SpeakError> {
        let _ = (request, voice, path);
        Err(SpeakError::unsupported("this worker writes no stage dumps"))
    }
}

/// A message from the client, as a transport delivers it.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// The client has gone (end of stream, closed socket).
    Closed,
    /// The byte stream cannot be trusted any more (bad frame header, truncated frame); the reason.
    Broken(String),
}

/// One client connection.
pub trait Transport {
    /// The next message, waiting for it.
    fn receive(&mut self) -> Incoming;
    /// The next message if one has arrived, without waiting.
    fn poll(&mut self) -> Option<Incoming>;
    fn send_text(&mut self, text: &str) -> io::Result<()>;
    fn send_binary(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Stage dumps one server writes at most: a parity sweep is tens, a runaway client is not.
pub const MAX_DUMPS: usize = 1000;
/// Largest dump kept: full-size prefill taps of a long prompt are hundreds of MB.
pub const MAX_DUMP_BYTES: u64 = 4 << 30;

/// How a worker is served.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The directory stage dumps are written under (created if missing; sent as `hello.dump_dir`). Without
    /// one, `stage_dumps` and `forced_codes` are not declared, whatever the worker says, as in the suite.
    pub dump_dir: Option<PathBuf>,
}

/// The least-recently-used voice cache, shared by a server's sessions.
#[derive(Debug, Default)]
pub struct VoiceCache {
    voices: VecDeque<(String, Voice)>,
}

impl VoiceCache {
    /// Cache `voice`; returns its id.
    pub fn remember(&mut self, voice: Voice) -> String {
        let key = voice_id(&voice.audio, &voice.text);
        self.voices.retain(|(k, _)| *k != key);
        self.voices.push_back((key.clone(), voice));
        while self.voices.len() > VOICE_CACHE_SIZE {
            self.voices.pop_front();
        }
        key
    }

    /// The voice cached under `key`, marked as recently used.
    pub fn get(&mut self, key: &str) -> Option<Voice> {
        let index = self.voices.iter().position(|(k, _)| k == key)?;
        let entry = self.voices.remove(index)?;
        let voice = entry.1.clone();
        self.voices.push_back(entry);
        Some(voice)
    }
}

/// A loaded worker with its voice cache; sessions share it (one utterance at a time, as the suite's server).
pub struct Host<W> {
    worker: Mutex<W>,
    voices: Mutex<VoiceCache>,
    dump_dir: Option<PathBuf>,
    dumps_written: AtomicUsize,
    capabilities: Vec<Capability>,
    implementation: Value,
    layouts: Option<Layouts>,
}

impl<W: Worker> Host<W> {
    pub fn new(worker: W, options: ServeOptions) -> Self {
        let dump_dir = options.dump_dir.and_then(|dir| {
            match std::fs::create_dir_all(&dir).and_then(|()| dir.canonicalize()) {
                Ok(dir) => Some(dir),
                Err(error) => {
                    eprintln!(
                        "dump directory {}: {error}; stage dumps are not offered",
                        dir.display()
                    );
                    None
                }
            }
        });
        let mut capabilities = worker.capabilities();
        if dump_dir.is_none() {
            capabilities.retain(|c| !matches!(c, Capability::StageDumps | Capability::ForcedCodes));
        }
        let layouts = worker.layouts();
        let mut implementation = worker.implementation();
        if let (Some(layouts), Value::Object(facts)) = (layouts, &mut implementation) {
            facts.insert("layouts".into(), layouts.to_json());
        }
        Host {
            worker: Mutex::new(worker),
            voices: Mutex::new(VoiceCache::default()),
            dump_dir,
            dumps_written: AtomicUsize::new(0),
            capabilities,
            implementation,
            layouts,
        }
    }

    /// Where the dump named `name` (validated by `protocol::parse_dump_path`) goes: inside the dump directory,
    /// whatever symlinks lie on the way; its parent directories are created.
    fn dump_target(&self, name: &str) -> Result<PathBuf, ProtocolError> {
        let Some(root) = &self.dump_dir else {
            return Err(ProtocolError::new(ErrorCode::Unsupported, "no dump directory"));
        };
        if self.dumps_written.load(Ordering::SeqCst) >= MAX_DUMPS {
            return Err(ProtocolError::new(
                ErrorCode::InvalidRequest,
                format!("this server has written its limit of {MAX_DUMPS} stage dumps"),
            ));
        }
        let target = root.join(name);
        // Checked before anything is created: the deepest existing ancestor, symlinks followed, must be inside.
        let existing = target.ancestors().skip(1).find(|a| a.exists()).unwrap_or(root);
        if !existing
            .canonicalize()
            .map(|real| real.starts_with(root))
            .unwrap_or(false)
        {
            return Err(ProtocolError::new(
                ErrorCode::InvalidRequest,
                format!("dump_path {name:?} leaves the dump directory"),
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                ProtocolError::new(ErrorCode::SynthesisError, format!("{}: {e}", parent.display()))
            })?;
        }
        self.dumps_written.fetch_add(1, Ordering::SeqCst);
        Ok(target)
    }

    /// Serve one connection until the client stops or goes away.
    pub fn serve_session(&self, transport: &mut dyn Transport) -> io::Result<()> {
        Session {
            host: self,
            transport,
            voice: None,
            encoding: None,
        }
        .run()
    }
}

struct Session<'a, W> {
    host: &'a Host<W>,
    transport: &'a mut dyn Transport,
    voice: Option<Voice>,
    encoding: Option<Encoding>,
}

/// How a session's message loop goes on after one message.
enum Next {
    Continue,
    End,
}

impl<W: Worker> Session<'_, W> {
    fn send(&mut self, message: &ServerMessage) -> io::Result<()> {
        self.transport.send_text(&message.to_json())
    }

    fn run(&mut self) -> io::Result<()> {
        let dump_dir = self.host.capabilities.contains(&Capability::StageDumps).then(|| {
            self.host
                .dump_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        });
        let hello = ServerMessage::hello(
            &self.host.capabilities,
            self.host.implementation.clone(),
            dump_dir,
        );
        self.send(&hello)?;
        loop {
            let next = match self.transport.receive() {
                Incoming::Closed => return Ok(()),
                Incoming::Broken(reason) => {
                    let error = ProtocolError::new(ErrorCode::InvalidRequest, reason);
                    return self.send(&ServerMessage::error(&error, true));
                }
                Incoming::Binary(_) => Err(binary_refused()),
                Incoming::Text(text) => self.handle(&text),
            };
            match next {
                Ok(Next::Continue) => {}
                Ok(Next::End) => return Ok(()),
                Err(error) => self.send(&ServerMessage::error(&error, false))?,
            }
        }
    }

    fn handle(&mut self, text: &str) -> Result<Next, ProtocolError> {
        match parse_client_message(text)? {
            ClientMessage::Start(start) => {
                let voice = match start.voice {
                    StartVoice::Upload(voice) => voice,
                    StartVoice::Cached(key) => lock(&self.host.voices).get(&key).ok_or_else(|| {
                        ProtocolError::new(
                            ErrorCode::VoiceNotFound,
                            format!("start: voice_id {key:?} is not cached; upload it"),
                        )
                    })?,
                };
                let key = lock(&self.host.voices).remember(voice.clone());
                self.voice = Some(voice);
                self.encoding = Some(start.encoding);
                let ready = ServerMessage::Ready {
                    protocol: PROTOCOL_VERSION,
                    voice_id: key,
                    encoding: start.encoding.as_str(),
                    sample_rate: SAMPLE_RATE_HZ,
                };
                if self.send(&ready).is_err() {
                    return Ok(Next::End); // the client has gone
                }
            }
            ClientMessage::Speak(message) => {
                let (Some(voice), Some(encoding)) = (self.voice.clone(), self.encoding) else {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidRequest,
                        "speak before start: open a session first",
                    ));
                };
                let mut request = parse_speak(&message, &voice, &self.host.capabilities)?;
                if let Some(layouts) = &self.host.layouts {
                    layouts.admit(&mut request)?;
                }
                if let Some(name) = &request.dump_path {
                    let target = self.host.dump_target(name)?;
                    let dumped = self.dump(&request, &voice, &target, name)?;
                    return Ok(if self.send(&dumped).is_ok() {
                        Next::Continue
                    } else {
                        Next::End
                    });
                }
                return Ok(self.speak(&request, &voice, encoding).unwrap_or(Next::End));
            }
            ClientMessage::Cancel => {} // nothing in progress: nothing to do
            ClientMessage::Stop => {
                let _ = self.send(&ServerMessage::Stopped); // the session ends whether or not it arrives
                return Ok(Next::End);
            }
        }
        Ok(Next::Continue)
    }

    /// A parity request: the worker writes its dump; `dumped` names it, or the error says why not.
    fn dump(
        &mut self,
        request: &SpeakRequest,
        voice: &Voice,
        target: &Path,
        name: &str,
    ) -> Result<ServerMessage, ProtocolError> {
        let written = lock(&self.host.worker).write_dump(request, voice, target);
        match written {
            Err(SpeakError::Failed(error)) => return Err(error),
            Err(SpeakError::Cancelled) => {
                return Err(ProtocolError::new(
                    ErrorCode::SynthesisError,
                    "the worker gave up the dump",
                ))
            }
            Ok(()) => {}
        }
        let bytes = std::fs::metadata(target).map(|m| m.len()).map_err(|e| {
            ProtocolError::new(
                ErrorCode::SynthesisError,
                format!("the worker wrote no dump at {}: {e}", target.display()),
            )
        })?;
        if bytes > MAX_DUMP_BYTES {
            let _ = std::fs::remove_file(target);
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                format!("stage dump of {bytes} bytes exceeds the {MAX_DUMP_BYTES}-byte limit"),
            ));
        }
        Ok(ServerMessage::Dumped {
            path: name.to_owned(),
            bytes,
        })
    }

    fn speak(&mut self, request: &SpeakRequest, voice: &Voice, encoding: Encoding) -> io::Result<Next> {
        let outcome = {
            let mut worker = lock(&self.host.worker);
            let mut out = Utterance {
                transport: &mut *self.transport,
                encoding,
                sent: 0,
                state: State::Running,
            };
            let outcome = worker.speak(request, voice, &mut out);
            // A cancel that arrived while the worker finished is still honoured as cancelled, as in the suite.
            let _ = out.check();
            (outcome, out.sent, out.state)
        };
        let (outcome, sent, state) = outcome;
        if state == State::Gone {
            return Ok(Next::End);
        }
        let cancelled = ServerMessage::Complete {
            frames_generated: sent / SAMPLES_PER_FRAME as u64,
            samples: sent,
            cancelled: true,
            codes: None,
        };
        match (outcome, state) {
            (_, State::Broken(reason)) => {
                let error = ProtocolError::new(ErrorCode::InvalidRequest, reason);
                self.send(&ServerMessage::error(&error, true))?;
                return Ok(Next::End);
            }
            (_, State::Stopping) => {
                self.send(&cancelled)?;
                self.send(&ServerMessage::Stopped)?;
                return Ok(Next::End);
            }
            (_, State::Cancelled) | (Err(SpeakError::Cancelled), _) => self.send(&cancelled)?,
            (Err(SpeakError::Failed(error)), _) => self.send(&ServerMessage::error(&error, false))?,
            (Ok(spoken), _) => {
                let complete = ServerMessage::Complete {
                    frames_generated: spoken.frames_generated,
                    samples: sent,
                    cancelled: false,
                    codes: if request.return_codes { spoken.codes } else { None },
                };
                self.send(&complete)?;
            }
        }
        Ok(Next::Continue)
    }
}

fn binary_refused() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidRequest,
        "binary frames are only sent by the server",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Running,
    Cancelled,
    /// `stop` arrived: cancelled, then `stopped` and the end of the session.
    Stopping,
    /// The client went away.
    Gone,
    /// The client's byte stream broke.
    Broken(String),
}

/// The running utterance as the worker sees it: send audio and marks; learn that it was cancelled.
pub struct Utterance<'a> {
    transport: &'a mut dyn Transport,
    encoding: Encoding,
    sent: u64,
    state: State,
}

impl Utterance<'_> {
    /// Send audio samples in [-1, 1] (a binary frame; an empty slice sends nothing).
    pub fn audio(&mut self, samples: &[f32]) -> Result<(), Cancelled> {
        self.check()?;
        if samples.is_empty() {
            return Ok(());
        }
        if self
            .transport
            .send_binary(&encode_audio(samples, self.encoding))
            .is_err()
        {
            self.state = State::Gone;
            return Err(Cancelled);
        }
        self.sent += samples.len() as u64;
        Ok(())
    }

    /// Report a stage reached (optional; the harness times it on arrival).
    pub fn mark(&mut self, stage: MarkStage) -> Result<(), Cancelled> {
        self.check()?;
        let mark = ServerMessage::Mark {
            stage: stage.as_str(),
        }
        .to_json();
        if self.transport.send_text(&mark).is_err() {
            self.state = State::Gone;
            return Err(Cancelled);
        }
        Ok(())
    }

    /// Samples sent so far.
    pub fn samples_sent(&self) -> u64 {
        self.sent
    }

    /// Handle what the client sent meanwhile; `Err(Cancelled)` once the utterance must stop. Other requests
    /// are answered at once: `start`/`speak` with BUSY, malformed ones with INVALID_REQUEST.
    pub fn check(&mut self) -> Result<(), Cancelled> {
        while self.state == State::Running {
            let Some(incoming) = self.transport.poll() else {
                break;
            };
            let refusal = match incoming {
                Incoming::Closed => {
                    self.state = State::Gone;
                    None
                }
                Incoming::Broken(reason) => {
                    self.state = State::Broken(reason);
                    None
                }
                Incoming::Binary(_) => Some(binary_refused()),
                Incoming::Text(text) => match parse_client_message(&text) {
                    Ok(ClientMessage::Cancel) => {
                        self.state = State::Cancelled;
                        None
                    }
                    Ok(ClientMessage::Stop) => {
                        self.state = State::Stopping;
                        None
                    }
                    Ok(ClientMessage::Start(_)) => Some(busy("start")),
                    Ok(ClientMessage::Speak(_)) => Some(busy("speak")),
                    Err(error) => Some(error),
                },
            };
            if let Some(error) = refusal {
                if self
                    .transport
                    .send_text(&ServerMessage::error(&error, false).to_json())
                    .is_err()
                {
                    self.state = State::Gone;
                }
            }
        }
        if self.state == State::Running {
            Ok(())
        } else {
            Err(Cancelled)
        }
    }
}

fn busy(kind: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Busy,
        format!("{kind} while an utterance is in progress; cancel it first"),
    )
}

// --- stdio -------------------------------------------------------------------------------------------------

/// Frames over a reader thread (so a cancel is seen mid-utterance) and a writer.
pub struct StdioTransport<Out: Write> {
    inbox: Receiver<Incoming>,
    out: Out,
}

impl<Out: Write> StdioTransport<Out> {
    /// Read frames from `input` on a thread of its own; write frames to `out`.
    pub fn new(input: impl io::Read + Send + 'static, out: Out) -> Self {
        let (sender, inbox) = mpsc::channel();
        std::thread::spawn(move || {
            let mut input = input;
            loop {
                let incoming = match read_frame(&mut input) {
                    Ok(Some(Frame::Json(text))) => Incoming::Text(text),
                    Ok(Some(Frame::Audio(data))) => Incoming::Binary(data),
                    Ok(None) => Incoming::Closed,
                    // As the suite's server: undecodable bytes are replaced, and the JSON parser refuses them.
                    Err(FrameError::NotUtf8(bytes)) => {
                        Incoming::Text(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    Err(error) => Incoming::Broken(error.to_string()),
                };
                let last = matches!(incoming, Incoming::Closed | Incoming::Broken(_));
                if sender.send(incoming).is_err() || last {
                    return;
                }
            }
        });
        StdioTransport { inbox, out }
    }
}

impl<Out: Write> Transport for StdioTransport<Out> {
    fn receive(&mut self) -> Incoming {
        self.inbox.recv().unwrap_or(Incoming::Closed)
    }

    fn poll(&mut self) -> Option<Incoming> {
        match self.inbox.try_recv() {
            Ok(incoming) => Some(incoming),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Incoming::Closed),
        }
    }

    fn send_text(&mut self, text: &str) -> io::Result<()> {
        write_frame(&mut self.out, &Frame::Json(text.to_owned()))
    }

    fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        write_frame(&mut self.out, &Frame::Audio(data.to_vec()))
    }
}

/// Serve one client over this process's stdin/stdout until it stops or stdin closes.
///
/// stdout belongs to the protocol: before `load` runs, file descriptor 1 is pointed at stderr and the frames
/// go to a private duplicate of the original stdout, so a stray `println!` or a native library's printf in
/// the model code cannot corrupt the frame stream.
pub fn serve_stdio<W, E>(
    load: impl FnOnce() -> Result<W, E>,
    options: ServeOptions,
) -> Result<(), Box<dyn std::error::Error>>
where
    W: Worker,
    E: Into<Box<dyn std::error::Error>>,
{
    let protocol_out = take_stdout()?;
    let host = Host::new(load().map_err(Into::into)?, options);
    let mut transport = StdioTransport::new(io::stdin(), io::BufWriter::new(protocol_out));
    host.serve_session(&mut transport)?;
    Ok(())
}

#[cfg(unix)]
fn take_stdout() -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    extern "C" {
        fn dup(fd: i32) -> i32;
        fn dup2(from: i32, to: i32) -> i32;
    }
    io::stdout().flush()?;
    // SAFETY: plain POSIX calls on the process's own descriptors; the duplicate is owned by the File.
    unsafe {
        let saved = dup(1);
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        if dup2(io::stderr().as_raw_fd(), 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(saved))
    }
}

#[cfg(not(unix))]
fn take_stdout() -> io::Result<std::fs::File> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "serve_stdio needs a Unix platform (it re-points stdout)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sends `frames` frames of silence.
    struct Silence {
        frames: usize,
    }

    impl Worker for Silence {
        fn implementation(&self) -> Value {
            json!({"name": "silence"})
        }

        fn speak(
            &mut self,
            _: &SpeakRequest,
            _: &Voice,
            out: &mut Utterance<'_>,
        ) -> Result<Spoken, SpeakError> {
            for _ in 0..self.frames {
                out.audio(&[0.0; SAMPLES_PER_FRAME])?;
            }
            Ok(Spoken {
                frames_generated: self.frames as u64,
                codes: None,
            })
        }
    }

    /// Client messages in order; `during` are delivered to polls once the first audio frame has been sent.
    struct Client {
        inbox: VecDeque<Incoming>,
        during: VecDeque<Incoming>,
        audio_frames: usize,
        replies: Vec<Value>,
    }

    impl Transport for Client {
        fn receive(&mut self) -> Incoming {
            self.inbox.pop_front().unwrap_or(Incoming::Closed)
        }
        fn poll(&mut self) -> Option<Incoming> {
            if self.audio_frames == 0 {
                return None;
            }
            self.during.pop_front()
        }
        fn send_text(&mut self, text: &str) -> io::Result<()> {
            self.replies.push(serde_json::from_str(text).unwrap());
            Ok(())
        }
        fn send_binary(&mut self, _: &[u8]) -> io::Result<()> {
            self.audio_frames += 1;
            Ok(())
        }
    }

    fn text(message: Value) -> Incoming {
        Incoming::Text(message.to_string())
    }

    fn start() -> Incoming {
        let audio = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 16]);
        text(
            json!({"type": "start", "protocol": 1, "encoding": "f32", "sample_rate": 24000,
                    "voice": {"audio": audio, "text": "ref"}}),
        )
    }

    fn speak(extra: Value) -> Incoming {
        let mut message = json!({"type": "speak", "text": "hi", "mode": "xvector", "max_frames": 8});
        message
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        text(message)
    }

    fn run(
        worker: impl Worker,
        inbox: Vec<Incoming>,
        during: Vec<Incoming>,
        options: ServeOptions,
    ) -> Client {
        let mut client = Client {
            inbox: inbox.into(),
            during: during.into(),
            audio_frames: 0,
            replies: vec![],
        };
        Host::new(worker, options).serve_session(&mut client).unwrap();
        client
    }

    fn kinds(client: &Client) -> Vec<String> {
        let kind = |m: &Value| match m["type"].as_str().unwrap() {
            "error" => format!("error:{}", m["code"].as_str().unwrap()),
            other => other.to_owned(),
        };
        client.replies.iter().map(kind).collect()
    }

    /// Builds only the whole-text layout, in x-vector mode; remembers the layout each speak was handed.
    struct OneLayout {
        handed: std::rc::Rc<std::cell::RefCell<Vec<Option<bool>>>>,
    }

    impl Worker for OneLayout {
        fn implementation(&self) -> Value {
            json!({"name": "one-layout"})
        }

        fn layouts(&self) -> Option<Layouts> {
            Some(Layouts {
                icl: None,
                xvector: Some(true),
            })
        }

        fn speak(
            &mut self,
            request: &SpeakRequest,
            _: &Voice,
            _: &mut Utterance<'_>,
        ) -> Result<Spoken, SpeakError> {
            self.handed.borrow_mut().push(request.non_streaming_mode);
            Ok(Spoken::default())
        }
    }

    #[test]
    fn a_layout_or_mode_the_port_does_not_build_is_unsupported() {
        let handed = std::rc::Rc::default();
        let inbox = vec![
            start(),
            speak(json!({"non_streaming_mode": false})),
            speak(json!({"mode": "icl"})),
            speak(json!({"non_streaming_mode": true})),
            speak(json!({})),
        ];
        let worker = OneLayout {
            handed: std::rc::Rc::clone(&handed),
        };
        let client = run(worker, inbox, vec![], ServeOptions::default());
        assert_eq!(
            kinds(&client),
            [
                "hello",
                "ready",
                "error:UNSUPPORTED",
                "error:UNSUPPORTED",
                "complete",
                "complete"
            ]
        );
        assert_eq!(
            client.replies[0]["implementation"]["layouts"],
            json!({"xvector": true})
        );
        assert!(client.replies[2]["message"]
            .as_str()
            .unwrap()
            .contains("builds only"));
        assert_eq!(*handed.borrow(), [Some(true), Some(true)]); // an unasked layout is the declared one
    }

    #[test]
    fn cancel_ends_the_utterance_with_what_was_sent() {
        let during = vec![speak(json!({})), text(json!({"type": "cancel"}))];
        let client = run(
            Silence { frames: 8 },
            vec![start(), speak(json!({}))],
            during,
            ServeOptions::default(),
        );
        assert_eq!(kinds(&client), ["hello", "ready", "error:BUSY", "complete"]);
        let complete = &client.replies[3];
        assert_eq!(complete["cancelled"], true);
        assert_eq!(
            complete["samples"],
            (client.audio_frames * SAMPLES_PER_FRAME) as u64
        );
        assert!(client.audio_frames < 8);
    }

    #[test]
    fn stop_during_an_utterance_cancels_then_stops() {
        let during = vec![text(json!({"type": "stop"}))];
        let client = run(
            Silence { frames: 8 },
            vec![start(), speak(json!({}))],
            during,
            ServeOptions::default(),
        );
        assert_eq!(kinds(&client), ["hello", "ready", "complete", "stopped"]);
        assert_eq!(client.replies[2]["cancelled"], true);
    }

    #[test]
    fn undeclared_capabilities_and_bad_dump_paths_are_refused() {
        let inbox = vec![
            start(),
            speak(json!({"forced_codes": vec![[0i64; 16]]})),
            speak(json!({"dump_path": "d.safetensors"})),
            speak(json!({"forced_spk_embedding": "AAAAAA=="})), // partial forcing needs it too
        ];
        let client = run(Silence { frames: 1 }, inbox, vec![], ServeOptions::default());
        assert_eq!(
            kinds(&client),
            [
                "hello",
                "ready",
                "error:UNSUPPORTED",
                "error:UNSUPPORTED",
                "error:UNSUPPORTED"
            ]
        );
        assert!(client.replies[4]["message"]
            .as_str()
            .unwrap()
            .contains("forced_spk_embedding needs the forced_codes capability"));

        use crate::protocol::parse_dump_path;
        for bad in [
            "../x.safetensors",
            "/etc/x.safetensors",
            "a//b.safetensors",
            "a/./b.safetensors",
            "c:x.safetensors",
            "a/b/c/d/e.safetensors",
            "x.bin",
            "",
        ] {
            assert!(parse_dump_path(&json!(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            parse_dump_path(&json!("run/free.safetensors")).unwrap(),
            "run/free.safetensors"
        );
    }

    /// Declares stage dumps; writes a one-tensor dump.
    struct Dumper;

    impl Worker for Dumper {
        fn capabilities(&self) -> Vec<Capability> {
            vec![Capability::StageDumps]
        }
        fn implementation(&self) -> Value {
            json!({"name": "dumper"})
        }
        fn speak(
            &mut self,
            _: &SpeakRequest,
            _: &Voice,
            _: &mut Utterance<'_>,
        ) -> Result<Spoken, SpeakError> {
            Err(SpeakError::unsupported("dumps only"))
        }
        fn write_dump(&mut self, request: &SpeakRequest, _: &Voice, path: &Path) -> Result<(), SpeakError> {
            let mut dump =
                crate::dump::DumpWriter::new(crate::dump::DumpMeta::for_request(request, "dumper", false));
            dump.f32(crate::dump::key::OUTPUT_WAV, &[1], vec![0.0]).unwrap();
            dump.write(path).map_err(|e| SpeakError::synthesis(e.0))
        }
    }

    #[test]
    fn a_parity_request_is_answered_with_dumped_under_the_dump_directory() {
        let dir = std::env::temp_dir().join(format!("qtts-port-kit-dumps-{}", std::process::id()));
        let options = ServeOptions {
            dump_dir: Some(dir.clone()),
        };
        let inbox = vec![start(), speak(json!({"dump_path": "run/free.safetensors"}))];
        let client = run(Dumper, inbox, vec![], options);
        assert_eq!(kinds(&client), ["hello", "ready", "dumped"]);
        assert_eq!(
            client.replies[0]["dump_dir"],
            dir.canonicalize().unwrap().display().to_string()
        );
        assert_eq!(client.replies[2]["path"], "run/free.safetensors");
        let size = std::fs::metadata(dir.join("run/free.safetensors")).unwrap().len();
        assert_eq!(client.replies[2]["bytes"], size);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_stream_is_a_fatal_error() {
        let client = run(
            Silence { frames: 1 },
            vec![Incoming::Broken("bad".into())],
            vec![],
            ServeOptions::default(),
        );
        assert_eq!(kinds(&client), ["hello", "error:INVALID_REQUEST"]);
        assert_eq!(client.replies[1]["fatal"], true);
    }
}
