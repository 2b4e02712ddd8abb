//! Models from the Hugging Face hub: the paper's seed families as presets, downloads into the
//! standard Hugging Face cache (resumable, checksummed), and lookups that work offline.
//!
//! The transfer itself is [`hf_hub`]'s sync client: it writes the cache layout Python's
//! `huggingface_hub` uses (`models--org--name/blobs/<etag>`, `snapshots/<commit>/<file>` links,
//! `refs/<revision>`) and resumes a `.part` file with a `Range` request. This crate adds what a
//! long download of five seeds needs around it: the environment (`HF_ENDPOINT`, `HF_HOME`,
//! `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`), the choice of files (config, one weights
//! format, tokenizer), verification of every fetched blob against the hash the hub names it by
//! (sha256 for LFS files, the git blob sha1 otherwise), reuse of blobs already in the cache, and
//! errors that name the repository, the file and what to do.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use sha1::Digest as _;

/// Errors of hub access; each names the repository or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A request to the hub failed.
    #[error("{url}: {message}")]
    Request {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A downloaded file does not hash to the value the hub gave for it.
    #[error(
        "{file}: checksum mismatch (the hub names it {expected}, the download hashes to {actual}); \
         the corrupt file was removed, run the download again"
    )]
    Checksum {
        /// The file in the cache.
        file: PathBuf,
        /// The hub's hash (the blob's etag).
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The model is not in the cache and the network may not be used.
    #[error(
        "{repo} at revision `{revision}` is not in the Hugging Face cache {cache}{why}: run \
         `seedscope download {repo}{revision_flag}` first"
    )]
    NotCached {
        /// Repository id.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// The cache directory searched.
        cache: PathBuf,
        /// Why the network was not tried (offline mode), if it was not.
        why: String,
        /// The `--revision` flag to repeat in the hint (empty for `main`).
        revision_flag: String,
    },
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The repository lacks what Seedscope needs, or the request is malformed.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, HubError>;

/// A named seed family: the repositories of its seeds, in the paper's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// Hugging Face repository ids, one per seed.
    pub repos: &'static [&'static str],
    /// One line for listings.
    pub about: &'static str,
}

/// A Pythia size's original run (seed 1234) and its nine PolyPythias seeds (van der Wal et al.
/// 2025), `EleutherAI/pythia-{size}-seed{1..9}`; each has Pythia's `step{N}` checkpoints.
macro_rules! poly_pythia {
    ($size:literal) => {
        &[
            concat!("EleutherAI/pythia-", $size),
            concat!("EleutherAI/pythia-", $size, "-seed1"),
            concat!("EleutherAI/pythia-", $size, "-seed2"),
            concat!("EleutherAI/pythia-", $size, "-seed3"),
            concat!("EleutherAI/pythia-", $size, "-seed4"),
            concat!("EleutherAI/pythia-", $size, "-seed5"),
            concat!("EleutherAI/pythia-", $size, "-seed6"),
            concat!("EleutherAI/pythia-", $size, "-seed7"),
            concat!("EleutherAI/pythia-", $size, "-seed8"),
            concat!("EleutherAI/pythia-", $size, "-seed9"),
        ]
    };
}

