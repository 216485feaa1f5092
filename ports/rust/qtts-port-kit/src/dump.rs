//! Parity stage dumps (docs/parity.md): one safetensors file per (request, side), keys from a fixed schema,
//! floating stages stored as float32 and ids/codes as int64, and a JSON header in `__metadata__["qtts_parity"]`.
//!
//! `DumpWriter` refuses a key outside the schema and a tensor of the wrong kind or size, so a dump written
//! through it is valid by construction; `read_dump` reads any implementation's dump (the replay example
//! reads the reference's).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

/// Header and key-schema version written; version 1 headers are read and migrated (`forced` was a bool), any
/// other version is refused, never guessed.
pub const SCHEMA_VERSION: u32 = 2;
/// The safetensors `__metadata__` entry that holds the JSON header.
pub const METADATA_KEY: &str = "qtts_parity";

/// How a stage's tensor is stored and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// Exact integer ids (token ids, decoder input codes): int64.
    Ids,
    /// Activations: float32, compared by relative L2 and cosine.
    Tensor,
    /// Logits: float32, compared by KL and top-1 agreement as well.
    Logits,
    /// Codec codes [T, 16]: int64, compared exactly per codebook.
    Codes,
    /// A reference-side diagnostic (decision margins): float32.
    Margin,
    /// Waveforms: float32 at 24 kHz.
    Audio,
}

impl StageKind {
    /// True for kinds stored as int64.
    pub fn integral(self) -> bool {
        matches!(self, StageKind::Ids | StageKind::Codes)
    }
}

/// Key patterns of the schema in pipeline order (`*` stands for an index or a name), with their kind.
/// Mirrors `qtts_eval.parity.dumps.STAGES`; the cross-language tests read every key Rust writes back in Python.
pub const STAGES: &[(&str, StageKind)] = &[
    ("inputs.text_ids", StageKind::Ids),
    ("inputs.ref_text_ids", StageKind::Ids),
    ("inputs.ref_audio", StageKind::Tensor),
    ("spk.mel", StageKind::Tensor),
    ("spk.block.*", StageKind::Tensor),
    ("spk.embedding", StageKind::Tensor),
    ("codec_enc.input", StageKind::Tensor),
    ("codec_enc.latent", StageKind::Tensor),
    ("codec_enc.rvq_in.*", StageKind::Tensor),
    ("codec_enc.margin", StageKind::Margin),
    ("codec_enc.codes", StageKind::Codes),
    ("talker.prefill.embeds", StageKind::Tensor),
    ("talker.prefill.layer.*", StageKind::Tensor),
    ("talker.prefill.norm", StageKind::Tensor),
    ("talker.logits", StageKind::Logits),
    ("code_predictor.logits", StageKind::Logits),
    ("codes", StageKind::Codes),
    ("codec_dec.codes", StageKind::Ids),
    ("codec_dec.dequant", StageKind::Tensor),
    ("codec_dec.pre_conv", StageKind::Tensor),
    ("codec_dec.pre_transformer", StageKind::Tensor),
    ("codec_dec.upsample.*", StageKind::Tensor),
    ("codec_dec.block.*", StageKind::Tensor),
    ("codec_dec.wav", StageKind::Audio),
    ("output.wav", StageKind::Audio),
];

