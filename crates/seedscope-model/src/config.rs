//! Hugging Face `config.json` for the two architectures Seedscope runs.
//!
//! Field names follow the Hugging Face configs (`n_embd`, `rotary_pct`, …) so that a reader can
//! hold this file next to `configuration_gpt2.py` / `configuration_gpt_neox.py`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`): GPT-2.
    GeluTanh,
    /// exact erf GELU (`gelu`): GPT-NeoX / Pythia.
    GeluErf,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parse a Hugging Face `activation_function` / `hidden_act` value.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "gelu" => Some(Self::GeluErf),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    /// The name Hugging Face uses for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::GeluTanh => "gelu_new",
            Self::GeluErf => "gelu",
            Self::Relu => "relu",
        }
    }
}

/// GPT-2 (`GPT2LMHeadModel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length (rows of `wpe`).
    pub n_positions: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// MLP width; `null` in the file means `4 * n_embd`.
    pub n_inner: Option<usize>,
    /// MLP non-linearity (`activation_function`).
    pub activation: Activation,
    /// `layer_norm_epsilon`.
    pub layer_norm_epsilon: f64,
    /// Divide attention scores by sqrt(head_dim).
    pub scale_attn_weights: bool,
    /// Stanford CRFM flag: also divide attention scores by `layer_idx + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Stanford CRFM flag: compute attention scores in f32 with the scale applied before the
    /// product. Seedscope always computes attention in f32, so this changes only rounding.
    pub reorder_and_upcast_attn: bool,
}

impl Gpt2Config {
    /// Width of the MLP (number of neurons per layer).
    pub fn d_mlp(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// GPT-NeoX / Pythia (`GPTNeoXForCausalLM`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeoXConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP non-linearity (`hidden_act`).
    pub activation: Activation,
    /// Fraction of each head's dimensions that are rotated (`rotary_pct`, also spelled
    /// `partial_rotary_factor` or inside `rope_parameters`).
    pub rotary_pct: f64,
    /// Rotary base (`rotary_emb_base`, also `rope_theta`).
    pub rotary_emb_base: f64,
    /// Context length.
    pub max_position_embeddings: usize,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
    /// `x + attn(ln1 x) + mlp(ln2 x)` instead of the sequential residual.
    pub use_parallel_residual: bool,
    /// Whether the attention projections have biases.
    pub attention_bias: bool,
    /// Whether `embed_out` is tied to `embed_in`.
    pub tie_word_embeddings: bool,
}

impl NeoXConfig {
    /// Dimensions per head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of rotated dimensions per head (`int(head_dim * rotary_pct)`, as transformers).
    pub fn rotary_ndims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }
}

/// A supported architecture with its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelConfig {
    /// GPT-2.
    Gpt2(Gpt2Config),
    /// GPT-NeoX / Pythia.
    NeoX(NeoXConfig),
}

impl ModelConfig {
    /// Number of blocks.
    pub fn n_layers(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_layer,
            Self::NeoX(c) => c.num_hidden_layers,
        }
    }

    /// Neurons per MLP layer.
    pub fn d_mlp(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.d_mlp(),
            Self::NeoX(c) => c.intermediate_size,
        }
    }

    /// Residual width.
    pub fn d_model(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_embd,
            Self::NeoX(c) => c.hidden_size,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::NeoX(c) => c.vocab_size,
        }
    }

    /// Longest sequence the model accepts (the trained context for rotary models).
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::NeoX(c) => c.max_position_embeddings,
        }
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_path_buf(),
                    what: "Hugging Face config.json",
                }
            } else {
                ModelError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parse and validate a config given as JSON text; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let fields = Fields {
            value: &value,
            path,
        };
        let model_type = fields.str("model_type", None)?;
        let config = match model_type.as_str() {
            "gpt2" => Self::Gpt2(gpt2_from(&fields)?),
            "gpt_neox" => Self::NeoX(neox_from(&fields)?),
            other => {
                return Err(fields.unsupported(format!(
                    "model_type `{other}` (Seedscope runs `gpt2` and `gpt_neox`)"
                )));
            }
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |message: String| ModelError::Unsupported {
            path: path.to_path_buf(),
            message,
        };
        let (d, heads) = match self {
            Self::Gpt2(c) => (c.n_embd, c.n_head),
            Self::NeoX(c) => (c.hidden_size, c.num_attention_heads),
        };
        let sizes = [
            ("vocab_size", self.vocab_size()),
            ("hidden size", d),
            ("layers", self.n_layers()),
            ("heads", heads),
            ("MLP width", self.d_mlp()),
        ];
        for (name, size) in sizes {
            if size == 0 {
                return Err(unsupported(format!("{name} is 0")));
            }
        }
        if d % heads != 0 {
            return Err(unsupported(format!(
                "hidden size {d} is not divisible by {heads} heads"
            )));
        }
        if let Self::NeoX(c) = self {
            if !(0.0..=1.0).contains(&c.rotary_pct) {
                return Err(unsupported(format!(
                    "rotary_pct {} is outside [0, 1]",
                    c.rotary_pct
                )));
            }
            if c.rotary_ndims() % 2 != 0 {
                return Err(unsupported(format!(
                    "{} rotary dimensions per head is odd",
                    c.rotary_ndims()
                )));
            }
            if c.rotary_emb_base <= 0.0 {
                return Err(unsupported(format!(
                    "rotary base {} is not positive",
                    c.rotary_emb_base
                )));
            }
        }
        Ok(())
    }
}