/// The seed families of the paper, and the Pythia / PolyPythias seed suites (every size's ten
/// seeds; at 160m also the runs that vary only the data order or only the initialisation).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "stanford-gpt2-small",
        repos: &[
            "stanford-crfm/alias-gpt2-small-x21",
            "stanford-crfm/battlestar-gpt2-small-x49",
            "stanford-crfm/caprica-gpt2-small-x81",
            "stanford-crfm/darkmatter-gpt2-small-x343",
            "stanford-crfm/expanse-gpt2-small-x777",
        ],
        about: "five GPT-2 small seeds (124M) by Stanford CRFM, the paper's main family",
    },
    Preset {
        name: "stanford-gpt2-medium",
        repos: &[
            "stanford-crfm/arwen-gpt2-medium-x21",
            "stanford-crfm/beren-gpt2-medium-x49",
            "stanford-crfm/celebrimbor-gpt2-medium-x81",
            "stanford-crfm/durin-gpt2-medium-x343",
            "stanford-crfm/eowyn-gpt2-medium-x777",
        ],
        about: "five GPT-2 medium seeds (355M) by Stanford CRFM",
    },
    Preset {
        name: "pythia-14m",
        repos: poly_pythia!("14m"),
        about: "Pythia-14m and its nine PolyPythias seeds by EleutherAI (GPT-NeoX)",
    },
    Preset {
        name: "pythia-31m",
        repos: poly_pythia!("31m"),
        about: "Pythia-31m and its nine PolyPythias seeds",
    },
    Preset {
        name: "pythia-70m",
        repos: poly_pythia!("70m"),
        about: "Pythia-70m and its nine PolyPythias seeds",
    },
    Preset {
        name: "pythia-160m",
        repos: poly_pythia!("160m"),
        about: "Pythia-160m and its nine PolyPythias seeds",
    },
    Preset {
        name: "pythia-410m",
        repos: poly_pythia!("410m"),
        about: "Pythia-410m and its nine PolyPythias seeds",
    },
    Preset {
        name: "pythia-160m-data-seed",
        repos: &[
            "EleutherAI/pythia-160m",
            "EleutherAI/pythia-160m-data-seed1",
            "EleutherAI/pythia-160m-data-seed2",
            "EleutherAI/pythia-160m-data-seed3",
        ],
        about: "Pythia-160m and three PolyPythias runs that vary only the data order",
    },
    Preset {
        name: "pythia-160m-weight-seed",
        repos: &[
            "EleutherAI/pythia-160m",
            "EleutherAI/pythia-160m-weight-seed1",
            "EleutherAI/pythia-160m-weight-seed2",
            "EleutherAI/pythia-160m-weight-seed3",
        ],
        about: "Pythia-160m and three PolyPythias runs that vary only the weight initialisation",
    },
];

/// The preset called `name`.
pub fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Training steps with a saved checkpoint in the Stanford CRFM repositories (609 revisions).
pub fn crfm_checkpoint_steps() -> Vec<u64> {
    (0..100)
        .step_by(10)
        .chain((100..2000).step_by(50))
        .chain((2000..20000).step_by(100))
        .chain((20000..=400_000).step_by(1000))
        .collect()
}

/// Training steps with a saved checkpoint in the Pythia and PolyPythias repositories (154).
pub fn pythia_checkpoint_steps() -> Vec<u64> {
    [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        .into_iter()
        .chain((1000..=143_000).step_by(1000))
        .collect()
}

/// The revision holding `repo`'s training checkpoint at `step` (`checkpoint-{step}` for Stanford
/// CRFM, `step{step}` for Pythia); an error for repositories without checkpoints or unknown steps.
pub fn checkpoint_revision(repo: &str, step: u64) -> Result<String> {
    let (steps, revision) = if repo.starts_with("stanford-crfm/") {
        (crfm_checkpoint_steps(), format!("checkpoint-{step}"))
    } else if repo.starts_with("EleutherAI/pythia") {
        (pythia_checkpoint_steps(), format!("step{step}"))
    } else {
        return Err(HubError::Invalid(format!(
            "{repo} has no training-checkpoint revisions Seedscope knows (Stanford CRFM and \
             Pythia do); pass --revision instead"
        )));
    };
    if !steps.contains(&step) {
        let near = steps
            .iter()
            .min_by_key(|s| s.abs_diff(step))
            .copied()
            .unwrap_or(0);
        return Err(HubError::Invalid(format!(
            "{repo} has no checkpoint at step {step} (the nearest is {near})"
        )));
    }
    Ok(revision)
}

/// The repositories a command-line name stands for: a preset's seeds, or one `org/name` id.
pub fn repos_of(spec: &str) -> Result<Vec<String>> {
    if let Some(p) = find_preset(spec) {
        return Ok(p.repos.iter().map(|s| s.to_string()).collect());
    }
    let parts: Vec<&str> = spec.split('/').collect();
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() == 2 && parts.iter().all(|p| ok(p)) {
        return Ok(vec![spec.to_string()]);
    }
    let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    Err(HubError::Invalid(format!(
        "`{spec}` is neither a preset ({}) nor a repository id of the form org/name",
        names.join(", ")
    )))
}

/// How one file of a download was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Transferred now and verified against the hub's hash.
    Verified,
    /// Transferred now; the hub's etag is not a content hash, so it could not be checked.
    Unverified,
    /// Already in the cache.
    Cached,
}

/// One file of a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Name in the repository.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// How it was obtained.
    pub fetched: Fetched,
}

