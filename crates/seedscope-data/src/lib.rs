//! Text and token input for Seedscope: Hugging Face tokenizers, TransformerLens-style
//! tokenisation (`to_tokens` with BOS), packing into rows, token id files (`.npy`), the bundled
//! corpus and BPE training.

pub mod corpus;
pub mod pile;

use std::io::Read;

use npyz::WriterBuilder;
use std::path::{Path, PathBuf};

/// What can go wrong with text or token input. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `tokenizer.json` cannot be parsed or used.
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A token file has the wrong type, shape or values.
    #[error("{path}: {message}")]
    Tokens {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Result with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

/// The end-of-text token GPT-2 and Pythia use as BOS, EOS and padding.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// A Hugging Face `tokenizer.json` with the BOS token TransformerLens prepends.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("bos", &self.bos)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// The tokenizer of a Hugging Face model directory: its `tokenizer.json`, else GPT-2's
    /// byte-level BPE built from `vocab.json` and `merges.txt` (as transformers'
    /// `GPT2TokenizerFast` converts them), with `<|endoftext|>` as a special token.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !(vocab.is_file() && merges.is_file()) {
            return Err(DataError::Io {
                path: json,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tokenizer.json (nor vocab.json with merges.txt) in the model directory",
                ),
            });
        }
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let err = |message: String| DataError::Tokenizer {
            path: vocab.clone(),
            message,
        };
        let bpe = tokenizers::models::bpe::BPE::from_file(
            &vocab.to_string_lossy(),
            &merges.to_string_lossy(),
        )
        .build()
        .map_err(|e| err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[tokenizers::AddedToken::from(ENDOFTEXT, true)]);
        let bos = inner.token_to_id(ENDOFTEXT);
        Ok(Self {
            inner,
            path: vocab,
            bos,
        })
    }

    /// Whether [`TextTokenizer::from_model_dir`] finds a tokenizer in `dir`.
    pub fn model_dir_has_tokenizer(dir: &Path) -> bool {
        dir.join("tokenizer.json").is_file()
            || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
    }

    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse a tokenizer from the bytes of a `tokenizer.json`; `path` is used in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let bos = inner.token_to_id(ENDOFTEXT);
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos,
        })
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The BOS id (`<|endoftext|>`), if the vocabulary has it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Check that every id this tokenizer can produce is a row of the model's embedding
    /// (Pythia pads its embedding beyond the tokenizer, so `<=` is allowed).
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        let n = self.vocab_size();
        if n > model_vocab {
            return Err(DataError::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "vocabulary of {n} tokens does not fit the model's embedding of {model_vocab}"
                ),
            });
        }
        Ok(())
    }

    /// Token ids of `text` like TransformerLens `to_tokens`: BOS first when `prepend_bos`.
    pub fn to_tokens(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if prepend_bos {
            let bos = self.bos.ok_or_else(|| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("no {ENDOFTEXT} token to prepend as BOS (turn BOS off)"),
            })?;
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("serialising failed: {e}"),
            })
    }

    /// Decode ids back to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("decoding failed: {e}"),
            })
    }
}

/// Rows of equal length cut from a token stream, as TransformerLens
/// `tokenize_and_concatenate` does: each row is `[bos] + seq_len - 1` tokens when `bos` is
/// given, else `seq_len` tokens; a tail too short for a whole row is dropped.
///
/// Returns the ids row-major and the number of rows.
pub fn pack_rows(stream: &[u32], seq_len: usize, bos: Option<u32>) -> (Vec<u32>, usize) {
    let body = seq_len - usize::from(bos.is_some());
    if body == 0 {
        return (Vec::new(), 0);
    }
    let n_rows = stream.len() / body;
    let mut ids = Vec::with_capacity(n_rows * seq_len);
    for chunk in stream.chunks_exact(body) {
        ids.extend(bos);
        ids.extend_from_slice(chunk);
    }
    (ids, n_rows)
}

/// Token ids of shape `[n_seq, seq_len]`, read from a `.npy` file of int32 or int64 (as
/// numpy or `torch.save(...).numpy()` writes them), used as given.
pub fn read_tokens_npy(path: &Path) -> Result<(Vec<u32>, [usize; 2])> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    read_tokens_npy_bytes(&bytes, path)
}

