//! `replay`: serves a reference parity dump (from `qtts-eval parity --out DIR`, file `reference.safetensors`)
//! as if it were a port: its audio, its codes, its stage dumps and a teacher-forced run. It is the shortest
//! complete wiring of a port to the kit, and the suite's cross-language test vector.
//!
//! ```text
//! replay --dump DIR/reference.safetensors [--checkpoint DIR] [--perturb KEY] [--frame-delay-ms MS]
//!        [--dump-dir DIR] [--synthetic] [--websocket]  # `websocket` feature: ws://127.0.0.1:PORT/api/v1/speak
//! ```
//!
//! Over stdio it serves the harness that started it; with `--websocket` it prints `listening on URL` and
//! serves every connection. Dumps go under `--dump-dir` (default: a fresh directory in the system's temporary
//! directory), which `hello.dump_dir` announces. `hello.implementation` carries the dump's `model_ref`, a
//! `weights_hash` and `synthetic`: false unless `--synthetic` says the dump's checkpoint has random weights (a
//! synthetic preset such as `tiny`); the dump header does not record it. With `--checkpoint DIR` the hash is
//! the kit's `weights_hash` of DIR, as a port computes it, and the replay refuses to start when the dump came
//! from other weights; without it, the dump's own hash (empty when it names none).
//!
//! `--perturb KEY` plants a fault at one stage: every dump it writes has that tensor changed (floating values
//! get 10 % of the tensor's largest magnitude added in a fixed pattern; integer ids and codes get their first
//! value's lowest bit flipped), and when KEY is `codes` or `output.wav` the codes or audio it sends change too.
//! Any speak gets the dump's audio, cut at the request's frame budget; a parity request (`dump_path`) must be
//! the request the dump recorded, and a forced one may force any of the dump's own codes, reference codes and
//! speaker embedding (its header then lists those), but nothing else, or it is refused as UNSUPPORTED: the
//! replay cannot compute anything else. Its parity dumps are filled through the kit's tap store
//! (`qtts_port_kit::taps`) as a port's model code would: stage tensors recorded, per-frame rows appended, and
//! each code asked of `taps::code` so that a forced run emits the forced codes. It declares one prompt layout (`Worker::layouts`), the dump's mode and
//! `non_streaming_mode`: a speak of the other mode or layout is refused as UNSUPPORTED by the kit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use qtts_port_kit::dump::{
    key, read_dump, Dump, DumpError, DumpWriter, ForcedInput, HeaderSampling, Tensor, TensorData,
};
use qtts_port_kit::protocol::{Forced, CODEBOOKS, SAMPLES_PER_FRAME};
use qtts_port_kit::{
    serve_stdio, taps, weights_hash, Capability, Layouts, MarkStage, ServeOptions, SpeakError, SpeakRequest,
    Spoken, Utterance, Voice, Worker,
};
use serde_json::json;

/// Share of the tensor's largest magnitude added by `--perturb` (far outside every tolerance profile: the
/// loosest rule, bf16, allows a relative L2 error of 0.03).
const PERTURB_SCALE: f32 = 0.1;

struct Replay {
    dump: Dump,
    source: PathBuf,
    perturbed: Option<String>,
    frame_delay: Duration,
    codes: Vec<[i64; CODEBOOKS]>,
    audio: Vec<f32>,
    /// The dump's own codes, reference codes and speaker embedding, before any perturbation: the only forced
    /// inputs the replay can honour.
    own: Forced,
    weights_hash: String,
    synthetic: bool,
}