/// A model in the cache after [`Hub::download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Repository id.
    pub repo: String,
    /// The snapshot directory (a Hugging Face model directory every command loads).
    pub snapshot: PathBuf,
    /// Commit the revision resolved to.
    pub commit: String,
    /// The files, in download order.
    pub files: Vec<FileReport>,
}

/// Where and how to reach the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// Base URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Serve from the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token (`HF_TOKEN`, else the `token` file in `HF_HOME`).
    pub token: Option<String>,
    /// Retries of a failed transfer within one call (each resumes the partial file).
    pub retries: usize,
    /// Draw a progress bar per file on stderr.
    pub progress: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Hub {
    /// The settings Python's `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let home = non_empty_env("HOME").map(PathBuf::from);
        let hf_home = non_empty_env("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                non_empty_env("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| home.map(|h| h.join(".cache")))
                    .unwrap_or_else(|| PathBuf::from(".cache"))
                    .join("huggingface")
            });
        let cache_dir = non_empty_env("HF_HUB_CACHE")
            .or_else(|| non_empty_env("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = non_empty_env("HF_TOKEN").or_else(|| {
            let path = non_empty_env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            endpoint: non_empty_env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            offline: env_flag("HF_HUB_OFFLINE"),
            token,
            retries: 5,
            progress: true,
        }
    }

    fn api(&self) -> Result<Api> {
        ApiBuilder::new()
            .with_cache_dir(self.cache_dir.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_retries(self.retries)
            .with_progress(false)
            .build()
            .map_err(|e| HubError::Request {
                url: self.endpoint.clone(),
                message: e.to_string(),
            })
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot of `repo` at `revision` in the cache (no network): a branch or tag through
    /// `refs/<revision>`, or a commit hash directly. An error says how to download it.
    pub fn cached(&self, repo: &str, revision: &str) -> Result<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = if is_commit(revision) {
            revision.to_string()
        } else {
            let r = dir.join("refs").join(revision);
            std::fs::read_to_string(&r)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let snapshot = dir.join("snapshots").join(&commit);
        if !commit.is_empty() && snapshot.join("config.json").is_file() {
            return Ok(snapshot);
        }
        Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: self.cache_dir.clone(),
            why: if self.offline {
                " and offline mode is on (HF_HUB_OFFLINE)".into()
            } else {
                String::new()
            },
            revision_flag: if revision == "main" {
                String::new()
            } else {
                format!(" --revision {revision}")
            },
        })
    }

    /// Fetch what Seedscope needs of `repo` at `revision` (config, one weights format, the
    /// tokenizer files present) into the cache; files already there are reused, interrupted
    /// transfers resume, every transferred file is verified. Offline, the cached snapshot.
    pub fn download(&self, repo: &str, revision: &str) -> Result<Downloaded> {
        if self.offline {
            let snapshot = self.cached(repo, revision)?;
            let commit = file_name(&snapshot);
            let files = std::fs::read_dir(&snapshot)
                .map_err(|source| HubError::Io {
                    path: snapshot.clone(),
                    source,
                })?
                .filter_map(|e| e.ok())
                .map(|e| FileReport {
                    name: e.file_name().to_string_lossy().into_owned(),
                    bytes: std::fs::metadata(e.path()).map(|m| m.len()).unwrap_or(0),
                    fetched: Fetched::Cached,
                })
                .collect();
            return Ok(Downloaded {
                repo: repo.to_string(),
                snapshot,
                commit,
                files,
            });
        }
        let api = self.api()?;
        let handle = api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let info = handle.info().map_err(|e| HubError::Request {
            url: format!("{}/api/models/{repo}/revision/{revision}", self.endpoint),
            message: e.to_string(),
        })?;
        let siblings: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
        let mut wanted = choose_files(repo, &siblings)?;
        let mut files = Vec::new();
        let mut commit = info.sha.clone();
        let mut i = 0;
        while i < wanted.len() {
            let name = wanted[i].clone();
            let (report, path, file_commit) = self.fetch(&api, &handle, repo, revision, &name)?;
            commit = file_commit;
            if name == "model.safetensors.index.json" {
                for shard in index_shards(&path)? {
                    if !siblings.contains(&shard) {
                        return Err(HubError::Invalid(format!(
                            "{repo}: {name} lists the shard {shard}, which the repository lacks"
                        )));
                    }
                    if !wanted.contains(&shard) {
                        wanted.push(shard);
                    }
                }
            }
            files.push(report);
            i += 1;
        }
        let snapshot = self.repo_dir(repo).join("snapshots").join(&commit);
        Ok(Downloaded {
            repo: repo.to_string(),
            snapshot,
            commit,
            files,
        })
    }

    /// One file: reuse the cached blob when its hash is known, else transfer and verify.
    fn fetch(
        &self,
        api: &Api,
        handle: &ApiRepo,
        repo: &str,
        revision: &str,
        name: &str,
    ) -> Result<(FileReport, PathBuf, String)> {
        let url = handle.url(name);
        let request = |e: &dyn std::fmt::Display| HubError::Request {
            url: url.clone(),
            message: e.to_string(),
        };
        let meta = api.metadata(&url).map_err(|e| request(&e))?;
        let (etag, commit) = (meta.etag().to_string(), meta.commit_hash().to_string());
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.contains("..") {
            return Err(HubError::Invalid(format!(
                "{url}: the hub sent the etag `{etag}`, which cannot name a cache file"
            )));
        }
        let cache = Cache::new(self.cache_dir.clone()).repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let blob = cache.blob_path(&etag);
        let pointer = cache.pointer_path(&commit).join(name);
        let (fetched, path) = if blob.is_file() {
            link(&blob, &pointer, name)?;
            cache.create_ref(&commit).map_err(|source| HubError::Io {
                path: self.repo_dir(repo).join("refs"),
                source,
            })?;
            (Fetched::Cached, pointer)
        } else {
            let path = if self.progress {
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:40} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message(format!("{repo}/{name}"));
                handle.download_with_progress(name, bar)
            } else {
                handle.download_with_progress(name, ())
            }
            .map_err(|e| request(&e))?;
            match verify(&blob, &etag) {
                Ok(true) => (Fetched::Verified, path),
                Ok(false) => (Fetched::Unverified, path),
                Err(e) => {
                    // Remove the corrupt blob and its link, so the next run fetches it anew.
                    let _ = std::fs::remove_file(&blob);
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            }
        };
        let bytes = std::fs::metadata(&path)
            .map_err(|source| HubError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        Ok((
            FileReport {
                name: name.to_string(),
                bytes,
                fetched,
            },
            path,
            commit,
        ))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The files Seedscope loads from a repository listing: `config.json`, one weights format
/// (`model.safetensors`, else the sharded index, else `pytorch_model.bin`) and the tokenizer
/// files present.
pub fn choose_files(repo: &str, siblings: &[String]) -> Result<Vec<String>> {
    let has = |f: &str| siblings.iter().any(|s| s == f);
    if !has("config.json") {
        return Err(HubError::Invalid(format!(
            "{repo} has no config.json: it is not a Transformers model repository"
        )));
    }
    let mut out = vec!["config.json".to_string()];
    let weights = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
    ]
    .into_iter()
    .find(|f| has(f))
    .ok_or_else(|| {
        HubError::Invalid(format!(
            "{repo} has none of model.safetensors, model.safetensors.index.json, \
             pytorch_model.bin (files: {})",
            siblings.join(", ")
        ))
    })?;
    out.push(weights.to_string());
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if has(f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// The shard files a `model.safetensors.index.json` names, in first-use order.
fn index_shards(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |why: &str| HubError::Invalid(format!("{}: {why}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object"))?;
    let mut shards: Vec<String> = Vec::new();
    for v in map.values() {
        let s = v
            .as_str()
            .ok_or_else(|| bad("a weight_map value is no file name"))?;
        if s.contains("..") || s.starts_with('/') {
            return Err(bad(&format!("the shard name `{s}` leaves the repository")));
        }
        if !shards.iter().any(|x| x == s) {
            shards.push(s.to_string());
        }
    }
    Ok(shards)
}

/// Link `pointer` to `blob` as the hub cache does (a relative symlink; a copy where links are
/// unavailable), replacing a dangling link.
fn link(blob: &Path, pointer: &Path, name: &str) -> Result<()> {
    if pointer.is_file() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::Io { path, source }
    };
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer).map_err(io(pointer))?;
    }
    let depth = 2 + name.matches('/').count();
    let target = PathBuf::from("../".repeat(depth))
        .join("blobs")
        .join(file_name(blob));
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked: std::io::Result<()> = Err(std::io::Error::other("no symlinks"));
    if linked.is_err() {
        std::fs::copy(blob, pointer).map_err(io(pointer))?;
    }
    Ok(())
}

