//! A model directory with GPT-2's two-file tokenizer (`vocab.json`, `merges.txt`) and no
//! `tokenizer.json` tokenises exactly like the one-file form of the same vocabulary.

use std::path::Path;

use seedscope_data::TextTokenizer;

#[test]
fn vocab_and_merges_tokenise_like_tokenizer_json() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let json_path = fixtures.join("gpt2-plain/tokenizer.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("fixture")).expect("json");
    let tmp = tempfile::Builder::new()
        .prefix("seedscope-vocab-merges-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    std::fs::write(dir.join("vocab.json"), json["model"]["vocab"].to_string()).expect("vocab");
    let mut merges = String::from("#version: 0.2\n");
    for m in json["model"]["merges"].as_array().expect("merges") {
        let pair = match m {
            serde_json::Value::Array(p) => format!(
                "{} {}",
                p[0].as_str().expect("str"),
                p[1].as_str().expect("str")
            ),
            other => other.as_str().expect("str").to_string(),
        };
        merges.push_str(&pair);
        merges.push('\n');
    }
    std::fs::write(dir.join("merges.txt"), merges).expect("merges");
    assert!(TextTokenizer::model_dir_has_tokenizer(dir));

    let one = TextTokenizer::from_file(&json_path).expect("tokenizer.json");
    let two = TextTokenizer::from_model_dir(dir).expect("vocab.json + merges.txt");
    assert_eq!(one.bos_id(), two.bos_id());
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("tokenizer-reference.json")).expect("reference"),
    )
    .expect("json");
    let mut texts = vec![reference["text"].as_str().expect("text").to_string()];
    texts.push("<|endoftext|>Hello  world\n\n  12 345 caf\u{e9} <|endoftext|>!".into());
    for text in &texts {
        let a = one.to_tokens(text, true).expect("encode");
        let b = two.to_tokens(text, true).expect("encode");
        assert_eq!(a, b, "{text:?}");
        assert_eq!(one.decode(&a).ok(), two.decode(&b).ok());
    }
    let ids: Vec<u64> = reference["ids_with_bos"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect();
    let got: Vec<u64> = two
        .to_tokens(&texts[0], true)
        .expect("encode")
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(got, ids, "transformers' ids for the reference text");
    // Neither form: a clear error naming the directory's tokenizer.json.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let err = TextTokenizer::from_model_dir(&empty)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("tokenizer.json") && err.contains("merges.txt"),
        "{err}"
    );
}