impl Replay {
    fn load(args: &Args) -> Result<Self, String> {
        let mut dump = read_dump(&args.dump).map_err(|e| e.to_string())?;
        let recorded = dump.meta.weights_hash.clone().unwrap_or_default();
        let weights_hash = match &args.checkpoint {
            None => recorded,
            Some(dir) => {
                let hash = weights_hash(dir).map_err(|e| format!("--checkpoint {}: {e}", dir.display()))?;
                if !recorded.is_empty() && hash != recorded {
                    return Err(format!(
                        "--checkpoint {}: weights hash {hash}, but the dump came from {recorded}",
                        dir.display()
                    ));
                }
                hash
            }
        };
        let embedding = match dump.tensors.get(key::SPK_EMBEDDING).map(|t| &t.data) {
            Some(TensorData::F32(values)) => Some(values.clone()),
            _ => None,
        };
        let own = Forced {
            codes: codes_of(dump.tensors.get(key::CODES)),
            ref_codes: codes_of(dump.tensors.get(key::CODEC_ENC_CODES)),
            spk_embedding: embedding,
        };
        if let Some(stage) = &args.perturb {
            let keys: Vec<String> = dump.tensors.keys().cloned().collect();
            let tensor = dump.tensors.get_mut(stage).ok_or_else(|| {
                format!(
                    "--perturb {stage}: the dump has no such key; it has {}",
                    keys.join(", ")
                )
            })?;
            perturb(tensor);
        }
        let codes =
            codes_of(dump.tensors.get(key::CODES)).ok_or("the dump has no int64 'codes' [frames, 16]")?;
        let audio = match dump.tensors.get(key::OUTPUT_WAV).map(|t| &t.data) {
            Some(TensorData::F32(samples)) => samples.clone(),
            _ => return Err("the dump has no float32 'output.wav'".into()),
        };
        if audio.len() != codes.len() * SAMPLES_PER_FRAME {
            return Err(format!(
                "output.wav has {} samples for {} frames; expected {} x {SAMPLES_PER_FRAME}",
                audio.len(),
                codes.len(),
                codes.len()
            ));
        }
        Ok(Replay {
            dump,
            source: args.dump.clone(),
            perturbed: args.perturb.clone(),
            frame_delay: Duration::from_secs_f64(args.frame_delay_ms / 1000.0),
            codes,
            audio,
            own,
            weights_hash,
            synthetic: args.synthetic,
        })
    }

    /// Why this request is not the one the dump recorded, if it is not.
    fn mismatch(&self, request: &SpeakRequest) -> Option<String> {
        let meta = &self.dump.meta;
        let differences = [
            ("text", meta.text != request.text),
            ("language", meta.language != request.language),
            ("mode", meta.clone_mode != request.mode.as_str()),
            ("max_frames", meta.max_frames != request.max_frames),
            ("seed", meta.seed != request.seed),
            (
                "sampling",
                meta.sampling != HeaderSampling::from(&request.sampling),
            ),
        ];
        let names: Vec<&str> = differences
            .iter()
            .filter(|(_, differs)| *differs)
            .map(|(name, _)| *name)
            .collect();
        (!names.is_empty()).then(|| format!("{} differ from the replayed dump's request", names.join(", ")))
    }

    /// The replayed dump, written through the tap store under this implementation's name.
    fn write(&self, forced: Option<&Forced>, path: &Path) -> Result<(), DumpError> {
        let mut meta = self.dump.meta.clone();
        meta.implementation = match &self.perturbed {
            None => format!("qtts-port-kit replay of {}", meta.implementation),
            Some(stage) => format!(
                "qtts-port-kit replay of {} + perturbed {stage}",
                meta.implementation
            ),
        };
        meta.versions
            .insert("qtts-port-kit".into(), env!("CARGO_PKG_VERSION").into());
        meta.forced = forced.map(ForcedInput::of).unwrap_or_default();
        let mut writer = DumpWriter::new(meta);
        taps::capture(forced, &mut writer, || {
            self.generate();
            Ok::<_, DumpError>(())
        })?;
        writer.write(path)
    }

