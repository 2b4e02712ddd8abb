//! Downloads against a hub-like server on 127.0.0.1 serving the tiny fixtures: the cache layout,
//! reuse, offline mode, resume after a dropped connection, checksum rejection, shards, revisions.

#[path = "../../../tests/common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};

use hub_server::{HubServer, HubState, ServedFile, repo_from_dir};
use seedscope_hub::{Fetched, Hub, HubError, Revision, resolve_cached};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A fresh cache directory, removed when it goes out of scope.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("seedscope-hub-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

fn hub(server: &HubServer, cache: &Path) -> Hub {
    Hub {
        endpoint: server.endpoint.clone(),
        cache_dir: cache.to_path_buf(),
        offline: false,
        token: None,
        retries: 0,
        progress: false,
    }
}

/// gpt2-plain as `org/tiny`, with a file Seedscope does not fetch.
fn tiny_state() -> HubState {
    let mut state = HubState::default();
    repo_from_dir(
        &mut state,
        "org/tiny",
        COMMIT,
        &fixture("gpt2-plain"),
        &[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "reference.safetensors",
        ],
    );
    state
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).ok() == std::fs::read(b).ok()
}

#[test]
fn download_fills_the_cache_reuses_it_and_offline_mode_serves_it() {
    let server = HubServer::start(tiny_state());
    let tmp = temp_dir("fill");
    let cache = tmp.path();
    let got = hub(&server, cache)
        .download("org/tiny", "main")
        .expect("download");
    let snapshot = cache.join("models--org--tiny/snapshots").join(COMMIT);
    assert_eq!(got.snapshot, snapshot);
    assert_eq!(got.commit, COMMIT);
    let names: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert!(got.files.iter().all(|f| f.fetched == Fetched::Verified));
    for f in &names {
        assert!(
            same_bytes(&snapshot.join(f), &fixture("gpt2-plain").join(f)),
            "{f}"
        );
        // The hub's layout: a relative link into blobs/ named by the sha256.
        let target = std::fs::read_link(snapshot.join(f)).expect("a symlink");
        assert!(target.starts_with("../../blobs"), "{}", target.display());
    }
    assert!(!snapshot.join("reference.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(cache.join("models--org--tiny/refs/main")).ok(),
        Some(COMMIT.to_string())
    );

    // Again: only the metadata probes (1 byte each) go over the wire.
    let before = server.requests("/resolve/").len();
    let again = hub(&server, cache)
        .download("org/tiny", "main")
        .expect("again");
    assert!(again.files.iter().all(|f| f.fetched == Fetched::Cached));
    let after = server.requests("/resolve/");
    assert!(
        after[before..]
            .iter()
            .all(|(_, _, r)| r.as_deref() == Some("bytes=0-0")),
        "{:?}",
        &after[before..]
    );

    // Offline: no request at all, the same snapshot.
    let seen = server.requests("").len();
    let offline = Hub {
        offline: true,
        ..hub(&server, cache)
    };
    let cached = offline.download("org/tiny", "main").expect("offline");
    assert_eq!(cached.snapshot, snapshot);
    assert!(cached.files.iter().all(|f| f.fetched == Fetched::Cached));
    assert_eq!(
        offline.cached("org/tiny", "main").ok(),
        Some(snapshot.clone())
    );
    assert_eq!(offline.cached("org/tiny", COMMIT).ok(), Some(snapshot));
    assert_eq!(server.requests("").len(), seen);
    let err = offline
        .download("org/absent", "main")
        .expect_err("not cached");
    let msg = err.to_string();
    assert!(matches!(err, HubError::NotCached { .. }));
    assert!(
        msg.contains("offline mode") && msg.contains("seedscope download org/absent"),
        "{msg}"
    );
}

#[test]
fn a_dropped_connection_resumes_from_the_partial_file() {
    let mut state = tiny_state();
    let weights = fixture("gpt2-plain/model.safetensors");
    let size = std::fs::metadata(&weights).expect("fixture").len() as usize;
    if let Some((_, files)) = state.repos.get_mut("org/tiny")
        && let Some(f) = files.get_mut("model.safetensors")
    {
        f.drop_after = Some((50_000, 1));
    }
    let server = HubServer::start(state);
    let tmp = temp_dir("resume");
    let cache = tmp.path();
    // No retries: the first run fails and leaves the partial file behind.
    let err = hub(&server, cache)
        .download("org/tiny", "main")
        .expect_err("the connection drops");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let blobs = cache.join("models--org--tiny/blobs");
    let part = std::fs::read_dir(&blobs)
        .expect("blobs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .expect("a .part file");
    assert_eq!(std::fs::metadata(&part).map(|m| m.len()).ok(), Some(50_000));
    // The rerun asks only for the rest and ends with the right bytes, verified.
    let got = hub(&server, cache)
        .download("org/tiny", "main")
        .expect("resumed");
    let ranges: Vec<Option<String>> = server
        .requests("model.safetensors")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert!(
        ranges.contains(&Some("bytes=50000-".to_string())),
        "{ranges:?}"
    );
    assert!(size > 50_000);
    assert!(same_bytes(
        &got.snapshot.join("model.safetensors"),
        &weights
    ));
    let fetched = |name: &str| {
        got.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.fetched.clone())
    };
    assert_eq!(fetched("model.safetensors"), Some(Fetched::Verified));
    // config.json arrived before the drop and is reused.
    assert_eq!(fetched("config.json"), Some(Fetched::Cached));

    // With retries the same happens inside one call.
    let mut state = tiny_state();
    if let Some((_, files)) = state.repos.get_mut("org/tiny")
        && let Some(f) = files.get_mut("model.safetensors")
    {
        f.drop_after = Some((70_000, 1));
    }
    let server = HubServer::start(state);
    let tmp = temp_dir("retry");
    let cache = tmp.path();
    let got = Hub {
        retries: 2,
        ..hub(&server, cache)
    }
    .download("org/tiny", "main")
    .expect("retried");
    assert!(same_bytes(
        &got.snapshot.join("model.safetensors"),
        &weights
    ));
}

#[test]
fn a_file_that_does_not_match_its_checksum_is_rejected_and_removed() {
    let mut state = tiny_state();
    if let Some((_, files)) = state.repos.get_mut("org/tiny") {
        // The body changed in transit: the hub still names the original content.
        if let Some(f) = files.get_mut("model.safetensors") {
            f.body[1000] ^= 0xff;
        }
        // A small non-LFS file is named by its git blob sha1: verified too.
        if let Some(f) = files.get_mut("config.json") {
            use sha1::Digest as _;
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", f.body.len()).as_bytes());
            h.update(&f.body);
            f.etag = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        }
    }
    let server = HubServer::start(state);
    let tmp = temp_dir("checksum");
    let cache = tmp.path();
    let err = hub(&server, cache)
        .download("org/tiny", "main")
        .expect_err("corrupt");
    let msg = err.to_string();
    assert!(matches!(err, HubError::Checksum { .. }), "{msg}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains("blobs"),
        "{msg}"
    );
    let snapshot = cache.join("models--org--tiny/snapshots").join(COMMIT);
    assert!(
        snapshot.join("config.json").is_file(),
        "the sha1-named file was kept"
    );
    assert!(
        snapshot
            .join("model.safetensors")
            .symlink_metadata()
            .is_err(),
        "the corrupt file's link was removed"
    );
    let blobs: Vec<_> = std::fs::read_dir(cache.join("models--org--tiny/blobs"))
        .expect("blobs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(blobs.len(), 1, "only config.json's blob stays: {blobs:?}");
}

#[test]
fn sharded_weights_and_checkpoint_revisions() {
    let mut state = HubState::default();
    let config = std::fs::read(fixture("gpt2-plain/config.json")).expect("config");
    let index = serde_json::json!({
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors",
        }
    })
    .to_string();
    let files = [
        ("config.json", config),
        ("model.safetensors.index.json", index.into_bytes()),
        ("model-00001-of-00002.safetensors", vec![1u8; 3000]),
        ("model-00002-of-00002.safetensors", vec![2u8; 5000]),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), ServedFile::new(b)))
    .collect();
    state.repos.insert(
        "stanford-crfm/alias-gpt2-small-x21".into(),
        (COMMIT.into(), files),
    );
    let server = HubServer::start(state);
    let tmp = temp_dir("shards");
    let cache = tmp.path();
    let h = hub(&server, cache);
    let repo = "stanford-crfm/alias-gpt2-small-x21";
    let revision = Revision::Step(400_000).for_repo(repo).expect("revision");
    let got = h.download(repo, &revision).expect("download");
    let names: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    assert!(
        server
            .requests("/resolve/")
            .iter()
            .all(|r| r.1.contains("/resolve/checkpoint-400000/")),
        "the revision is in every URL"
    );
    let dir = cache.join("models--stanford-crfm--alias-gpt2-small-x21");
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/checkpoint-400000")).ok(),
        Some(COMMIT.to_string())
    );
    // The preset resolves from the cache once every seed is there; before, it names the first
    // one missing.
    let one = resolve_cached(&h, repo, Revision::Step(400_000)).expect("cached");
    assert_eq!(one, vec![dir.join("snapshots").join(COMMIT)]);
    let err = resolve_cached(&h, "stanford-gpt2-small", Revision::Step(400_000))
        .expect_err("four seeds missing")
        .to_string();
    assert!(
        err.contains("battlestar") && err.contains("--revision checkpoint-400000"),
        "{err}"
    );
}

#[test]
fn a_missing_repository_is_named() {
    let server = HubServer::start(tiny_state());
    let tmp = temp_dir("missing");
    let cache = tmp.path();
    let err = hub(&server, cache)
        .download("org/nothing", "main")
        .expect_err("404")
        .to_string();
    assert!(
        err.contains("/api/models/org/nothing/revision/main"),
        "{err}"
    );
}
