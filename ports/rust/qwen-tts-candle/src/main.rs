//! `qwen-tts-candle`: the crates.io `qwen_tts` 0.1.1 port of Qwen3-TTS (candle, CPU) served to qtts-eval over
//! stdio through the port kit, as its user would call it: `ModelLoader::from_local_dir` on the released
//! checkpoint layout, `Model::create_voice_clone_prompt_from_audio` for the voice, and
//! `Model::generate_voice_clone_from_text` for the utterance.
//!
//! ```text
//! qwen-tts-candle --checkpoint DIR [--dump-dir DIR] [--threads N] [--model-ref REF] [--synthetic]
//! ```
//!
//! The crate returns whole utterances (no streaming API), so the audio is sent once the utterance exists and
//! hello says `delivery: whole`. What the suite asks is passed through: sampling (the code predictor's too, as
//! the reference's pipeline does), the prompt layout (`non_streaming_mode`, the reference's default false when
//! none is asked; the crate's own default for ICL is true), the seed. A budget of N frames is handed to the crate
//! as N - 1, because the crate yields exactly its budget and the reference N - 1. `--threads N` sets candle's
//! CPU thread count (`RAYON_NUM_THREADS`, read by candle and rayon); 0 leaves candle's default (every core).
//!
//! Parity dumps hold what the crate's public API exposes: the chat-template text ids, the clip, the speaker
//! mel and embedding, the clip's codes (ICL), and the prefill (prompt embeddings, final norm, first-frame
//! logits) recomputed through the crate's own public `build_prompt` and talker forward on the same inputs; then
//! the generated codes and the returned audio. A teacher-forced request's speaker embedding and reference codes
//! replace the crate's (its voice prompt is a plain struct); its generation loop takes no forced codes, so
//! those stay free and the header lists only what was taken. docs/ports.md has what the crate cannot do.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device, IndexOp, Tensor};
use qtts_port_kit::dump::{key, DumpMeta, DumpWriter, ForcedInput};
use qtts_port_kit::protocol::{Forced, CODEBOOKS, SAMPLES_PER_FRAME};
use qtts_port_kit::{
    serve_stdio, weights_hash, Capability, CloneMode, MarkStage, ServeOptions, SpeakError, SpeakRequest,
    Spoken, Utterance, Voice, Worker,
};
use qwen_tts::model::loader::{LoaderConfig, ModelLoader};
use qwen_tts::model::options::VoiceCloneOptions;
use qwen_tts::model::voice_clone::VoiceClonePromptItem;
use qwen_tts::model::{validate_language_value, Model};
use qwen_tts::nn::generation_options::GenerationOptions;
use serde_json::json;

/// The port this adapter serves, as pinned in Cargo.toml.
const PORT: &str = "qwen_tts 0.1.1";
/// Why ICL is refused when the crate loaded no codec encoder: it hard-codes an 8-layer encoder transformer
/// (`audio/encoder/v2.rs`), and on a load failure it only logs a warning and falls back to x-vector prompts.
const NO_ENCODER: &str = "the crate loaded no codec encoder for this checkpoint (it hard-codes an 8-layer \
                          encoder transformer and falls back to x-vector prompts without one), so it cannot \
                          build an ICL prompt";

type Frame = [i64; CODEBOOKS];

struct Args {
    checkpoint: PathBuf,
    dump_dir: Option<PathBuf>,
    threads: usize,
    model_ref: String,
    synthetic: bool,
}

struct CandlePort {
    model: Model,
    weights_hash: String,
    model_ref: String,
    synthetic: bool,
    threads: usize,
    /// The crate loaded its codec encoder: ICL prompts can be built from the clip.
    has_encoder: bool,
}

/// One utterance as the crate returned it.
struct Generated {
    codes: Vec<Frame>,
    /// The audio `generate_voice_clone_from_text` returned, 24 kHz.
    audio: Vec<f32>,
}

fn failed(error: impl Display) -> SpeakError {
    SpeakError::synthesis(error.to_string())
}

/// The reference's prompt layout when the request asks for none (its `non_streaming_mode=False` default).
fn layout(request: &SpeakRequest) -> bool {
    request.non_streaming_mode.unwrap_or(false)
}

impl CandlePort {
    fn load(args: &Args) -> Result<Self, String> {
        let hash =
            weights_hash(&args.checkpoint).map_err(|e| format!("{}: {e}", args.checkpoint.display()))?;
        let loader = ModelLoader::from_local_dir(&args.checkpoint).map_err(|e| e.to_string())?;
        let model = loader
            .load_tts_model(&Device::Cpu, &LoaderConfig::default())
            .map_err(|e| e.to_string())?;
        if !model.has_text_processor() {
            return Err(format!(
                "{}: the crate found no text tokenizer",
                args.checkpoint.display()
            ));
        }
        let has_encoder = model.audio_tokenizer().is_some_and(|t| t.has_encoder());
        Ok(CandlePort {
            model,
            weights_hash: hash,
            model_ref: args.model_ref.clone(),
            synthetic: args.synthetic,
            threads: candle_core::utils::get_num_threads(),
            has_encoder,
        })
    }