/// Keys of the schema, for a port's code (indexed keys have functions below).
pub mod key {
    pub const TEXT_IDS: &str = "inputs.text_ids";
    pub const REF_TEXT_IDS: &str = "inputs.ref_text_ids";
    pub const REF_AUDIO: &str = "inputs.ref_audio";
    pub const SPK_MEL: &str = "spk.mel";
    pub const SPK_EMBEDDING: &str = "spk.embedding";
    pub const CODEC_ENC_INPUT: &str = "codec_enc.input";
    pub const CODEC_ENC_LATENT: &str = "codec_enc.latent";
    pub const CODEC_ENC_RVQ_IN_SEMANTIC: &str = "codec_enc.rvq_in.semantic";
    pub const CODEC_ENC_RVQ_IN_ACOUSTIC: &str = "codec_enc.rvq_in.acoustic";
    pub const CODEC_ENC_CODES: &str = "codec_enc.codes";
    pub const TALKER_PREFILL_EMBEDS: &str = "talker.prefill.embeds";
    pub const TALKER_PREFILL_NORM: &str = "talker.prefill.norm";
    pub const TALKER_LOGITS: &str = "talker.logits";
    pub const CODE_PREDICTOR_LOGITS: &str = "code_predictor.logits";
    pub const CODES: &str = "codes";
    pub const CODEC_DEC_CODES: &str = "codec_dec.codes";
    pub const CODEC_DEC_DEQUANT: &str = "codec_dec.dequant";
    pub const CODEC_DEC_PRE_CONV: &str = "codec_dec.pre_conv";
    pub const CODEC_DEC_PRE_TRANSFORMER: &str = "codec_dec.pre_transformer";
    pub const CODEC_DEC_WAV: &str = "codec_dec.wav";
    pub const OUTPUT_WAV: &str = "output.wav";

    /// `spk.block.NN`: output of `speaker_encoder.blocks[NN]`.
    pub fn spk_block(index: usize) -> String {
        format!("spk.block.{index:02}")
    }
    /// `talker.prefill.layer.NN`: output of `talker.model.layers[NN]` at prefill.
    pub fn talker_prefill_layer(index: usize) -> String {
        format!("talker.prefill.layer.{index:02}")
    }
    /// `codec_dec.upsample.NN`: output of the decoder's `upsample[NN]`.
    pub fn codec_dec_upsample(index: usize) -> String {
        format!("codec_dec.upsample.{index:02}")
    }
    /// `codec_dec.block.NN`: output of the decoder's `decoder[NN]`.
    pub fn codec_dec_block(index: usize) -> String {
        format!("codec_dec.block.{index:02}")
    }
}

/// The schema entry of a key, or None for a key outside the schema.
pub fn stage_kind(key: &str) -> Option<StageKind> {
    STAGES
        .iter()
        .find(|(pattern, _)| matches_pattern(pattern, key))
        .map(|&(_, kind)| kind)
}

fn matches_pattern(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
        None => pattern == key,
    }
}

/// An input a teacher-forced run takes from the reference dump instead of computing it; its JSON name is the
/// dump key it is read from (`qtts_eval.pipelines.base.ForcedInput`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ForcedInput {
    /// The speaker embedding, replacing the speaker encoder's.
    #[serde(rename = "spk.embedding")]
    SpkEmbedding,
    /// The reference-audio codes (ICL), replacing the codec encoder's.
    #[serde(rename = "codec_enc.codes")]
    RefCodes,
    /// The generated codes, forced frame by frame into the talker and code predictor.
    #[serde(rename = "codes")]
    Codes,
}

impl ForcedInput {
    /// Every forced input, in schema order.
    pub const ALL: [ForcedInput; 3] = [
        ForcedInput::SpkEmbedding,
        ForcedInput::RefCodes,
        ForcedInput::Codes,
    ];

    /// The dump key (and header name) of this input.
    pub fn as_str(self) -> &'static str {
        match self {
            ForcedInput::SpkEmbedding => "spk.embedding",
            ForcedInput::RefCodes => "codec_enc.codes",
            ForcedInput::Codes => "codes",
        }
    }

    /// The inputs a forced wire request replaces, in schema order (what the header records).
    pub fn of(forced: &crate::protocol::Forced) -> Vec<ForcedInput> {
        let given = [
            (ForcedInput::SpkEmbedding, forced.spk_embedding.is_some()),
            (ForcedInput::RefCodes, forced.ref_codes.is_some()),
            (ForcedInput::Codes, forced.codes.is_some()),
        ];
        given.into_iter().filter(|&(_, on)| on).map(|(f, _)| f).collect()
    }
}

