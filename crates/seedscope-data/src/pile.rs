//! Pile-style data: JSON Lines with a `text` field (plain or zstd-compressed, as the Pile's
//! `test.jsonl.zst`), read document by document, tokenised and packed like TransformerLens
//! `tokenize_and_concatenate` (documents run into each other, rows of `seq_len − 1` tokens with
//! BOS prepended, the remainder dropped), with a seeded uniform sample of rows for a token
//! budget. Memory stays bounded by the sample: rows are kept by reservoir sampling (Algorithm
//! R) while the file streams past, then shuffled with the same seed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use crate::{DataError, Result, TextTokenizer};

/// How to read and sample a JSON Lines file.
#[derive(Debug, Clone, PartialEq)]
pub struct PileOptions {
    /// Tokens per row, BOS included (the paper: 512).
    pub seq_len: usize,
    /// Keep documents longer than this many characters (the paper: 50).
    pub min_chars: usize,
    /// Rows to keep (`None`: all, in file order).
    pub max_rows: Option<usize>,
    /// Seed of the row sample and its order.
    pub seed: u64,
}

/// Token rows read from a JSON Lines file, with what was read.
#[derive(Debug, Clone, PartialEq)]
pub struct PileRows {
    /// Ids, row-major, `rows × seq_len`.
    pub ids: Vec<u32>,
    /// Rows.
    pub n_rows: usize,
    /// Documents kept (longer than `min_chars`).
    pub documents: usize,
    /// Rows the whole file made (before sampling).
    pub rows_seen: usize,
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let zst = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("zst"));
    Ok(if zst {
        let d: Box<dyn Read> = Box::new(ZstdFrames::new(BufReader::new(f)));
        Box::new(BufReader::new(d))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// A zstd stream of one or more frames (one per `zstd` call; concatenated files have several,
/// and `pzstd` puts a skippable frame before each), decoded by the pure-Rust `ruzstd`, which
/// also builds for the browser. Skippable frames are passed over, as the zstd tool does.
struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    /// Whether `decoder` is inside a frame (its header read).
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                let d = &mut self.decoder;
                while d.can_collect() < buf.len() && !d.is_finished() {
                    let more = BlockDecodingStrategy::UptoBytes(buf.len() - d.can_collect());
                    d.decode_blocks(&mut self.source, more)
                        .map_err(std::io::Error::other)?;
                }
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            // The next frame starts where the last ended, unless the file does.
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = std::io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut std::io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file ends inside a skippable zstd frame",
                        ));
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