    fn refuse_unservable(&self, request: &SpeakRequest) -> Result<(), SpeakError> {
        validate_language_value(&request.language).map_err(|e| SpeakError::unsupported(e.to_string()))?;
        let forced_ref_codes = request.forced.as_ref().is_some_and(|f| f.ref_codes.is_some());
        if request.mode == CloneMode::Icl && !self.has_encoder && !forced_ref_codes {
            return Err(SpeakError::unsupported(NO_ENCODER));
        }
        Ok(())
    }

    /// The voice prompt as the crate builds it from the clip, with a forced speaker embedding and reference
    /// codes in place of the crate's own.
    fn voice_prompt(
        &mut self,
        request: &SpeakRequest,
        voice: &Voice,
        forced: Option<&Forced>,
    ) -> Result<VoiceClonePromptItem, SpeakError> {
        let icl = request.mode == CloneMode::Icl;
        let clip = Tensor::from_slice(&voice.audio, voice.audio.len(), &Device::Cpu).map_err(failed)?;
        let own = self
            .model
            .create_voice_clone_prompt_from_audio(&clip, icl.then(|| voice.text.clone()), !icl)
            .map_err(failed)?;
        let embedding = match forced.and_then(|f| f.spk_embedding.as_ref()) {
            Some(values) => Tensor::from_slice(values, values.len(), &Device::Cpu).map_err(failed)?,
            None => own.ref_spk_embedding,
        };
        if !icl {
            return Ok(VoiceClonePromptItem::x_vector_only(embedding));
        }
        let ref_codes = match forced.and_then(|f| f.ref_codes.as_ref()) {
            Some(rows) => codes_tensor(rows).map_err(failed)?,
            None => own.ref_code.ok_or_else(|| SpeakError::unsupported(NO_ENCODER))?,
        };
        Ok(VoiceClonePromptItem::icl(
            ref_codes,
            embedding,
            voice.text.clone(),
        ))
    }

    fn generate(
        &self,
        request: &SpeakRequest,
        prompt: &VoiceClonePromptItem,
    ) -> Result<Generated, SpeakError> {
        let sampling = &request.sampling;
        let top_k = usize::try_from(sampling.top_k.max(0)).unwrap_or(0);
        let options = VoiceCloneOptions {
            do_sample: Some(sampling.do_sample),
            top_k: Some(top_k),
            top_p: Some(sampling.top_p),
            temperature: Some(sampling.temperature),
            repetition_penalty: Some(sampling.repetition_penalty),
            subtalker_do_sample: Some(sampling.do_sample),
            subtalker_top_k: Some(top_k),
            subtalker_top_p: Some(sampling.top_p),
            subtalker_temperature: Some(sampling.temperature),
            // The crate yields its whole budget; the reference yields budget - 1 (its last step's frame is never
            // emitted). The crate always generates at least one frame.
            max_new_tokens: Some(request.max_frames.saturating_sub(1).max(1) as usize),
            non_streaming_mode: Some(layout(request)),
        };
        qwen_tts::nn::mt_rng::set_seed(request.seed as u64);
        let result = self
            .model
            .generate_voice_clone_from_text(&request.text, prompt, &request.language, Some(options))
            .map_err(failed)?;
        let steps = result
            .codes
            .ok_or_else(|| failed("the crate returned no codes"))?;
        let rows = steps
            .to_dtype(DType::U32)
            .and_then(|c| c.to_vec3::<u32>())
            .map_err(failed)?;
        let rows = rows.into_iter().next().unwrap_or_default();
        // Rows past the effective length are the EOS step's, which the crate does not decode either.
        let frames = result
            .effective_lengths
            .and_then(|lengths| lengths.first().copied())
            .unwrap_or(rows.len())
            .min(rows.len());
        let codes = rows[..frames]
            .iter()
            .map(|row| {
                let mut frame = [0; CODEBOOKS];
                for (code, value) in frame.iter_mut().zip(row) {
                    *code = i64::from(*value);
                }
                frame
            })
            .collect();
        let audio = result
            .audio
            .flatten_all()
            .and_then(|a| a.to_vec1::<f32>())
            .map_err(failed)?;
        Ok(Generated { codes, audio })
    }