/// TF32 switches of the run (all false on CPU).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tf32 {
    pub matmul: bool,
    pub cudnn: bool,
}

/// Decoding settings as the header records them (must match the reference's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSampling {
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: i64,
    pub top_p: f64,
    pub repetition_penalty: f64,
}

impl From<&crate::protocol::Sampling> for HeaderSampling {
    fn from(s: &crate::protocol::Sampling) -> Self {
        HeaderSampling {
            do_sample: s.do_sample,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
        }
    }
}

/// The dump header (docs/parity.md, "Header"); the suite refuses to compare when a "must match" field differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpMeta {
    /// Who wrote the dump, e.g. "my-candle-port 0.3".
    pub implementation: String,
    /// Crate or package versions that shaped the numbers.
    pub versions: BTreeMap<String, String>,
    /// Computing dtype of the talker: float32, bfloat16, float16 or a quantisation name (chooses the profile).
    pub dtype: String,
    /// Dtype of the speech tokenizer (codec encoder and decoder).
    pub codec_dtype: String,
    /// e.g. "cpu", "cuda:0".
    pub device: String,
    /// Attention implementation, in the port's own words.
    pub attn_implementation: String,
    pub tf32: Tf32,
    /// Seed set right before generation.
    pub seed: i64,
    /// Must match.
    pub sampling: HeaderSampling,
    /// Must match: "icl" or "xvector".
    pub clone_mode: String,
    /// Must match: the talker prompt layout.
    pub non_streaming_mode: bool,
    /// Must match: text spoken.
    pub text: String,
    /// Must match: language argument.
    pub language: String,
    /// Must match: frame budget.
    pub max_frames: u64,
    /// Inputs taken from the reference dump, in schema order; empty for a free-running dump.
    pub forced: Vec<ForcedInput>,
    /// Checkpoint the dump came from (path, preset or hub id), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ref: Option<String>,
    /// sha256 of the checkpoint's safetensors files (`qtts-eval checkpoint REF --json`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_hash: Option<String>,
    /// Fixture voice whose clip and transcript were the reference, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Header and key-schema version.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Key -> dtype before float32 storage.
    #[serde(default)]
    pub stored_dtypes: BTreeMap<String, String>,
}

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

impl DumpMeta {
    /// A header for one `speak`: the request fields filled in; the port fills in who and how.
    pub fn for_request(
        request: &crate::protocol::SpeakRequest,
        implementation: impl Into<String>,
        non_streaming_mode: bool,
    ) -> Self {
        DumpMeta {
            implementation: implementation.into(),
            versions: BTreeMap::new(),
            dtype: "float32".into(),
            codec_dtype: "float32".into(),
            device: "cpu".into(),
            attn_implementation: "eager".into(),
            tf32: Tf32::default(),
            seed: request.seed,
            sampling: HeaderSampling::from(&request.sampling),
            clone_mode: request.mode.as_str().into(),
            non_streaming_mode,
            text: request.text.clone(),
            language: request.language.clone(),
            max_frames: request.max_frames,
            forced: request.forced.as_ref().map(ForcedInput::of).unwrap_or_default(),
            model_ref: None,
            weights_hash: None,
            voice: None,
            schema_version: SCHEMA_VERSION,
            stored_dtypes: BTreeMap::new(),
        }
    }
}

/// A dump that cannot be written or read, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpError(pub String);

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DumpError {}

