//! A tap store for parity dumps: the model code records stage tensors where it computes them
//! (`taps::record(key::SPK_EMBEDDING, &embedding)`), appends one row per generated frame
//! (`taps::record_frame(key::TALKER_LOGITS, &logits)`), and asks for the teacher-forced code of each decision
//! (`taps::code(codebook, own)`), without threading a writer through every function.
//!
//! The store lives on the thread that runs [`capture`] (a `Worker::write_dump`) and only while it runs: outside
//! a capture, and on any other thread, `record` and `record_frame` do nothing and convert nothing, so they
//! can stay in the code path of ordinary `speak` requests at no cost, and `code` returns the port's own code.
//!
//! Tensors reach the store through [`TapTensor`]. The kit implements it for its own [`Tensor`] and for `f32` /
//! `i64` slices (1-D); a port implements it for its tensor type through a local wrapper, e.g. for candle:
//!
//! ```ignore
//! struct Tap<'a>(&'a candle_core::Tensor);
//! impl qtts_port_kit::taps::TapTensor for Tap<'_> {
//!     fn to_tap(&self) -> Result<Tensor, String> {
//!         let flat = self.0.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::F32)?.to_vec1());
//!         Ok(Tensor::f32(self.0.dims().to_vec(), flat.map_err(|e| e.to_string())?))
//!     }
//! }
//! // taps::record(key::SPK_EMBEDDING, &Tap(&embedding));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::dump::{key, DumpError, DumpWriter, Tensor, TensorData};
use crate::protocol::{Forced, CODEBOOKS};

/// A value the tap store can record: converted only inside a capture.
pub trait TapTensor {
    /// The values, row-major, with their shape (batch dimension removed).
    fn to_tap(&self) -> Result<Tensor, String>;
}

impl TapTensor for Tensor {
    fn to_tap(&self) -> Result<Tensor, String> {
        Ok(self.clone())
    }
}

impl TapTensor for [f32] {
    fn to_tap(&self) -> Result<Tensor, String> {
        Ok(Tensor::f32(vec![self.len()], self.to_vec()))
    }
}

impl TapTensor for [i64] {
    fn to_tap(&self) -> Result<Tensor, String> {
        Ok(Tensor::i64(vec![self.len()], self.to_vec()))
    }
}

/// One capture in progress.
struct Store {
    tensors: BTreeMap<String, Tensor>,
    /// Per-frame stages: rows in frame order, stacked when the capture ends.
    rows: BTreeMap<String, Vec<Tensor>>,
    forced: Option<Vec<[i64; CODEBOOKS]>>,
    /// Index of the frame being generated: frames ended so far.
    frame: usize,
    /// The first record that could not be taken; the capture fails with it rather than write a partial dump.
    error: Option<String>,
}

thread_local! {
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
}

/// Runs `generate` with the tap store on, forcing the codes of `forced` (the request's `forced`, if any), and
/// adds what it recorded to `writer`: each `record`ed tensor, each `record_frame` stage stacked to
/// `[frames, ...row]`, and `codes` (one row per [`end_frame`]). A key outside the schema, rows of different
/// shapes, a tensor that failed to convert, or a nested capture, fail the capture and add nothing.
pub fn capture<R, E: From<DumpError>>(
    forced: Option<&Forced>,
    writer: &mut DumpWriter,
    generate: impl FnOnce() -> Result<R, E>,
) -> Result<R, E> {
    let fresh = Store {
        tensors: BTreeMap::new(),
        rows: BTreeMap::new(),
        forced: forced.and_then(|f| f.codes.clone()),
        frame: 0,
        error: None,
    };
    if active() {
        return Err(DumpError("a tap capture is already running on this thread".into()).into());
    }
    STORE.with(|s| *s.borrow_mut() = Some(fresh));
    let on = Capturing; // turns the store off however `generate` ends, a panic included
    let value = generate()?;
    let store = on.end();
    if let Some(error) = store.error {
        return Err(DumpError(error).into());
    }
    // Into a copy first: a capture that fails part way adds nothing.
    let mut extended = writer.clone();
    for (name, tensor) in store.tensors {
        extended.insert(&name, tensor)?;
    }
    for (name, rows) in store.rows {
        extended.insert(&name, stack(&name, rows)?)?;
    }
    *writer = extended;
    Ok(value)
}