/// Typed access to config fields with errors that name the file and field.
struct Fields<'a> {
    value: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn invalid(&self, key: &str, want: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            message: format!("field `{key}` must be {want}"),
        }
    }

    fn unsupported(&self, message: String) -> ModelError {
        ModelError::Unsupported {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            None => default.ok_or_else(|| self.invalid(key, "present (a non-negative integer)")),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.invalid(key, "a non-negative integer")),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.usize(key, None)).transpose()
    }

    fn f64(&self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            None => default.ok_or_else(|| self.invalid(key, "present (a number)")),
            Some(v) => v.as_f64().ok_or_else(|| self.invalid(key, "a number")),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.invalid(key, "true or false")),
        }
    }

    fn str(&self, key: &str, default: Option<&str>) -> Result<String> {
        match self.get(key) {
            None => default
                .map(str::to_owned)
                .ok_or_else(|| self.invalid(key, "present (a string)")),
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.invalid(key, "a string")),
        }
    }

    fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.str(key, Some(default))?;
        Activation::from_hf(&name).ok_or_else(|| {
            self.unsupported(format!(
                "{key} `{name}` (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)"
            ))
        })
    }
}

fn gpt2_from(f: &Fields) -> Result<Gpt2Config> {
    if !f.bool("tie_word_embeddings", true)? {
        return Err(f.unsupported(
            "tie_word_embeddings false for gpt2 (GPT-2's unembedding is tied)".into(),
        ));
    }
    if f.bool("add_cross_attention", false)? {
        return Err(f.unsupported("add_cross_attention for gpt2".into()));
    }
    Ok(Gpt2Config {
        vocab_size: f.usize("vocab_size", None)?,
        n_positions: f.usize("n_positions", Some(1024))?,
        n_embd: f.usize("n_embd", None)?,
        n_layer: f.usize("n_layer", None)?,
        n_head: f.usize("n_head", None)?,
        n_inner: f.opt_usize("n_inner")?,
        activation: f.activation("activation_function", "gelu_new")?,
        layer_norm_epsilon: f.f64("layer_norm_epsilon", Some(1e-5))?,
        scale_attn_weights: f.bool("scale_attn_weights", true)?,
        scale_attn_by_inverse_layer_idx: f.bool("scale_attn_by_inverse_layer_idx", false)?,
        reorder_and_upcast_attn: f.bool("reorder_and_upcast_attn", false)?,
    })
}