/// Values of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor of a dump: its shape (batch dimension removed) and values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A floating tensor; `values` row-major with `shape`.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Tensor {
            shape,
            data: TensorData::F32(values),
        }
    }

    /// An integer tensor (ids, codes).
    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        Tensor {
            shape,
            data: TensorData::I64(values),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Collects a port's stage tensors and writes them as one dump.
#[derive(Clone, Debug)]
pub struct DumpWriter {
    pub meta: DumpMeta,
    tensors: BTreeMap<String, Tensor>,
}

impl DumpWriter {
    pub fn new(meta: DumpMeta) -> Self {
        DumpWriter {
            meta,
            tensors: BTreeMap::new(),
        }
    }

    /// Add a floating stage (activations, logits, audio); `values` is row-major with `shape`.
    pub fn f32(&mut self, key: &str, shape: &[usize], values: Vec<f32>) -> Result<&mut Self, DumpError> {
        self.insert(key, Tensor::f32(shape.to_vec(), values))
    }

    /// Add an integer stage (token ids, codes).
    pub fn i64(&mut self, key: &str, shape: &[usize], values: Vec<i64>) -> Result<&mut Self, DumpError> {
        self.insert(key, Tensor::i64(shape.to_vec(), values))
    }

    /// The tensors added so far, by key.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Add codes [frames][16] under `key` (`codes` or `codec_enc.codes`).
    pub fn codes(
        &mut self,
        key: &str,
        codes: &[[i64; crate::protocol::CODEBOOKS]],
    ) -> Result<&mut Self, DumpError> {
        let flat = codes.iter().flatten().copied().collect();
        self.i64(key, &[codes.len(), crate::protocol::CODEBOOKS], flat)
    }

    /// Add a tensor, checked against the schema: known key, int64 for ids and codes, float32 otherwise.
    pub fn insert(&mut self, key: &str, tensor: Tensor) -> Result<&mut Self, DumpError> {
        let kind = stage_kind(key).ok_or_else(|| {
            DumpError(format!(
                "dump key {key:?} is not in the parity key schema (see docs/parity.md)"
            ))
        })?;
        let integral = matches!(tensor.data, TensorData::I64(_));
        if integral != kind.integral() {
            let wanted = if kind.integral() { "int64" } else { "float32" };
            return Err(DumpError(format!(
                "dump key {key:?} holds {kind:?} values, stored as {wanted}"
            )));
        }
        let elements: usize = tensor.shape.iter().product();
        if elements != tensor.len() {
            return Err(DumpError(format!(
                "dump key {key:?}: shape {:?} holds {elements} values, {} given",
                tensor.shape,
                tensor.len()
            )));
        }
        self.tensors.insert(key.to_owned(), tensor);
        Ok(self)
    }

    /// Write the dump to `path` (parent directories are created).
    pub fn write(&self, path: &Path) -> Result<(), DumpError> {
        let header =
            serde_json::to_string(&sorted_json(&self.meta)?).map_err(|e| DumpError(e.to_string()))?;
        let buffers: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(key, t)| {
                let dtype = if matches!(t.data, TensorData::I64(_)) {
                    Dtype::I64
                } else {
                    Dtype::F32
                };
                (key.clone(), t.to_le_bytes(), dtype, t.shape.clone())
            })
            .collect();
        let mut views = Vec::with_capacity(buffers.len());
        for (key, bytes, dtype, shape) in &buffers {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| DumpError(format!("{key}: {e:?}")))?;
            views.push((key.clone(), view));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DumpError(format!("{}: {e}", parent.display())))?;
        }
        let metadata = HashMap::from([(METADATA_KEY.to_owned(), header)]);
        safetensors::serialize_to_file(views, &Some(metadata), path)
            .map_err(|e| DumpError(format!("{}: {e:?}", path.display())))
    }
}

/// The header as a JSON object with sorted keys at every level (as the suite writes it).
fn sorted_json(meta: &DumpMeta) -> Result<serde_json::Value, DumpError> {
    // serde_json's Map is a BTreeMap (no preserve_order feature): converting through Value sorts the keys.
    serde_json::to_value(meta).map_err(|e| DumpError(e.to_string()))
}