/// Check `path` against the hub's etag: a 64-digit etag is the sha256 of an LFS file, a
/// 40-digit one the git blob sha1 (`sha1("blob {len}\0" + content)`). `Ok(false)` when the etag
/// is neither (it cannot be checked).
pub fn verify(path: &Path, etag: &str) -> Result<bool> {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let etag = etag.to_ascii_lowercase();
    if !hex(&etag) || !(etag.len() == 64 || etag.len() == 40) {
        return Ok(false);
    }
    let io = |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let actual = if etag.len() == 64 {
        hash_reader(sha2::Sha256::new(), &mut file).map_err(io)?
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        hash_reader(h, &mut file).map_err(io)?
    };
    if actual != etag {
        return Err(HubError::Checksum {
            file: path.to_path_buf(),
            expected: etag,
            actual,
        });
    }
    Ok(true)
}

/// Feed everything `r` yields to `h`; the digest in hex.
fn hash_reader<D: sha1::Digest>(mut h: D, r: &mut impl Read) -> std::io::Result<String> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(to_hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The model directories a command-line name stands for, from the cache (no network): a
/// preset's seeds or one repository, at `revision` (or each repository's checkpoint at `step`).
pub fn resolve_cached(hub: &Hub, spec: &str, revision: Revision) -> Result<Vec<PathBuf>> {
    repos_of(spec)?
        .iter()
        .map(|repo| hub.cached(repo, &revision.for_repo(repo)?))
        .collect()
}

/// Which revision of each repository to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// A branch, tag or commit, the same for every repository.
    Named(String),
    /// Each repository's training checkpoint at this step ([`checkpoint_revision`]).
    Step(u64),
}

