//! The bundled corpus (`assets/corpus`) and training a byte-level BPE tokenizer on it.

use std::io::Read;
use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{DataError, ENDOFTEXT, Result, TextTokenizer};

/// Read a UTF-8 text file, gunzipping it when its name ends in `.gz`.
pub fn read_text(path: &Path) -> Result<String> {
    let io = |source: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    }
    String::from_utf8(bytes).map_err(|e| DataError::Tokens {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })
}

/// Train a GPT-2-style byte-level BPE of `vocab_size` tokens (`<|endoftext|>` is id 0 and
/// serves as BOS, EOS and padding) on `texts`. Deterministic for the same texts.
pub fn train_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<TextTokenizer> {
    let fail = |e: tokenizers::Error| DataError::Tokenizer {
        path: "<training>".into(),
        message: e.to_string(),
    };
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, false, true)));
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(ENDOFTEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut trainer, texts).map_err(fail)?;
    let json = tokenizer.to_string(false).map_err(fail)?;
    TextTokenizer::from_bytes(json.as_bytes(), Path::new("<trained tokenizer>"))
}

/// The tokens of a UTF-8 text file (gunzipped when its name ends in `.gz`), read in chunks of
/// about `chunk_bytes` so memory holds the tokens, not the text. A chunk ends after a single
/// newline between two non-space characters: GPT-2-style pre-tokenisation splits there anyway,
/// so the tokens equal those of the whole text at once. Each chunk passes through `map` before
/// tokenising; reading stops early once `enough(tokens so far)` holds.
pub fn stream_text_tokens(
    path: &Path,
    tokenizer: &TextTokenizer,
    chunk_bytes: usize,
    map: impl Fn(&str) -> String,
    mut enough: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    let io = |source: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let utf8 = |bytes: &[u8], offset: usize| -> Result<String> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| DataError::Tokens {
                path: path.to_path_buf(),
                message: format!("not UTF-8 text at byte {}: {e}", offset + e.valid_up_to()),
            })
    };
    let mut tokens = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    let mut buf = vec![0u8; chunk_bytes.max(1)];
    loop {
        let n = reader.read(&mut buf).map_err(io)?;
        pending.extend_from_slice(&buf[..n]);
        let at_end = n == 0;
        // The last safe cut: just after a lone '\n' between two non-space ASCII characters
        // (after a longer whitespace run, the text's end would join the run into one
        // pre-token where the whole text splits its last character off).
        let safe = |c: u8| c.is_ascii() && !c.is_ascii_whitespace();
        let cut = if at_end {
            Some(pending.len())
        } else if pending.len() >= chunk_bytes {
            pending
                .windows(3)
                .rposition(|w| safe(w[0]) && w[1] == b'\n' && safe(w[2]))
                .map(|i| i + 2)
        } else {
            None
        };
        if let Some(cut) = cut.filter(|&c| c > 0) {
            let text = utf8(&pending[..cut], consumed)?;
            tokens.extend(tokenizer.to_tokens(&map(&text), false)?);
            pending.drain(..cut);
            consumed += cut;
            if enough(&tokens) {
                break;
            }
        }
        if at_end {
            break;
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_and_has_bos_first() {
        let text = "To be, or not to be, that is the question: ".repeat(50);
        let tok = train_bpe([text.as_str()].into_iter(), 300).expect("train");
        assert_eq!(tok.bos_id(), Some(0));
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 256);
        let ids = tok.to_tokens("not to be, that", true).expect("encode");
        assert_eq!(ids[0], 0);
        assert_eq!(tok.decode(&ids[1..]).expect("decode"), "not to be, that");
        let again = train_bpe([text.as_str()].into_iter(), 300).expect("train");
        assert_eq!(
            again.to_tokens(&text, false).expect("encode"),
            tok.to_tokens(&text, false).expect("encode")
        );
    }
}
