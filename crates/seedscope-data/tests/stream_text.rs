//! Text read in chunks tokenises exactly like the whole text, and stops early on a budget.

use std::path::Path;

use seedscope_data::TextTokenizer;
use seedscope_data::corpus::{read_text, stream_text_tokens};

#[test]
fn chunked_text_gives_the_tokens_of_the_whole_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let path = root.join("corpus/eval.txt.gz");
    let tok = TextTokenizer::from_file(&root.join("family/tokenizer.json")).expect("tokenizer");
    let whole = tok
        .to_tokens(&read_text(&path).expect("text"), false)
        .expect("tokens");
    for chunk in [4096, 1 << 20] {
        let streamed =
            stream_text_tokens(&path, &tok, chunk, str::to_owned, |_| false).expect("stream");
        assert_eq!(streamed.len(), whole.len(), "chunk {chunk}");
        assert!(streamed == whole, "chunk {chunk}: tokens differ");
    }
    // A budget stops the reading soon after it is met; what was read is a prefix.
    let partial = stream_text_tokens(&path, &tok, 4096, str::to_owned, |t| t.len() >= 10_000)
        .expect("stream");
    assert!(
        partial.len() >= 10_000 && partial.len() < 14_000,
        "{}",
        partial.len()
    );
    assert_eq!(&whole[..partial.len()], &partial[..]);
    // Invalid UTF-8 is named with its byte offset.
    let tmp = tempfile::Builder::new()
        .prefix("seedscope-stream-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"fine text\nmore\n\xff\xfe broken").expect("write");
    let err = stream_text_tokens(&bad, &tok, 4, str::to_owned, |_| false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("bad.txt") && err.contains("not UTF-8 text at byte 15"),
        "{err}"
    );
}