/// Read `path` (`.jsonl`, or `.jsonl.zst`/`.zst`), tokenise with `tokenizer` and pack into rows.
pub fn read_pile_rows(
    path: &Path,
    tokenizer: &TextTokenizer,
    options: &PileOptions,
) -> Result<PileRows> {
    let bad = |message: String| DataError::Tokens {
        path: PathBuf::from(path),
        message,
    };
    if options.seq_len < 2 {
        return Err(bad(format!(
            "rows of {} tokens: need at least BOS and one token",
            options.seq_len
        )));
    }
    let bos = tokenizer
        .bos_id()
        .ok_or_else(|| bad("the tokenizer has no <|endoftext|> to prepend as BOS".into()))?;
    let body = options.seq_len - 1;
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut reservoir: Vec<Vec<u32>> = Vec::new();
    let mut pending: Vec<u32> = Vec::new();
    let (mut documents, mut rows_seen) = (0usize, 0usize);
    let mut take_row = |row: Vec<u32>, rows_seen: &mut usize| {
        let i = *rows_seen;
        *rows_seen += 1;
        match options.max_rows {
            Some(k) if reservoir.len() >= k => {
                let j = rng.random_range(0..=i);
                if j < k {
                    reservoir[j] = row;
                }
            }
            _ => reservoir.push(row),
        }
    };
    for (n, line) in open(path)?.lines().enumerate() {
        let line = line.map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| bad(format!("line {}: not JSON: {e}", n + 1)))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad(format!("line {}: no string field \"text\"", n + 1)))?;
        if text.chars().count() <= options.min_chars {
            continue;
        }
        documents += 1;
        // Documents run into each other: TransformerLens drops the EOS separators it inserts
        // (they equal the pad token), so only the leading BOS of each row is special.
        pending.extend(
            tokenizer
                .to_tokens(text, false)?
                .into_iter()
                .filter(|&t| t != bos),
        );
        while pending.len() >= body {
            let mut row = Vec::with_capacity(options.seq_len);
            row.push(bos);
            row.extend(pending.drain(..body));
            take_row(row, &mut rows_seen);
        }
    }
    if options.max_rows.is_some() {
        reservoir.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            options.seed ^ 0x5eed,
        ));
    }
    let n_rows = reservoir.len();
    Ok(PileRows {
        ids: reservoir.into_iter().flatten().collect(),
        n_rows,
        documents,
        rows_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/family/tokenizer.json");
        TextTokenizer::from_file(&p).expect("tokenizer")
    }

    fn write(dir: &Path, name: &str, docs: &[String], zst: bool) -> PathBuf {
        let lines: String = docs
            .iter()
            .map(|d| {
                serde_json::json!({ "text": d, "meta": {"pile_set_name": "x"} }).to_string() + "\n"
            })
            .collect();
        let p = dir.join(name);
        let bytes = if zst {
            // Two frames, as `cat a.zst b.zst` writes them, the second behind a skippable
            // frame, as `pzstd` writes them.
            let half = lines.len() / 2;
            let cut = half + lines[half..].find('\n').expect("a line break") + 1;
            let mut bytes = zstd::stream::encode_all(&lines.as_bytes()[..cut], 3).expect("zstd");
            bytes.extend(0x184D_2A50_u32.to_le_bytes());
            bytes.extend(5_u32.to_le_bytes());
            bytes.extend(b"skip!");
            bytes.extend(zstd::stream::encode_all(&lines.as_bytes()[cut..], 3).expect("zstd"));
            bytes
        } else {
            lines.into_bytes()
        };
        std::fs::write(&p, bytes).expect("write");
        p
    }

    fn docs() -> Vec<String> {
        (0..40)
            .map(|i| {
                format!(
                    "Document {i}: to be, or not to be, that is the question of the day number {i}."
                )
            })
            .chain(std::iter::once("too short".to_string()))
            .collect()
    }

    #[test]
    fn zstd_and_plain_pack_the_same_rows_like_tokenize_and_concatenate() {
        let tmp = tempfile::Builder::new()
            .prefix("seedscope-pile-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path();
        let tok = tokenizer();
        let d = docs();
        let plain = write(dir, "a.jsonl", &d, false);
        let zst = write(dir, "a.jsonl.zst", &d, true);
        let o = PileOptions {
            seq_len: 16,
            min_chars: 50,
            max_rows: None,
            seed: 0,
        };
        let a = read_pile_rows(&plain, &tok, &o).expect("plain");
        let b = read_pile_rows(&zst, &tok, &o).expect("zst");
        assert_eq!(a, b);
        assert_eq!(a.documents, 40, "the short document is dropped");
        // The concatenated tokens of the kept documents, cut into rows of 15 behind a BOS.
        let bos = tok.bos_id().expect("bos");
        let all: Vec<u32> = d[..40]
            .iter()
            .flat_map(|t| tok.to_tokens(t, false).expect("tokens"))
            .collect();
        assert_eq!(a.n_rows, all.len() / 15);
        for (r, row) in a.ids.chunks(16).enumerate() {
            assert_eq!(row[0], bos);
            assert_eq!(&row[1..], &all[r * 15..(r + 1) * 15]);
        }
        // A seeded sample: the same seed gives the same rows, each a row of the full set.
        let s = |seed| {
            read_pile_rows(
                &zst,
                &tok,
                &PileOptions {
                    max_rows: Some(5),
                    seed,
                    ..o.clone()
                },
            )
            .expect("sample")
        };
        let (x, y, z) = (s(1), s(1), s(2));
        assert_eq!(x, y);
        assert_ne!(x.ids, z.ids);
        assert_eq!((x.n_rows, x.rows_seen), (5, a.n_rows));
        let full: Vec<&[u32]> = a.ids.chunks(16).collect();
        assert!(x.ids.chunks(16).all(|r| full.contains(&r)));
        // Bad lines name the file and the line.
        let badp = dir.join("bad.jsonl");
        std::fs::write(
            &badp,
            "{\"text\": \"fine and long enough to be kept as a document here ok\"}\n{oops\n",
        )
        .expect("write");
        let e = read_pile_rows(&badp, &tok, &o)
            .expect_err("bad json")
            .to_string();
        assert!(e.contains("bad.jsonl") && e.contains("line 2"), "{e}");
        // So does a file that is not zstd, and one cut off inside a frame.
        let notz = dir.join("notz.jsonl.zst");
        std::fs::write(&notz, b"{\"text\": \"plain JSON under a .zst name\"}\n").expect("write");
        let e = read_pile_rows(&notz, &tok, &o)
            .expect_err("not zstd")
            .to_string();
        assert!(e.contains("notz.jsonl.zst"), "{e}");
        let bytes = std::fs::read(&zst).expect("read");
        let cut = dir.join("cut.jsonl.zst");
        std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
        let e = read_pile_rows(&cut, &tok, &o)
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("cut.jsonl.zst"), "{e}");
    }
}
