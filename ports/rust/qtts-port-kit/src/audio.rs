//! Audio on the wire: little-endian mono samples at 24 kHz, as IEEE float32 (exact) or int16 (pcm16).

use std::fmt;

/// int16 full scale: pcm16 sample = round(clip(x, -1, 1) * 32767).
const PCM16_SCALE: f32 = 32767.0;

/// Sample formats of binary frames (and of an uploaded voice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// int16, full scale 32767.
    Pcm16,
    /// IEEE float32: exact, the only encoding that can show bit parity.
    F32,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pcm16" => Some(Encoding::Pcm16),
            "f32" => Some(Encoding::F32),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Pcm16 => "pcm16",
            Encoding::F32 => "f32",
        }
    }

    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            Encoding::Pcm16 => 2,
            Encoding::F32 => 4,
        }
    }
}

/// Why received audio bytes are unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioError(pub String);

impl fmt::Display for AudioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AudioError {}

/// Float samples in [-1, 1] to wire bytes; pcm16 clips (NaN becomes 0), f32 is exact.
pub fn encode_audio(samples: &[f32], encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * encoding.sample_bytes());
    for &sample in samples {
        match encoding {
            Encoding::F32 => out.extend_from_slice(&sample.to_le_bytes()),
            Encoding::Pcm16 => {
                let finite = if sample.is_nan() { 0.0 } else { sample };
                // The product in f32, rounded half to even: what the suite's numpy encoder computes.
                let scaled = (finite.clamp(-1.0, 1.0) * PCM16_SCALE).round_ties_even();
                out.extend_from_slice(&(scaled as i16).to_le_bytes());
            }
        }
    }
    out
}

/// Wire bytes to float samples; refuses an empty frame, a partial sample and non-finite values.
pub fn decode_audio(data: &[u8], encoding: Encoding) -> Result<Vec<f32>, AudioError> {
    if data.is_empty() {
        return Err(AudioError(
            "empty audio frame: every audio frame must carry at least one sample".into(),
        ));
    }
    let width = encoding.sample_bytes();
    if data.len() % width != 0 {
        return Err(AudioError(format!(
            "audio frame of {} bytes is not a whole number of {} samples ({width} bytes each)",
            data.len(),
            encoding.as_str()
        )));
    }
    let samples: Vec<f32> = match encoding {
        Encoding::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Encoding::Pcm16 => data
            .chunks_exact(2)
            .map(|b| (f64::from(i16::from_le_bytes([b[0], b[1]])) / f64::from(PCM16_SCALE)) as f32)
            .collect(),
    };
    let bad = samples.iter().filter(|s| !s.is_finite()).count();
    if bad > 0 {
        return Err(AudioError(format!(
            "audio frame holds {bad} NaN or infinite samples of {}",
            samples.len()
        )));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips_exactly() {
        let samples = [0.0f32, -1.0, 0.123_456_79, f32::MIN_POSITIVE];
        assert_eq!(
            decode_audio(&encode_audio(&samples, Encoding::F32), Encoding::F32).unwrap(),
            samples
        );
    }

    #[test]
    fn pcm16_clips_and_scales() {
        let bytes = encode_audio(&[2.0, -2.0, 0.5, f32::NAN], Encoding::Pcm16);
        let ints: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(ints, [32767, -32767, 16384, 0]);
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(decode_audio(&[], Encoding::F32).unwrap_err().0.contains("empty"));
        assert!(decode_audio(&[0, 0, 0], Encoding::F32)
            .unwrap_err()
            .0
            .contains("whole number"));
        let nan = encode_audio(&[f32::NAN, 0.0], Encoding::F32);
        assert!(decode_audio(&nan, Encoding::F32).unwrap_err().0.contains("1 NaN"));
    }
}