    /// The talker's prefill on the prompt the crate builds for this request, through its public
    /// `ConditionalGeneration::build_prompt` and talker forward, with the options `generate_voice_clone_full`
    /// builds: (prompt embeddings [L, H], final norm [L, H], logits at the last position [1, V]).
    fn prefill(
        &self,
        request: &SpeakRequest,
        prompt: &VoiceClonePromptItem,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let processor = self
            .model
            .text_processor()
            .ok_or_else(|| candle_core::Error::Msg("no tokenizer".into()))?;
        let ids = processor.tokenize_for_tts(&request.text);
        let text_ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let ref_text_ids = match &prompt.ref_text {
            Some(text) => {
                let ids = processor.tokenize_ref_text(text);
                Some(Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?)
            }
            None => None,
        };
        let options = GenerationOptions {
            language: request.language.clone(),
            speaker: None,
            instruct: None,
            instruct_ids: None,
            non_streaming_mode: layout(request),
            speaker_embed: Some(prompt.ref_spk_embedding.unsqueeze(0)?),
            ref_codes: prompt.ref_code.clone(),
            ref_text_ids,
            x_vector_only_mode: prompt.x_vector_only_mode,
        };
        let generation = self.model.model();
        let (embeds, _, _) = generation.build_prompt(&text_ids, &options)?;
        let length = embeds.dim(1)?;
        let positions = generation.create_position_ids(length, 1)?;
        let mask = generation.create_causal_mask(length, embeds.dtype())?;
        let (logits, norm) = generation
            .get_talker()
            .forward(&embeds, &positions, Some(&mask))?;
        Ok((
            embeds.squeeze(0)?,
            norm.squeeze(0)?,
            logits.i((0, length - 1))?.unsqueeze(0)?,
        ))
    }

    /// The stage dump of one generation: what it took and computed, as the public API shows it.
    fn dump(
        &self,
        request: &SpeakRequest,
        voice: &Voice,
        prompt: &VoiceClonePromptItem,
        generated: Generated,
        path: &Path,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let forced = request.forced.as_ref();
        let mut meta =
            DumpMeta::for_request(request, format!("qwen-tts-candle over {PORT}"), layout(request));
        meta.versions = [
            ("qwen_tts".to_string(), "0.1.1".to_string()),
            (
                "qwen-tts-candle".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ]
        .into();
        // Only what the crate's prompt took: its generation loop has no forced codes.
        meta.forced = forced.map(taken).unwrap_or_default();
        meta.model_ref = Some(self.model_ref.clone());
        meta.weights_hash = Some(self.weights_hash.clone());
        let mut dump = DumpWriter::new(meta);
        let processor = self.model.text_processor().ok_or("no tokenizer")?;
        let ids: Vec<i64> = processor
            .tokenize_for_tts(&request.text)
            .into_iter()
            .map(i64::from)
            .collect();
        dump.i64(key::TEXT_IDS, &[ids.len()], ids)?;
        dump.f32(key::REF_AUDIO, &[voice.audio.len()], voice.audio.clone())?;
        if forced.and_then(|f| f.spk_embedding.as_ref()).is_none() {
            let clip = Tensor::from_slice(&voice.audio, voice.audio.len(), &Device::Cpu)?;
            let mel = self.model.compute_mel_spectrogram(&clip)?.squeeze(0)?;
            record(&mut dump, key::SPK_MEL, &mel)?;
        }
        record(&mut dump, key::SPK_EMBEDDING, &prompt.ref_spk_embedding)?;
        if let Some(ref_codes) = &prompt.ref_code {
            let ids: Vec<i64> = processor
                .tokenize_ref_text(&voice.text)
                .into_iter()
                .map(i64::from)
                .collect();
            dump.i64(key::REF_TEXT_IDS, &[ids.len()], ids)?;
            let rows = ref_codes.to_dtype(DType::I64)?;
            dump.i64(key::CODEC_ENC_CODES, rows.dims(), rows.flatten_all()?.to_vec1()?)?;
        }
        let (embeds, norm, logits) = self.prefill(request, prompt)?;
        record(&mut dump, key::TALKER_PREFILL_EMBEDS, &embeds)?;
        record(&mut dump, key::TALKER_PREFILL_NORM, &norm)?;
        record(&mut dump, key::TALKER_LOGITS, &logits)?;
        dump.codes(key::CODES, &generated.codes)?;
        dump.f32(key::OUTPUT_WAV, &[generated.audio.len()], generated.audio)?;
        dump.write(path)?;
        Ok(())
    }
}

/// The audio as the wire carries it: exactly 1920 samples per generated frame. The crate's decoder returns fewer
/// (it trims its transposed convolutions on both sides, the official only on the right: 555 samples short,
/// docs/ports.md), so the end is padded with zeros; in ICL its proportional cut of the clip's share rounds down
/// as the official's does and can leave a sample of the clip at the start, which is dropped. Stage dumps keep
/// the audio as the crate returned it.
fn whole_frames(generated: &Generated) -> Vec<f32> {
    let expected = generated.codes.len() * SAMPLES_PER_FRAME;
    let audio = &generated.audio;
    let mut whole = audio[audio.len().saturating_sub(expected)..].to_vec();
    if whole.len() < expected {
        eprintln!(
            "qwen-tts-candle: the crate returned {} samples for {} frames; padding {} zeros at the end",
            audio.len(),
            generated.codes.len(),
            expected - whole.len()
        );
        whole.resize(expected, 0.0);
    }
    whole
}

/// The forced inputs the crate's voice prompt takes (never `codes`).
fn taken(forced: &Forced) -> Vec<ForcedInput> {
    ForcedInput::of(forced)
        .into_iter()
        .filter(|input| *input != ForcedInput::Codes)
        .collect()
}

fn codes_tensor(rows: &[Frame]) -> candle_core::Result<Tensor> {
    // u32, as the crate's generated codes are: its ICL decode concatenates the two.
    let flat: Vec<u32> = rows.iter().flatten().map(|&code| code as u32).collect();
    Tensor::from_vec(flat, (rows.len(), CODEBOOKS), &Device::Cpu)
}

fn record(dump: &mut DumpWriter, name: &str, tensor: &Tensor) -> Result<(), Box<dyn std::error::Error>> {
    let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    dump.f32(name, tensor.dims(), values)?;
    Ok(())
}

impl Worker for CandlePort {
    fn capabilities(&self) -> Vec<Capability> {
        // forced_codes: the speaker embedding and reference codes are taken; the generated codes stay free.
        vec![
            Capability::StageDumps,
            Capability::ForcedCodes,
            Capability::SeededSampling,
        ]
    }