/// A JSON header of schema version 2, or of version 1 migrated to 2 as the suite does (`forced: true` meant
/// every input in ICL mode, speaker embedding and codes in x-vector mode); other versions are refused.
pub fn parse_header(header: &str) -> Result<DumpMeta, String> {
    let malformed = |e: &dyn fmt::Display| format!("malformed {METADATA_KEY:?} header: {e}");
    let mut fields: serde_json::Value = serde_json::from_str(header).map_err(|e| malformed(&e))?;
    let object = fields
        .as_object_mut()
        .ok_or_else(|| malformed(&"not a JSON object"))?;
    let version = match object.get("schema_version") {
        None => u64::from(SCHEMA_VERSION),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| malformed(&"schema_version is not a number"))?,
    };
    match version {
        1 => {
            let all = object
                .get("forced")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| malformed(&"a version 1 header's forced must be true or false"))?;
            let icl = object.get("clone_mode").and_then(serde_json::Value::as_str) == Some("icl");
            let forced: Vec<&str> = ForcedInput::ALL
                .into_iter()
                .filter(|&f| all && (icl || f != ForcedInput::RefCodes))
                .map(ForcedInput::as_str)
                .collect();
            object.insert("forced".into(), serde_json::json!(forced));
            object.insert("schema_version".into(), serde_json::json!(SCHEMA_VERSION));
        }
        v if v == u64::from(SCHEMA_VERSION) => {}
        v => {
            return Err(format!(
                "schema version {v} is not one this kit reads (1 or {SCHEMA_VERSION})"
            ))
        }
    }
    serde_json::from_value(fields).map_err(|e| malformed(&e))
}