fn neox_from(f: &Fields) -> Result<NeoXConfig> {
    // Rotary settings have three spellings across transformers versions: `rotary_pct` and
    // `rotary_emb_base` (Pythia's own configs), `partial_rotary_factor` and `rope_theta`, and
    // since transformers 4.56 a `rope_parameters` object holding the latter two.
    let rope = f.get("rope_parameters");
    let rope_field = |key: &str| rope.and_then(|r| r.get(key)).filter(|v| !v.is_null());
    if let Some(kind) = rope_field("rope_type").and_then(Value::as_str)
        && kind != "default"
    {
        return Err(f.unsupported(format!("rope_type `{kind}` (only `default`)")));
    }
    if f.get("rope_scaling").is_some() {
        return Err(f.unsupported("rope_scaling (only unscaled rotary)".into()));
    }
    let number = |v: &Value, key: &str| v.as_f64().ok_or_else(|| f.invalid(key, "a number"));
    let rotary_pct = match rope_field("partial_rotary_factor") {
        Some(v) => number(v, "rope_parameters.partial_rotary_factor")?,
        None if f.get("rotary_pct").is_some() => f.f64("rotary_pct", None)?,
        None => f.f64("partial_rotary_factor", Some(0.25))?,
    };
    let rotary_emb_base = match rope_field("rope_theta") {
        Some(v) => number(v, "rope_parameters.rope_theta")?,
        None if f.get("rotary_emb_base").is_some() => f.f64("rotary_emb_base", None)?,
        None => f.f64("rope_theta", Some(10000.0))?,
    };
    Ok(NeoXConfig {
        vocab_size: f.usize("vocab_size", None)?,
        hidden_size: f.usize("hidden_size", None)?,
        num_hidden_layers: f.usize("num_hidden_layers", None)?,
        num_attention_heads: f.usize("num_attention_heads", None)?,
        intermediate_size: f.usize("intermediate_size", None)?,
        activation: f.activation("hidden_act", "gelu")?,
        rotary_pct,
        rotary_emb_base,
        max_position_embeddings: f.usize("max_position_embeddings", Some(2048))?,
        layer_norm_eps: f.f64("layer_norm_eps", Some(1e-5))?,
        use_parallel_residual: f.bool("use_parallel_residual", true)?,
        attention_bias: f.bool("attention_bias", true)?,
        tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(json, Path::new("config.json"))
    }

    #[test]
    fn gpt2_defaults_and_crfm_flags() {
        let c = parse(
            r#"{"model_type":"gpt2","vocab_size":50257,"n_embd":768,"n_layer":12,"n_head":12,
                "n_inner":null,"scale_attn_by_inverse_layer_idx":true,"reorder_and_upcast_attn":true}"#,
        )
        .expect("valid config");
        let ModelConfig::Gpt2(g) = c else {
            panic!("expected gpt2")
        };
        assert_eq!(g.d_mlp(), 3072);
        assert_eq!(g.activation, Activation::GeluTanh);
        assert!(g.scale_attn_by_inverse_layer_idx && g.reorder_and_upcast_attn);
        assert!(g.scale_attn_weights);
    }

    #[test]
    fn neox_rotary_spellings_agree() {
        let base = r#""model_type":"gpt_neox","vocab_size":10,"hidden_size":64,"num_hidden_layers":2,
                      "num_attention_heads":4,"intermediate_size":256"#;
        let old = parse(&format!(
            r#"{{{base},"rotary_pct":0.5,"rotary_emb_base":500}}"#
        ));
        let mid = parse(&format!(
            r#"{{{base},"partial_rotary_factor":0.5,"rope_theta":500}}"#
        ));
        let new = parse(&format!(
            r#"{{{base},"rope_parameters":{{"rope_type":"default","rope_theta":500,"partial_rotary_factor":0.5}}}}"#
        ));
        let old = old.expect("old spelling");
        assert_eq!(old, mid.expect("mid spelling"));
        assert_eq!(old, new.expect("new spelling"));
        let ModelConfig::NeoX(n) = old else {
            panic!("expected neox")
        };
        assert_eq!(n.rotary_ndims(), 8);
        assert_eq!(n.rotary_emb_base, 500.0);
    }

    #[test]
    fn bad_configs_are_named() {
        let cases = [
            (r#"{"model_type":"llama"}"#, "model_type `llama`"),
            (
                r#"{"model_type":"gpt2","n_embd":8,"n_layer":1,"n_head":2}"#,
                "vocab_size",
            ),
            (
                r#"{"model_type":"gpt2","vocab_size":5,"n_embd":9,"n_layer":1,"n_head":2}"#,
                "not divisible",
            ),
            (
                r#"{"model_type":"gpt2","vocab_size":5,"n_embd":8,"n_layer":1,"n_head":2,"activation_function":"swish"}"#,
                "swish",
            ),
            (
                r#"{"model_type":"gpt2","vocab_size":"many","n_embd":8,"n_layer":1,"n_head":2}"#,
                "vocab_size",
            ),
            (
                r#"{"model_type":"gpt_neox","vocab_size":5,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":4,"rope_scaling":{"type":"linear"}}"#,
                "rope_scaling",
            ),
            ("{not json", "config.json"),
        ];
        for (json, needle) in cases {
            let err = parse(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
            assert!(err.contains("config.json"), "{err} should name the file");
        }
    }
}
