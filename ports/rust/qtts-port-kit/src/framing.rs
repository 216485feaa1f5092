//! stdio framing: every message is a 5-byte header (payload length, u32 big-endian; kind byte) and the payload.

use std::fmt;
use std::io::{self, Read, Write};

/// Header size in bytes: 4-byte length, 1-byte kind.
pub const HEADER_BYTES: usize = 5;
/// Largest payload accepted: 64 MiB (a 30 s f32 voice in base64 is about 4 MB; larger is a broken stream).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Kind byte of a UTF-8 JSON control message.
pub const KIND_JSON: u8 = 0x01;
/// Kind byte of audio samples in the session encoding.
pub const KIND_AUDIO: u8 = 0x02;

/// One stdio frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message.
    Json(String),
    /// Audio samples, little-endian, in the session encoding.
    Audio(Vec<u8>),
}

impl Frame {
    /// The frame's bytes on the wire: header then payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Frame::Json(text) => (KIND_JSON, text.as_bytes()),
            Frame::Audio(data) => (KIND_AUDIO, data.as_slice()),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }
}

/// Why the frame stream cannot be read; after any of these nothing more on the stream can be trusted.
#[derive(Debug)]
pub enum FrameError {
    /// The header's kind byte is neither 0x01 nor 0x02.
    UnknownKind(u8),
    /// The header announces more than MAX_FRAME_BYTES.
    TooLong(usize),
    /// The stream ended inside a frame.
    Truncated {
        got: usize,
        wanted: usize,
    },
    /// A JSON frame is not UTF-8 (its payload, read whole: the stream is still in step).
    NotUtf8(Vec<u8>),
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownKind(kind) => {
                write!(
                    f,
                    "malformed frame: unknown kind byte 0x{kind:02x} (expected 0x01 JSON or 0x02 audio)"
                )
            }
            FrameError::TooLong(length) => {
                write!(
                    f,
                    "malformed frame: length {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
                )
            }
            FrameError::Truncated { got, wanted } => {
                write!(f, "stream closed mid-frame after {got} of {wanted} bytes")
            }
            FrameError::NotUtf8(_) => f.write_str("malformed frame: JSON frame is not UTF-8"),
            FrameError::Io(e) => write!(f, "frame stream failed: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// (length, kind) of a header; refuses an unknown kind or an absurd length before any payload is read.
pub fn parse_header(header: [u8; HEADER_BYTES]) -> Result<(usize, u8), FrameError> {
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = header[4];
    if kind != KIND_JSON && kind != KIND_AUDIO {
        return Err(FrameError::UnknownKind(kind));
    }
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLong(length));
    }
    Ok((length, kind))
}

/// Read one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_BYTES {
        return Err(FrameError::Truncated {
            got,
            wanted: HEADER_BYTES,
        });
    }
    let (length, kind) = parse_header(header)?;
    let mut payload = vec![0u8; length];
    let got = read_full(reader, &mut payload)?;
    if got < length {
        return Err(FrameError::Truncated { got, wanted: length });
    }
    if kind == KIND_AUDIO {
        return Ok(Some(Frame::Audio(payload)));
    }
    String::from_utf8(payload)
        .map(|text| Some(Frame::Json(text)))
        .map_err(|e| FrameError::NotUtf8(e.into_bytes()))
}

/// Write one frame and flush it (a frame must reach the harness when it is produced: it is timed on arrival).
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> io::Result<()> {
    writer.write_all(&frame.to_bytes())?;
    writer.flush()
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Json("{\"type\":\"stop\"}".into()),
            Frame::Audio(vec![1, 2, 3, 4]),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        assert_eq!(&bytes[..5], &[0, 0, 0, 15, KIND_JSON]);
        let mut reader = bytes.as_slice();
        for frame in &frames {
            assert_eq!(read_frame(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert!(read_frame(&mut reader).unwrap().is_none());
    }

    #[test]
    fn broken_headers_are_refused() {
        let mut unknown: &[u8] = &[0, 0, 0, 1, 0x7f, 0];
        assert!(matches!(
            read_frame(&mut unknown),
            Err(FrameError::UnknownKind(0x7f))
        ));
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, KIND_AUDIO];
        assert!(matches!(read_frame(&mut huge), Err(FrameError::TooLong(_))));
        let mut short: &[u8] = &[0, 0, 0, 8, KIND_AUDIO, 1, 2];
        assert!(matches!(
            read_frame(&mut short),
            Err(FrameError::Truncated { got: 2, wanted: 8 })
        ));
        let mut latin1: &[u8] = &[0, 0, 0, 1, KIND_JSON, 0xe9];
        assert!(matches!(read_frame(&mut latin1), Err(FrameError::NotUtf8(bytes)) if bytes == [0xe9]));
        let mut half_header: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut half_header),
            Err(FrameError::Truncated { got: 2, wanted: 5 })
        ));
    }
}