    fn implementation(&self) -> serde_json::Value {
        json!({
            "name": "qwen-tts-candle",
            "version": env!("CARGO_PKG_VERSION"),
            "port": PORT,
            "model_ref": self.model_ref,
            "weights_hash": self.weights_hash,
            "synthetic": self.synthetic,
            "dtype": "float32",
            "device": "cpu",
            "delivery": "whole",
            "threads": self.threads,
            "codec_encoder": self.has_encoder,
            // The wire needs 1920 samples per frame; the crate's decoder returns fewer (whole_frames).
            "audio_end_padded": true,
            "work": {
                "prompt": "built",
                "delivery": "whole",
                "budget_convention": "n_minus_1",
                "instrumentation": "none",
                "threads": self.threads,
                "talker_precision": "float32",
                "codec_precision": "float32",
            },
        })
    }

    fn speak(
        &mut self,
        request: &SpeakRequest,
        voice: &Voice,
        out: &mut Utterance<'_>,
    ) -> Result<Spoken, SpeakError> {
        self.refuse_unservable(request)?;
        let prompt = self.voice_prompt(request, voice, None)?;
        out.mark(MarkStage::PromptReady)?;
        let generated = self.generate(request, &prompt)?;
        for frame in whole_frames(&generated).chunks(SAMPLES_PER_FRAME) {
            out.audio(frame)?;
        }
        Ok(Spoken {
            frames_generated: generated.codes.len() as u64,
            codes: Some(generated.codes),
        })
    }

    fn write_dump(&mut self, request: &SpeakRequest, voice: &Voice, path: &Path) -> Result<(), SpeakError> {
        self.refuse_unservable(request)?;
        let prompt = self.voice_prompt(request, voice, request.forced.as_ref())?;
        let generated = self.generate(request, &prompt)?;
        self.dump(request, voice, &prompt, generated, path)
            .map_err(failed)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        checkpoint: PathBuf::new(),
        dump_dir: None,
        threads: 0,
        model_ref: String::new(),
        synthetic: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--checkpoint" => args.checkpoint = value()?.into(),
            "--dump-dir" => args.dump_dir = Some(value()?.into()),
            "--threads" => {
                let text = value()?;
                args.threads = text
                    .parse()
                    .map_err(|_| format!("--threads {text:?} is not a count"))?;
            }
            "--model-ref" => args.model_ref = value()?,
            "--synthetic" => args.synthetic = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.checkpoint.as_os_str().is_empty() {
        return Err("--checkpoint DIR (a checkpoint in the released layout) is required".into());
    }
    if args.model_ref.is_empty() {
        args.model_ref = args.checkpoint.display().to_string();
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if args.threads > 0 {
        // Before any thread exists: candle reads it per kernel, rayon when its pool is built.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    let options = ServeOptions {
        dump_dir: args.dump_dir.clone(),
    };
    match serve_stdio(|| CandlePort::load(&args), options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