/// [`read_tokens_npy`] of a file already in memory (fetched in the browser); `path` names it
/// in errors.
pub fn read_tokens_npy_bytes(bytes: &[u8], path: &Path) -> Result<(Vec<u32>, [usize; 2])> {
    let bad = |message: String| DataError::Tokens {
        path: path.to_path_buf(),
        message,
    };
    let file = npyz::NpyFile::new(bytes).map_err(|e| bad(format!("not a .npy file: {e}")))?;
    let shape: Vec<u64> = file.shape().to_vec();
    let [n_seq, seq_len] = shape[..] else {
        return Err(bad(format!(
            "token ids must be 2-D [n_seq, seq_len], found shape {shape:?}"
        )));
    };
    if file.order() != npyz::Order::C {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with C order".into(),
        ));
    }
    let to_usize =
        |n: u64| usize::try_from(n).map_err(|_| bad(format!("dimension {n} is too large")));
    let shape = [to_usize(n_seq)?, to_usize(seq_len)?];
    let dtype = match file.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => {
            return Err(bad(format!(
                "token ids must be int32 or int64, found {other:?}"
            )));
        }
    };
    let read_err = |e: std::io::Error| bad(format!("truncated or corrupt data: {e}"));
    let values: Vec<i64> = match dtype.as_str() {
        "<i8" | ">i8" => file.into_vec::<i64>().map_err(read_err)?,
        "<i4" | ">i4" => file
            .into_vec::<i32>()
            .map_err(read_err)?
            .into_iter()
            .map(i64::from)
            .collect(),
        other => {
            return Err(bad(format!(
                "token ids must be int32 or int64, found dtype {other}"
            )));
        }
    };
    if values.len() != shape[0] * shape[1] {
        return Err(bad(format!(
            "holds {} values for shape {shape:?}",
            values.len()
        )));
    }
    let ids = values
        .iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| bad(format!("token id {v} is negative or too large")))
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok((ids, shape))
}

/// Write `[n_seq, seq_len]` token ids as an int32 `.npy`.
pub fn write_tokens_npy(path: &Path, ids: &[u32], shape: [usize; 2]) -> Result<()> {
    let io = |source: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let values: Vec<i32> = ids
        .iter()
        .map(|&v| i32::try_from(v))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| DataError::Tokens {
            path: path.to_path_buf(),
            message: "token id does not fit int32".into(),
        })?;
    let mut bytes = Vec::new();
    {
        let mut writer = npyz::WriteOptions::<i32>::new()
            .default_dtype()
            .shape(&[shape[0] as u64, shape[1] as u64])
            .writer(&mut bytes)
            .begin_nd()
            .map_err(io)?;
        writer.extend(values).map_err(io)?;
        writer.finish().map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_rows_prepends_bos_and_drops_tail() {
        let stream: Vec<u32> = (1..=10).collect();
        let (ids, rows) = pack_rows(&stream, 4, Some(0));
        assert_eq!(rows, 3);
        assert_eq!(ids, vec![0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9]);
        let (ids, rows) = pack_rows(&stream, 5, None);
        assert_eq!((rows, ids.len()), (2, 10));
    }

    #[test]
    fn npy_round_trip_and_errors() {
        let tmp = tempfile::Builder::new()
            .prefix("seedscope-data-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path();
        let path = dir.join("t.npy");
        write_tokens_npy(&path, &[1, 2, 3, 4, 5, 6], [2, 3]).expect("write");
        let (ids, shape) = read_tokens_npy(&path).expect("read");
        assert_eq!((ids, shape), (vec![1, 2, 3, 4, 5, 6], [2, 3]));

        let bytes = std::fs::read(&path).expect("read back");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        let err = read_tokens_npy(&path).expect_err("truncated").to_string();
        assert!(err.contains("t.npy"), "{err}");

        let missing = read_tokens_npy(&dir.join("nope.npy"))
            .expect_err("missing")
            .to_string();
        assert!(missing.contains("nope.npy"), "{missing}");
    }
}