/// The store of a running capture, taken off the thread when dropped.
struct Capturing;

impl Capturing {
    fn end(self) -> Store {
        STORE
            .with(|s| s.borrow_mut().take())
            .expect("the capture's store is set until it ends")
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        STORE.with(|s| s.borrow_mut().take());
    }
}

/// Whether a capture is running on this thread (for work only a dump needs, beyond `record`).
pub fn active() -> bool {
    STORE.with(|s| s.borrow().is_some())
}

/// Records a stage tensor under `key` (a later record of the same key replaces it); nothing outside a capture.
pub fn record<T: TapTensor + ?Sized>(key: &str, tensor: &T) {
    with_store(|store| {
        let tensor = tensor.to_tap().map_err(|e| format!("{key}: {e}"))?;
        store.tensors.insert(key.to_owned(), tensor);
        Ok(())
    });
}

/// Appends this frame's row of a per-frame stage (`talker.logits` [vocab], `code_predictor.logits`
/// [15, vocab]); the dump holds the rows stacked in order. Nothing outside a capture.
pub fn record_frame<T: TapTensor + ?Sized>(key: &str, row: &T) {
    with_store(|store| {
        let row = row.to_tap().map_err(|e| format!("{key}: {e}"))?;
        store.rows.entry(key.to_owned()).or_default().push(row);
        Ok(())
    });
}

/// The code to emit for `codebook` of the current frame: the forced one in a teacher-forced capture, else
/// `own`. Ask for every codebook before conditioning on it, so that what follows sees the forced code.
pub fn code(codebook: usize, own: i64) -> i64 {
    STORE.with(|s| {
        let store = s.borrow();
        let forced = store
            .as_ref()
            .and_then(|store| store.forced.as_ref()?.get(store.frame));
        forced.map_or(own, |frame| frame[codebook])
    })
}

/// Whether a teacher-forced capture has run out of forced frames: the reference stopped here, so must the port.
pub fn forced_end() -> bool {
    STORE.with(|s| {
        let store = s.borrow();
        let store = store.as_ref();
        store.and_then(|store| Some(store.frame >= store.forced.as_ref()?.len())) == Some(true)
    })
}

/// The per-frame hook: call it once a frame's 16 codes are chosen. It records them as a row of `codes` and
/// moves `code` on to the next frame.
pub fn end_frame(codes: &[i64; CODEBOOKS]) {
    record_frame(key::CODES, &codes[..]);
    with_store(|store| {
        store.frame += 1;
        Ok(())
    });
}

fn with_store(update: impl FnOnce(&mut Store) -> Result<(), String>) {
    STORE.with(|s| {
        if let Some(store) = s.borrow_mut().as_mut() {
            if store.error.is_none() {
                store.error = update(store).err();
            }
        }
    });
}

