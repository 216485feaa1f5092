//! The golden session transcripts in fixtures/transcripts/ (recorded from the suite's Python server by
//! `qtts-eval fixtures --write-transcripts`), replayed against this crate: its framing must produce the same
//! bytes, and its session loop, serving the same tone as the recorded server, must answer every client message
//! as the recorded server did.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

use base64::Engine as _;
use qtts_port_kit::framing::{read_frame, Frame};
use qtts_port_kit::protocol::CODEBOOKS;
use qtts_port_kit::server::{Host, Incoming, Transport};
use qtts_port_kit::{Capability, ServeOptions, SpeakError, SpeakRequest, Spoken, Utterance, Voice, Worker};
use serde_json::Value;

const SESSIONS: [&str; 2] = ["session", "refusals"];
const TRANSPORTS: [&str; 2] = ["stdio", "websocket"];
/// The recorded server's tone (qtts_eval.units TONE_HZ, TONE_LEVEL) and sample rate.
const TONE_HZ: f64 = 220.0;
const TONE_LEVEL: f64 = 0.3;

struct Message {
    from_client: bool,
    frame: Frame,
    header: Option<String>,
}

fn load(session: &str, transport: &str) -> (Vec<Message>, Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../fixtures/transcripts")
        .join(format!("{session}.{transport}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: golden transcript missing ({e}); write it with `qtts-eval fixtures --write-transcripts`",
            path.display()
        )
    });
    let data: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(data["schema_version"], 1);
    let volatile = data["volatile_hello_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let messages = data["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let frame = match row.get("text") {
                Some(text) => Frame::Json(text.as_str().unwrap().to_owned()),
                None => Frame::Audio(
                    base64::engine::general_purpose::STANDARD
                        .decode(row["audio"].as_str().unwrap())
                        .unwrap(),
                ),
            };
            Message {
                from_client: row["from"] == "client",
                frame,
                header: row.get("frame_header").map(|h| h.as_str().unwrap().to_owned()),
            }
        })
        .collect();
    (messages, volatile)
}

#[test]
fn framing_reproduces_the_recorded_bytes() {
    for session in SESSIONS {
        let (messages, _) = load(session, "stdio");
        let mut stream = Vec::new();
        for message in &messages {
            let bytes = message.frame.to_bytes();
            let header: String = bytes[..5].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(Some(header), message.header, "{session}: frame header");
            stream.extend_from_slice(&bytes);
        }
        let mut reader = stream.as_slice();
        for message in &messages {
            assert_eq!(read_frame(&mut reader).unwrap().as_ref(), Some(&message.frame));
        }
        assert!(read_frame(&mut reader).unwrap().is_none());
    }
}

/// The recorded server's pipeline (`qtts_eval.wire.faulty_worker`): one frame of the test tone per requested
/// frame; codes are its fixed pattern of the seed, `(7 frame + 131 codebook + seed) % 2048`.
/// `code_offset` plants a fault (codes that differ from the recorded server's).
/// Codes per codebook of the 12 Hz codec: the recorded server's codes stay below it.
const CODEBOOK_SIZE: i64 = 2048;

struct Tone {
    code_offset: i64,
}

impl Worker for Tone {
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::SeededSampling]
    }

    fn implementation(&self) -> Value {
        serde_json::json!({"name": "tone"})
    }

    fn speak(
        &mut self,
        request: &SpeakRequest,
        _: &Voice,
        out: &mut Utterance<'_>,
    ) -> Result<Spoken, SpeakError> {
        let frames = request.max_frames as usize;
        for index in 0..frames {
            let start = index * 1920;
            let samples: Vec<f32> = (start..start + 1920)
                .map(|i| {
                    (TONE_LEVEL * (2.0 * std::f64::consts::PI * TONE_HZ * (i as f64 / 24_000.0)).sin()) as f32
                })
                .collect();
            out.audio(&samples)?;
        }
        let codes = (0..frames as i64)
            .map(|frame| -> [i64; CODEBOOKS] {
                std::array::from_fn(|book| {
                    (frame * 7 + book as i64 * 131 + request.seed + self.code_offset) % CODEBOOK_SIZE
                })
            })
            .collect();
        Ok(Spoken {
            frames_generated: frames as u64,
            codes: Some(codes),
        })
    }
}

/// Feeds the recorded client messages in order; keeps what the session sends.
struct Script {
    inbox: VecDeque<Incoming>,
    sent: Vec<Frame>,
}

impl Transport for Script {
    fn receive(&mut self) -> Incoming {
        self.inbox.pop_front().unwrap_or(Incoming::Closed)
    }
    fn poll(&mut self) -> Option<Incoming> {
        None // the recorded sessions send nothing while an utterance runs
    }
    fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.sent.push(Frame::Json(text.to_owned()));
        Ok(())
    }
    fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.sent.push(Frame::Audio(data.to_vec()));
        Ok(())
    }
}

/// A server message as the comparison sees it: volatile hello fields removed, and for errors only the code
/// and fatality (the wording of messages is each implementation's own).
fn comparable(frame: &Frame, volatile: &[String]) -> Frame {
    let Frame::Json(text) = frame else {
        return frame.clone();
    };
    let mut message: Value = serde_json::from_str(text).unwrap();
    let object = message.as_object_mut().unwrap();
    match object["type"].as_str() {
        Some("hello") => volatile.iter().for_each(|field| drop(object.remove(field))),
        Some("error") => drop(object.remove("message")),
        _ => {}
    }
    Frame::Json(message.to_string())
}

/// Serve the recorded client messages with `worker`; the first server message that differs, if any.
fn replay_session(worker: Tone, session: &str, transport: &str) -> Option<String> {
    let (messages, volatile) = load(session, transport);
    let inbox = messages
        .iter()
        .filter(|m| m.from_client)
        .map(|m| match &m.frame {
            Frame::Json(text) => Incoming::Text(text.clone()),
            Frame::Audio(data) => Incoming::Binary(data.clone()),
        })
        .collect();
    let mut script = Script {
        inbox,
        sent: Vec::new(),
    };
    Host::new(worker, ServeOptions::default())
        .serve_session(&mut script)
        .unwrap();
    let expected: Vec<Frame> = messages
        .iter()
        .filter(|m| !m.from_client)
        .map(|m| comparable(&m.frame, &volatile))
        .collect();
    let got: Vec<Frame> = script.sent.iter().map(|f| comparable(f, &volatile)).collect();
    if got.len() != expected.len() {
        return Some(format!(
            "{} server messages, recorded {}",
            got.len(),
            expected.len()
        ));
    }
    got.iter()
        .zip(&expected)
        .position(|(got, expected)| got != expected)
        .map(|index| format!("server message {index} differs"))
}

#[test]
fn session_loop_answers_as_the_recorded_server() {
    for session in SESSIONS {
        for transport in TRANSPORTS {
            let difference = replay_session(Tone { code_offset: 0 }, session, transport);
            assert_eq!(difference, None, "{session}.{transport}");
        }
    }
}

#[test]
fn replay_catches_a_worker_that_differs() {
    let difference = replay_session(Tone { code_offset: 1 }, "session", "stdio");
    assert_eq!(difference.as_deref(), Some("server message 4 differs")); // the first complete's codes
}