    /// What a port's model code does during a parity request, with the replayed tensors standing in for the
    /// computed ones: every stage recorded, the per-frame ones row by row with the codes of each frame.
    fn generate(&self) {
        for (name, tensor) in &self.dump.tensors {
            match name.as_str() {
                key::CODES => {}
                key::TALKER_LOGITS | key::CODE_PREDICTOR_LOGITS if !tensor.is_empty() => {
                    for row in rows(tensor) {
                        taps::record_frame(name, &row);
                    }
                }
                _ => taps::record(name, tensor),
            }
        }
        for own in &self.codes {
            let mut frame = [0; CODEBOOKS];
            for (codebook, code) in frame.iter_mut().enumerate() {
                *code = taps::code(codebook, own[codebook]);
            }
            taps::end_frame(&frame);
        }
    }
}

/// The rows of a tensor along its first axis.
fn rows(tensor: &Tensor) -> Vec<Tensor> {
    let shape = tensor.shape[1..].to_vec();
    let width: usize = shape.iter().product();
    match &tensor.data {
        TensorData::F32(values) => values
            .chunks_exact(width)
            .map(|row| Tensor::f32(shape.clone(), row.to_vec()))
            .collect(),
        TensorData::I64(values) => values
            .chunks_exact(width)
            .map(|row| Tensor::i64(shape.clone(), row.to_vec()))
            .collect(),
    }
}

impl Replay {
    /// Why these forced inputs are not the replayed dump's own, if they are not: the replay computes nothing.
    /// An input left free is the dump's own anyway.
    fn foreign(&self, forced: &Forced) -> Option<&'static str> {
        if forced.codes.is_some() && forced.codes != self.own.codes {
            return Some("codes");
        }
        if forced.ref_codes.is_some() && forced.ref_codes != self.own.ref_codes {
            return Some("reference codes");
        }
        (forced.spk_embedding.is_some() && forced.spk_embedding != self.own.spk_embedding)
            .then_some("speaker embedding")
    }
}

impl Worker for Replay {
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::StageDumps, Capability::ForcedCodes]
    }

    /// The replay builds one prompt: the dump's mode and layout; anything else is UNSUPPORTED.
    fn layouts(&self) -> Option<Layouts> {
        let layout = Some(self.dump.meta.non_streaming_mode);
        Some(match self.dump.meta.clone_mode.as_str() {
            "icl" => Layouts {
                icl: layout,
                xvector: None,
            },
            _ => Layouts {
                icl: None,
                xvector: layout,
            },
        })
    }

    fn implementation(&self) -> serde_json::Value {
        let meta = &self.dump.meta;
        json!({
            "name": "qtts-port-kit replay",
            "version": env!("CARGO_PKG_VERSION"),
            "model_ref": meta.model_ref,
            "weights_hash": self.weights_hash,
            "synthetic": self.synthetic,
            "dtype": meta.dtype,
            "device": "cpu",
            "replayed_dump": self.source.display().to_string(),
            "perturbed": self.perturbed,
        })
    }

    fn speak(
        &mut self,
        request: &SpeakRequest,
        _voice: &Voice,
        out: &mut Utterance<'_>,
    ) -> Result<Spoken, SpeakError> {
        out.mark(MarkStage::PromptReady)?;
        let frames = self.codes.len().min(request.max_frames as usize);
        for (index, frame) in self.audio.chunks(SAMPLES_PER_FRAME).take(frames).enumerate() {
            std::thread::sleep(self.frame_delay);
            if index == 0 {
                out.mark(MarkStage::FirstFrame)?;
            }
            out.audio(frame)?;
        }
        Ok(Spoken {
            frames_generated: frames as u64,
            codes: Some(self.codes[..frames].to_vec()),
        })
    }

    fn write_dump(&mut self, request: &SpeakRequest, _voice: &Voice, path: &Path) -> Result<(), SpeakError> {
        if let Some(reason) = self.mismatch(request) {
            return Err(SpeakError::unsupported(format!(
                "replay can only dump its own request: {reason}"
            )));
        }
        if let Some(what) = request.forced.as_ref().and_then(|forced| self.foreign(forced)) {
            return Err(SpeakError::unsupported(format!(
                "replay can only be forced with its own {what}"
            )));
        }
        self.write(request.forced.as_ref(), path)
            .map_err(|e| SpeakError::synthesis(e.to_string()))
    }
}