/// Rows of one shape stacked along a new first axis.
fn stack(name: &str, rows: Vec<Tensor>) -> Result<Tensor, DumpError> {
    let row_shape = rows[0].shape.clone();
    if let Some((index, row)) = rows.iter().enumerate().find(|(_, row)| row.shape != row_shape) {
        return Err(DumpError(format!(
            "{name}: frame {index}'s row has shape {:?}, frame 0's {row_shape:?}",
            row.shape
        )));
    }
    let shape = [vec![rows.len()], row_shape].concat();
    let mut rows = rows.into_iter().map(|row| row.data);
    let mut data = rows.next().expect("a per-frame stage has a row once recorded");
    for row in rows {
        match (&mut data, row) {
            (TensorData::F32(values), TensorData::F32(more)) => values.extend(more),
            (TensorData::I64(values), TensorData::I64(more)) => values.extend(more),
            _ => return Err(DumpError(format!("{name}: rows mix float32 and int64 values"))),
        }
    }
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::DumpMeta;
    use crate::protocol::{CloneMode, SpeakRequest};

    fn writer() -> DumpWriter {
        let request = SpeakRequest {
            text: "hi".into(),
            language: "english".into(),
            mode: CloneMode::Xvector,
            max_frames: 4,
            seed: 0,
            sampling: Default::default(),
            return_codes: false,
            non_streaming_mode: None,
            dump_path: None,
            forced: None,
        };
        DumpWriter::new(DumpMeta::for_request(&request, "test", false))
    }

    /// A stand-in decoding loop: records an embedding, a logits row and 16 codes per frame.
    fn generate(frames: usize) -> Vec<[i64; CODEBOOKS]> {
        record(key::SPK_EMBEDDING, &[0.5f32, -0.5][..]);
        let mut emitted = Vec::new();
        for frame in 0..frames {
            if forced_end() {
                break;
            }
            record_frame(key::TALKER_LOGITS, &[frame as f32; 3][..]);
            let mut codes = [0; CODEBOOKS];
            for (codebook, slot) in codes.iter_mut().enumerate() {
                *slot = code(codebook, (100 + frame) as i64);
            }
            end_frame(&codes);
            emitted.push(codes);
        }
        emitted
    }

    #[test]
    fn outside_a_capture_records_nothing_and_codes_are_the_ports_own() {
        assert!(!active());
        assert_eq!(generate(2), [[100; 16], [101; 16]]);
        let mut writer = writer();
        capture(None, &mut writer, || Ok::<_, DumpError>(())).unwrap();
        assert!(writer.tensors().is_empty(), "a later capture starts empty");
    }

    #[test]
    fn a_free_capture_stacks_rows_and_records_the_codes() {
        let mut writer = writer();
        let emitted = capture(None, &mut writer, || Ok::<_, DumpError>(generate(2))).unwrap();
        assert_eq!(emitted, [[100; 16], [101; 16]]);
        let tensors = writer.tensors();
        assert_eq!(tensors[key::TALKER_LOGITS].shape, [2, 3]);
        assert_eq!(
            tensors[key::TALKER_LOGITS].data,
            TensorData::F32(vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
        );
        assert_eq!(tensors[key::CODES].shape, [2, 16]);
        assert_eq!(tensors[key::SPK_EMBEDDING].shape, [2]);
        assert!(!active());
    }

    #[test]
    fn a_forced_capture_emits_the_forced_codes_and_stops_where_they_end() {
        let forced = Forced {
            codes: Some(vec![[7; 16]]),
            ..Default::default()
        };
        let mut writer = writer();
        let emitted = capture(Some(&forced), &mut writer, || Ok::<_, DumpError>(generate(3))).unwrap();
        assert_eq!(emitted, [[7; 16]]);
        assert_eq!(writer.tensors()[key::CODES].data, TensorData::I64(vec![7; 16]));
    }

    #[test]
    fn a_bad_record_fails_the_capture_and_adds_nothing() {
        let mut writer = writer();
        let outside = capture(None, &mut writer, || {
            record("talker.logit", &[0.0f32][..]);
            Ok::<_, DumpError>(())
        });
        assert!(outside.unwrap_err().0.contains("not in the parity key schema"));
        let ragged = capture(None, &mut writer, || {
            record_frame(key::TALKER_LOGITS, &[0.0f32; 3][..]);
            record_frame(key::TALKER_LOGITS, &[0.0f32; 2][..]);
            Ok::<_, DumpError>(())
        });
        assert!(ragged.unwrap_err().0.contains("frame 1's row has shape [2]"));
        struct Broken;
        impl TapTensor for Broken {
            fn to_tap(&self) -> Result<Tensor, String> {
                Err("device lost".into())
            }
        }
        let broken = capture(None, &mut writer, || {
            record(key::SPK_EMBEDDING, &Broken);
            Ok::<_, DumpError>(())
        });
        assert_eq!(broken.unwrap_err().0, "spk.embedding: device lost");
        assert!(writer.tensors().is_empty());
        let mut inner = writer.clone();
        let nested = capture(None, &mut writer, || {
            capture(None, &mut inner, || Ok::<_, DumpError>(()))
        });
        assert!(nested.unwrap_err().0.contains("already running"));
        assert!(!active(), "a failed capture leaves the store off");
    }
}