impl Default for Revision {
    fn default() -> Self {
        Self::Named("main".into())
    }
}

impl Revision {
    /// The revision name for `repo`.
    pub fn for_repo(&self, repo: &str) -> Result<String> {
        match self {
            Self::Named(r) => Ok(r.clone()),
            Self::Step(s) => checkpoint_revision(repo, *s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_repository_ids() {
        assert_eq!(
            repos_of("stanford-gpt2-small").map(|r| r.len()).ok(),
            Some(5)
        );
        assert_eq!(repos_of("gpt2/x").ok(), Some(vec!["gpt2/x".to_string()]));
        assert!(repos_of("nonsense").is_err());
        assert!(repos_of("../etc").is_err());
        assert!(repos_of("a/b/c").is_err());
        // PolyPythias: ten seeds per size, the decoupled 160m runs with the original.
        for size in ["14m", "31m", "70m", "160m", "410m"] {
            let repos = repos_of(&format!("pythia-{size}")).unwrap_or_default();
            assert_eq!(repos.len(), 10, "{size}");
            assert_eq!(repos[9], format!("EleutherAI/pythia-{size}-seed9"));
        }
        let data = repos_of("pythia-160m-data-seed").unwrap_or_default();
        assert_eq!(data[0], "EleutherAI/pythia-160m");
        assert_eq!(data[3], "EleutherAI/pythia-160m-data-seed3");
        assert_eq!(pythia_checkpoint_steps().len(), 154);
    }

    #[test]
    fn checkpoint_revisions() {
        assert_eq!(crfm_checkpoint_steps().len(), 609);
        assert_eq!(
            checkpoint_revision("stanford-crfm/alias-gpt2-small-x21", 400_000).ok(),
            Some("checkpoint-400000".into())
        );
        assert_eq!(
            checkpoint_revision("EleutherAI/pythia-160m-seed1", 512).ok(),
            Some("step512".into())
        );
        let err = checkpoint_revision("stanford-crfm/alias-gpt2-small-x21", 401)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("nearest is 400"), "{err}");
        assert!(checkpoint_revision("gpt2/gpt2", 10).is_err());
    }

    #[test]
    fn file_choice() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let got = choose_files(
            "r",
            &s(&[
                "config.json",
                "pytorch_model.bin",
                "model.safetensors",
                "vocab.json",
                "x",
            ]),
        )
        .ok();
        assert_eq!(
            got,
            Some(s(&["config.json", "model.safetensors", "vocab.json"]))
        );
        assert!(choose_files("r", &s(&["config.json", "flax_model.msgpack"])).is_err());
        assert!(choose_files("r", &s(&["pytorch_model.bin"])).is_err());
    }
}