fn codes_of(tensor: Option<&Tensor>) -> Option<Vec<[i64; CODEBOOKS]>> {
    let tensor = tensor?;
    let TensorData::I64(values) = &tensor.data else {
        return None;
    };
    if tensor.shape.len() != 2 || tensor.shape[1] != CODEBOOKS {
        return None;
    }
    Some(
        values
            .chunks_exact(CODEBOOKS)
            .map(|row| row.try_into().unwrap_or([0; CODEBOOKS]))
            .collect(),
    )
}

fn perturb(tensor: &mut Tensor) {
    match &mut tensor.data {
        TensorData::F32(values) => {
            let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (i, value) in values.iter_mut().enumerate() {
                let pattern = ((i * 7919) % 13) as f32 / 6.0 - 1.0; // fixed, in [-1, 1], not a constant shift
                *value += PERTURB_SCALE * largest * pattern;
            }
        }
        TensorData::I64(values) => {
            if let Some(first) = values.first_mut() {
                *first ^= 1;
            }
        }
    }
}

struct Args {
    dump: PathBuf,
    checkpoint: Option<PathBuf>,
    perturb: Option<String>,
    frame_delay_ms: f64,
    dump_dir: Option<PathBuf>,
    synthetic: bool,
    websocket: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dump: PathBuf::new(),
        checkpoint: None,
        perturb: None,
        frame_delay_ms: 20.0,
        dump_dir: None,
        synthetic: false,
        websocket: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dump" => args.dump = PathBuf::from(value()?),
            "--checkpoint" => args.checkpoint = Some(PathBuf::from(value()?)),
            "--perturb" => args.perturb = Some(value()?),
            "--frame-delay-ms" => {
                let text = value()?;
                args.frame_delay_ms = text.parse().ok().filter(|ms: &f64| *ms >= 0.0).ok_or(format!("--frame-delay-ms {text}: not a non-negative number"))?;
            }
            "--dump-dir" => args.dump_dir = Some(PathBuf::from(value()?)),
            "--synthetic" => args.synthetic = true,
            "--websocket" if cfg!(feature = "websocket") => args.websocket = true,
            other => return Err(format!("unknown argument {other}; usage: replay --dump FILE [--checkpoint DIR] [--perturb KEY] [--frame-delay-ms MS] [--dump-dir DIR] [--synthetic]")),
        }
    }
    if args.dump.as_os_str().is_empty() {
        return Err("--dump FILE (a reference.safetensors from `qtts-eval parity --out`) is required".into());
    }
    Ok(args)
}

/// Dumps go under `--dump-dir`, by default a directory of this process's own in the system's temporary
/// directory (the harness learns it from `hello.dump_dir`).
fn serve_options(args: &Args) -> ServeOptions {
    let default = || std::env::temp_dir().join(format!("qtts-port-kit-replay-{}", std::process::id()));
    ServeOptions {
        dump_dir: Some(args.dump_dir.clone().unwrap_or_else(default)),
    }
}

#[cfg(feature = "websocket")]
fn serve_websocket(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let announce = |url: &str| println!("listening on {url}");
    qtts_port_kit::serve_websocket(
        || Replay::load(args),
        serve_options(args),
        "127.0.0.1:0",
        announce,
    )
}

#[cfg(not(feature = "websocket"))]
fn serve_websocket(_: &Args) -> Result<(), Box<dyn std::error::Error>> {
    Err("--websocket needs the `websocket` feature".into())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let served = if args.websocket {
        serve_websocket(&args)
    } else {
        serve_stdio(|| Replay::load(&args), serve_options(&args))
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