/// A dump read back: header and tensors by key.
#[derive(Clone, Debug, PartialEq)]
pub struct Dump {
    pub meta: DumpMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Read a dump written by any implementation; a missing header, a newer schema or an unknown key is refused.
pub fn read_dump(path: &Path) -> Result<Dump, DumpError> {
    let bytes = std::fs::read(path).map_err(|e| DumpError(format!("{}: {e}", path.display())))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        DumpError(format!(
            "{}: not a readable safetensors file: {e:?}",
            path.display()
        ))
    })?;
    let header = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| DumpError(format!("{}: no {METADATA_KEY:?} metadata header", path.display())))?;
    let meta = parse_header(header).map_err(|e| DumpError(format!("{}: {e}", path.display())))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        DumpError(format!(
            "{}: not a readable safetensors file: {e:?}",
            path.display()
        ))
    })?;
    let mut tensors = BTreeMap::new();
    for (key, view) in file.tensors() {
        if stage_kind(&key).is_none() {
            return Err(DumpError(format!(
                "{}: dump key {key:?} is not in the parity key schema",
                path.display()
            )));
        }
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::I64 => TensorData::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
            other => {
                return Err(DumpError(format!(
                    "{}: {key} is {other:?}; dumps hold float32 and int64",
                    path.display()
                )))
            }
        };
        tensors.insert(
            key,
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(Dump { meta, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_patterns_match_indexed_keys() {
        assert_eq!(stage_kind(&key::talker_prefill_layer(7)), Some(StageKind::Tensor));
        assert_eq!(stage_kind("codes"), Some(StageKind::Codes));
        assert_eq!(stage_kind("talker.prefill.layer."), None);
        assert_eq!(stage_kind("talker.logit"), None);
    }

    #[test]
    fn writer_refuses_what_the_suite_would() {
        let request = crate::protocol::SpeakRequest {
            text: "hi".into(),
            language: "english".into(),
            mode: crate::protocol::CloneMode::Xvector,
            max_frames: 4,
            seed: 0,
            sampling: Default::default(),
            return_codes: true,
            non_streaming_mode: None,
            dump_path: None,
            forced: None,
        };
        let mut writer = DumpWriter::new(DumpMeta::for_request(&request, "test", false));
        assert!(writer
            .f32("talker.logit", &[1], vec![0.0])
            .unwrap_err()
            .0
            .contains("not in the parity key schema"));
        assert!(writer
            .f32(key::CODES, &[1], vec![0.0])
            .unwrap_err()
            .0
            .contains("int64"));
        assert!(writer
            .f32(key::OUTPUT_WAV, &[3], vec![0.0])
            .unwrap_err()
            .0
            .contains("holds 3 values"));
        writer.codes(key::CODES, &[[1; 16], [2; 16]]).unwrap();
        writer.f32(key::OUTPUT_WAV, &[2], vec![0.5, -0.5]).unwrap();
        let path =
            std::env::temp_dir().join(format!("qtts-port-kit-dump-{}.safetensors", std::process::id()));
        writer.write(&path).unwrap();
        let dump = read_dump(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(dump.meta, writer.meta);
        assert_eq!(dump.tensors["codes"].shape, [2, 16]);
        assert_eq!(dump.tensors["output.wav"].data, TensorData::F32(vec![0.5, -0.5]));
    }

    fn parity_request(forced: Option<crate::protocol::Forced>) -> crate::protocol::SpeakRequest {
        crate::protocol::SpeakRequest {
            text: "hi".into(),
            language: "english".into(),
            mode: crate::protocol::CloneMode::Icl,
            max_frames: 4,
            seed: 0,
            sampling: Default::default(),
            return_codes: false,
            non_streaming_mode: None,
            dump_path: Some("d.safetensors".into()),
            forced,
        }
    }

    #[test]
    fn header_version_2_lists_the_forced_inputs_and_leaves_out_unknown_optionals() {
        let partial = crate::protocol::Forced {
            codes: Some(vec![[0; 16]]),
            spk_embedding: Some(vec![0.5]),
            ..Default::default()
        };
        let mut meta = DumpMeta::for_request(&parity_request(Some(partial)), "test", false);
        assert_eq!(meta.forced, [ForcedInput::SpkEmbedding, ForcedInput::Codes]);
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(json["forced"], serde_json::json!(["spk.embedding", "codes"]));
        assert_eq!(json["schema_version"], 2);
        assert!(json.get("voice").is_none() && json.get("weights_hash").is_none());
        assert_eq!(parse_header(&json.to_string()).unwrap(), meta);
        assert!(DumpMeta::for_request(&parity_request(None), "test", false)
            .forced
            .is_empty());

        meta.voice = Some("slt".into());
        meta.weights_hash = Some("ab".repeat(32));
        meta.model_ref = Some("tiny".into());
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            (json["voice"].as_str(), json["model_ref"].as_str()),
            (Some("slt"), Some("tiny"))
        );
        assert_eq!(parse_header(&json.to_string()).unwrap(), meta);
        // null optionals, as some writers put them, read as absent.
        let mut with_nulls = json.clone();
        with_nulls["voice"] = serde_json::Value::Null;
        assert_eq!(parse_header(&with_nulls.to_string()).unwrap().voice, None);

        let mut unknown = json.clone();
        unknown["forced"] = serde_json::json!(["talker.logits"]);
        assert!(parse_header(&unknown.to_string())
            .unwrap_err()
            .contains("malformed"));
        let mut newer = json;
        newer["schema_version"] = serde_json::json!(3);
        assert!(parse_header(&newer.to_string())
            .unwrap_err()
            .contains("schema version 3"));
    }

    #[test]
    fn header_version_1_is_migrated_as_the_suite_does() {
        let mut json =
            serde_json::to_value(DumpMeta::for_request(&parity_request(None), "old", false)).unwrap();
        json["schema_version"] = serde_json::json!(1);
        json["forced"] = serde_json::json!(true);
        assert_eq!(parse_header(&json.to_string()).unwrap().forced, ForcedInput::ALL);
        json["clone_mode"] = serde_json::json!("xvector");
        let xvector = parse_header(&json.to_string()).unwrap();
        assert_eq!(xvector.forced, [ForcedInput::SpkEmbedding, ForcedInput::Codes]);
        assert_eq!(xvector.schema_version, SCHEMA_VERSION);
        json["forced"] = serde_json::json!(false);
        assert!(parse_header(&json.to_string()).unwrap().forced.is_empty());
        json["forced"] = serde_json::json!(["codes"]);
        assert!(parse_header(&json.to_string()).is_err());
    }
}
