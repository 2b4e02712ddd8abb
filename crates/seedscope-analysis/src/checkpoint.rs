//! Checkpoints of a running analysis: finished passes' results and the current pass's
//! accumulators, in one safetensors file written atomically.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::AnalysisError;
use crate::accum::SavedState;
use crate::anatomy::{AnatomyPart, AnatomySaved};
use crate::results::{AnchorResult, Candidates, LayerBlock, Matches, OneToOne, SavedTile};

/// File name inside the work directory.
pub const FILE: &str = "checkpoint.safetensors";

/// Where to continue: the next block of a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Pass.
    pub pass: usize,
    /// First block not yet merged.
    pub block: usize,
}

/// Everything a resumed run needs.
#[derive(Debug)]
pub struct Checkpoint {
    /// Results of finished passes.
    pub results: Vec<AnchorResult>,
    /// The file, from which [`Checkpoint::accumulators`] reads the current pass's state.
    file: FileBytes,
    meta: Meta,
    /// Where it was read from.
    pub path: std::path::PathBuf,
}

impl Checkpoint {
    /// Where to continue.
    pub fn position(&self) -> Position {
        self.meta.position
    }

    /// The current pass's accumulators (none between passes): its sums and held rows lent
    /// from the mapped file, so restoring them holds them once, in the pass.
    pub fn accumulators(&self) -> Result<Option<SavedState<'_>>, AnalysisError> {
        let Some(count) = self.meta.count else {
            return Ok(None);
        };
        let bad = |m: String| damaged(&self.path, m);
        let st =
            safetensors::SafeTensors::deserialize(&self.file).map_err(|e| bad(e.to_string()))?;
        let meta = &self.meta;
        let f64s = |name: &str| tensor(&st, name, f64::from_le_bytes, &bad);
        let f32s = |name: &str| tensor(&st, name, f32::from_le_bytes, &bad);
        let u32s = |name: &str| tensor(&st, name, u32::from_le_bytes, &bad);
        let mut moments = Vec::new();
        for (s, &present) in meta.moments.iter().enumerate() {
            moments.push(if present {
                Some(f64s(&format!("acc.moments.{s}"))?.into_owned())
            } else {
                None
            });
        }
        let mut tiles = Vec::new();
        for k in 0..meta.n_tiles {
            tiles.push(f64s(&format!("acc.tile.{k}"))?);
        }
        let mut rows = Vec::new();
        for (s, &present) in meta.rows.iter().enumerate() {
            rows.push(if present {
                Some(f32s(&format!("acc.rows.{s}"))?)
            } else {
                None
            });
        }
        let mut hists = Vec::new();
        for k in 0..meta.n_hists {
            hists.push(u32s(&format!("acc.hist.{k}"))?.into_owned());
        }
        let mut anatomy = Vec::new();
        for k in 0..meta.n_anatomy {
            let p = format!("acc.anat.{k}");
            // Older checkpoints saved each state whole, under the anchor's own prefix.
            let names: Vec<String> = match meta.anatomy_parts.get(k) {
                Some(&n) => (0..n).map(|j| format!("{p}.{j}")).collect(),
                None => vec![p.clone()],
            };
            let mut parts = Vec::with_capacity(names.len());
            for q in names {
                parts.push(AnatomyPart {
                    sums: f64s(&format!("{q}.sums"))?,
                    shift: f32s(&format!("{q}.shift"))?,
                    top_val: f32s(&format!("{q}.top_val"))?,
                    top_idx: u32s(&format!("{q}.top_idx"))?,
                    active: u32s(&format!("{q}.active"))?,
                });
            }
            let counts = |name: &str| -> Result<Vec<u64>, AnalysisError> {
                Ok(f64s(name)?.iter().map(|&c| c as u64).collect())
            };
            anatomy.push(AnatomySaved {
                parts,
                feature_count: counts(&format!("{p}.feature_count"))?,
                pos_total: counts(&format!("{p}.pos_total"))?,
            });
        }
        Ok(Some(SavedState {
            count,
            moments,
            tiles,
            rows,
            hists,
            anatomy,
        }))
    }
}

/// A checkpoint file's bytes: mapped natively, so the accumulators a resumed pass restores are
/// read where they are (the page cache), not copied onto the heap next to the pass's own
/// accumulators; read whole in the browser (where no checkpoint is written).
#[derive(Debug)]
enum FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    #[allow(dead_code)]
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Mapped(m) => m,
            Self::Read(v) => v,
        }
    }
}

impl FileBytes {
    /// The file at `path`, or none where there is none.
    fn open(path: &Path) -> Result<Option<Self>, AnalysisError> {
        let io = |source| AnalysisError::Io {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            // SAFETY: checkpoints are only ever replaced whole (written to a temporary file
            // and renamed over, `write_file_atomic_with`), never modified in place, so the
            // mapped file does not change while it is mapped.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            Ok(Some(Self::Mapped(map)))
        }
        #[cfg(target_arch = "wasm32")]
        match std::fs::read(path) {
            Ok(b) => Ok(Some(Self::Read(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }
}

/// Little-endian values of type `T` in `bytes`: lent as they are where they are aligned
/// (safetensors puts 8-byte types first) on a little-endian machine, converted otherwise.
fn values<T: bytemuck::Pod, const N: usize>(
    bytes: &[u8],
    from_le: fn([u8; N]) -> T,
) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) if cfg!(target_endian = "little") => Cow::Borrowed(v),
        _ => Cow::Owned(
            bytes
                .chunks_exact(N)
                .map(|c| from_le(c.try_into().unwrap_or([0; N])))
                .collect(),
        ),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    fingerprint: String,
    position: Position,
    count: Option<u64>,
    moments: Vec<bool>,
    n_tiles: usize,
    /// Per stream, whether its held rows are saved ([`SavedState::rows`]).
    #[serde(default)]
    rows: Vec<bool>,
    #[serde(default)]
    n_hists: usize,
    #[serde(default)]
    n_anatomy: usize,
    /// Per anatomy state, the runs of columns it is saved in ([`AnatomySaved::parts`]);
    /// empty in checkpoints that saved each whole.
    #[serde(default)]
    anatomy_parts: Vec<usize>,
    anchors: Vec<AnchorMeta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AnchorMeta {
    anchor: usize,
    others: Vec<usize>,
    tiles: Vec<(usize, usize, usize)>,
    #[serde(default)]
    anatomy: bool,
    /// Candidate lists held (refinement's prefix stage) and their `k`.
    #[serde(default)]
    candidates: usize,
    #[serde(default)]
    candidate_k: usize,
    /// Per other model, the same-layer blocks being filled: `(layer, entries filled)`.
    #[serde(default)]
    pending: Vec<Vec<(usize, usize)>>,
    /// Whether the permutation null's matches are held.
    #[serde(default)]
    null: bool,
}

/// The little-endian bytes of `v`: the values themselves on little-endian machines (no copy:
/// a checkpoint of a GPT-2-small pass holds a GB of accumulators), converted elsewhere.
fn le_bytes<T: bytemuck::Pod>(v: &[T], le: impl Fn(&T) -> Vec<u8>) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(le).collect())
    }
}
fn f64_bytes(v: &[f64]) -> Cow<'_, [u8]> {
    le_bytes(v, |x| x.to_le_bytes().to_vec())
}
fn f32_bytes(v: &[f32]) -> Cow<'_, [u8]> {
    le_bytes(v, |x| x.to_le_bytes().to_vec())
}
fn u32_bytes(v: &[u32]) -> Cow<'_, [u8]> {
    le_bytes(v, |x| x.to_le_bytes().to_vec())
}

/// Remove a finished run's resumable state from its work directory `work`: its checkpoint and
/// a refined run's first stage ([`crate::engine::PREFIX`]). Called once the bundle's (or a
/// shard's) files are written and not before, so that a write that fails (a full disk) loses
/// nothing already computed: the same command run again resumes after the last pass.
pub fn discard(work: &Path) -> Result<(), AnalysisError> {
    // Gone already is as good as removed.
    let removed = |path: std::path::PathBuf, done: std::io::Result<()>| match done {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(AnalysisError::Io { path, source })
        }
        _ => Ok(()),
    };
    let file = work.join(FILE);
    removed(file.clone(), std::fs::remove_file(&file))?;
    let prefix = work.join(crate::engine::PREFIX);
    removed(prefix.clone(), std::fs::remove_dir_all(&prefix))
}

/// Write a checkpoint to `path` atomically from its parts, borrowed: the arrays are streamed to
/// the file from where they are (no copy of the accumulators or the results is made).
pub fn save<'a>(
    path: &Path,
    fingerprint: &str,
    position: Position,
    results: &'a [AnchorResult],
    accumulators: Option<&'a SavedState<'a>>,
) -> Result<(), AnalysisError> {
    let mut arrays: Vec<(String, Dtype, Cow<'a, [u8]>, usize)> = Vec::new();
    let mut push = |name: String, dtype: Dtype, bytes: Cow<'a, [u8]>, elem: usize| {
        let n = bytes.len() / elem;
        arrays.push((name, dtype, bytes, n));
    };
    for (i, r) in results.iter().enumerate() {
        push(format!("res.{i}.mean"), Dtype::F64, f64_bytes(&r.mean), 8);
        push(format!("res.{i}.var"), Dtype::F64, f64_bytes(&r.var), 8);
        if !r.pre_hist.is_empty() {
            push(
                format!("res.{i}.pre_hist"),
                Dtype::U32,
                u32_bytes(&r.pre_hist),
                4,
            );
        }
        for (kind, list) in [
            ("real", &r.real),
            ("baseline", &r.baseline),
            ("null", &r.null),
        ] {
            for (o, m) in list.iter().enumerate() {
                push(
                    format!("res.{i}.{kind}.{o}.max"),
                    Dtype::F32,
                    f32_bytes(&m.max),
                    4,
                );
                push(
                    format!("res.{i}.{kind}.{o}.argmax"),
                    Dtype::U32,
                    u32_bytes(&m.argmax),
                    4,
                );
                push(
                    format!("res.{i}.{kind}.{o}.min"),
                    Dtype::F32,
                    f32_bytes(&m.min),
                    4,
                );
                push(
                    format!("res.{i}.{kind}.{o}.argmin"),
                    Dtype::U32,
                    u32_bytes(&m.argmin),
                    4,
                );
            }
        }
        if let Some(a) = &r.anatomy {
            let p = format!("res.{i}.anat");
            push(format!("{p}.top_val"), Dtype::F32, f32_bytes(&a.top_val), 4);
            push(format!("{p}.top_idx"), Dtype::U32, u32_bytes(&a.top_idx), 4);
            push(
                format!("{p}.best_feature"),
                Dtype::U32,
                u32_bytes(&a.best_feature),
                4,
            );
            push(format!("{p}.best_vr"), Dtype::F32, f32_bytes(&a.best_vr), 4);
            push(
                format!("{p}.top_token"),
                Dtype::U32,
                u32_bytes(&a.top_token),
                4,
            );
            push(
                format!("{p}.top_token_mean"),
                Dtype::F32,
                f32_bytes(&a.top_token_mean),
                4,
            );
            push(format!("{p}.pos_mi"), Dtype::F32, f32_bytes(&a.pos_mi), 4);
        }
        for (j, c) in r.candidates.iter().enumerate() {
            push(
                format!("res.{i}.cand.{j}.val"),
                Dtype::F32,
                f32_bytes(&c.val),
                4,
            );
            push(
                format!("res.{i}.cand.{j}.col"),
                Dtype::U32,
                u32_bytes(&c.col),
                4,
            );
        }
        for (o, m) in r.one_to_one.iter().enumerate() {
            let p = format!("res.{i}.o2o.{o}");
            push(
                format!("{p}.back_max"),
                Dtype::F32,
                f32_bytes(&m.back_max),
                4,
            );
            push(
                format!("{p}.back_argmax"),
                Dtype::U32,
                u32_bytes(&m.back_argmax),
                4,
            );
            push(format!("{p}.partner"), Dtype::U32, u32_bytes(&m.partner), 4);
            push(
                format!("{p}.partner_corr"),
                Dtype::F32,
                f32_bytes(&m.partner_corr),
                4,
            );
            for (k, b) in m.pending.iter().enumerate() {
                push(
                    format!("{p}.pending.{k}"),
                    Dtype::F32,
                    f32_bytes(&b.corr),
                    4,
                );
            }
        }
        for (k, t) in r.tiles.iter().enumerate() {
            push(
                format!("res.{i}.tile.{k}"),
                Dtype::F32,
                f32_bytes(&t.corr),
                4,
            );
        }
    }
    if let Some(acc) = accumulators {
        for (s, m) in acc.moments.iter().enumerate() {
            if let Some(m) = m {
                push(format!("acc.moments.{s}"), Dtype::F64, f64_bytes(m), 8);
            }
        }
        for (k, t) in acc.tiles.iter().enumerate() {
            push(format!("acc.tile.{k}"), Dtype::F64, f64_bytes(t), 8);
        }
        for (s, r) in acc.rows.iter().enumerate() {
            if let Some(r) = r {
                push(format!("acc.rows.{s}"), Dtype::F32, f32_bytes(r), 4);
            }
        }
        for (k, h) in acc.hists.iter().enumerate() {
            push(format!("acc.hist.{k}"), Dtype::U32, u32_bytes(h), 4);
        }
        for (k, a) in acc.anatomy.iter().enumerate() {
            let p = format!("acc.anat.{k}");
            for (j, part) in a.parts.iter().enumerate() {
                let q = format!("{p}.{j}");
                let part: &'a AnatomyPart<'a> = part;
                push(format!("{q}.sums"), Dtype::F64, f64_bytes(&part.sums), 8);
                push(format!("{q}.shift"), Dtype::F32, f32_bytes(&part.shift), 4);
                push(
                    format!("{q}.top_val"),
                    Dtype::F32,
                    f32_bytes(&part.top_val),
                    4,
                );
                push(
                    format!("{q}.top_idx"),
                    Dtype::U32,
                    u32_bytes(&part.top_idx),
                    4,
                );
                push(
                    format!("{q}.active"),
                    Dtype::U32,
                    u32_bytes(&part.active),
                    4,
                );
            }
            let counts: Vec<f64> = a.feature_count.iter().map(|&c| c as f64).collect();
            push(
                format!("{p}.feature_count"),
                Dtype::F64,
                Cow::Owned(f64_bytes(&counts).into_owned()),
                8,
            );
            let totals: Vec<f64> = a.pos_total.iter().map(|&c| c as f64).collect();
            let totals = Cow::Owned(f64_bytes(&totals).into_owned());
            push(format!("{p}.pos_total"), Dtype::F64, totals, 8);
        }
    }
    let meta = Meta {
        fingerprint: fingerprint.to_owned(),
        position,
        count: accumulators.map(|a| a.count),
        moments: accumulators
            .map(|a| a.moments.iter().map(Option::is_some).collect())
            .unwrap_or_default(),
        n_tiles: accumulators.map_or(0, |a| a.tiles.len()),
        rows: accumulators
            .map(|a| a.rows.iter().map(Option::is_some).collect())
            .unwrap_or_default(),
        n_hists: accumulators.map_or(0, |a| a.hists.len()),
        n_anatomy: accumulators.map_or(0, |a| a.anatomy.len()),
        anatomy_parts: accumulators
            .map(|a| a.anatomy.iter().map(|s| s.parts.len()).collect())
            .unwrap_or_default(),
        anchors: results
            .iter()
            .map(|r| AnchorMeta {
                anchor: r.anchor,
                others: r.others.clone(),
                tiles: r
                    .tiles
                    .iter()
                    .map(|t| (t.other, t.layer_a, t.layer_b))
                    .collect(),
                anatomy: r.anatomy.is_some(),
                candidates: r.candidates.len(),
                candidate_k: r.candidates.first().map_or(0, |c| c.k),
                pending: r
                    .one_to_one
                    .iter()
                    .map(|m| m.pending.iter().map(|b| (b.layer, b.filled)).collect())
                    .collect(),
                null: !r.null.is_empty(),
            })
            .collect(),
    };
    let views: Vec<(String, TensorView<'_>)> = arrays
        .iter()
        .map(|(name, dtype, bytes, n)| {
            TensorView::new(*dtype, vec![*n], bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| AnalysisError::Invalid(format!("checkpoint tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let info = HashMap::from([(
        "seedscope_checkpoint".to_owned(),
        serde_json::to_string(&meta).map_err(|e| AnalysisError::Invalid(e.to_string()))?,
    )]);
    seedscope_model::write_file_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, Some(info), tmp).map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// A checkpoint that cannot be read: what is wrong, and what to do.
fn damaged(path: &Path, what: String) -> AnalysisError {
    AnalysisError::Corrupt {
        path: path.to_path_buf(),
        message: format!(
            "{what}: the checkpoint is damaged (a disk that filled, or a copy cut short); \
             delete it to run the analysis from the start"
        ),
    }
}

/// Load the checkpoint at `path` if there is one and it belongs to `fingerprint`. A checkpoint
/// of other models, data or options is an error (it is not silently overwritten).
pub fn load(path: &Path, fingerprint: &str) -> Result<Option<Checkpoint>, AnalysisError> {
    let Some(bytes) = FileBytes::open(path)? else {
        return Ok(None);
    };
    let bad = |m: String| damaged(path, m);
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta: Meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("seedscope_checkpoint"))
        .ok_or_else(|| bad("no seedscope_checkpoint metadata".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(e.to_string())))?;
    if meta.fingerprint != fingerprint {
        return Err(AnalysisError::Invalid(format!(
            "{} belongs to a different analysis (other models, data or options); \
             rerun with the same arguments to resume, or delete it to start over",
            path.display()
        )));
    }
    let results = read_results(&st, &meta, &bad)?;
    drop(st);
    Ok(Some(Checkpoint {
        results,
        file: bytes,
        meta,
        path: path.to_path_buf(),
    }))
}

/// The tensor `name` of `st` as values of `T` ([`values`]).
fn tensor<'a, T: bytemuck::Pod, const N: usize>(
    st: &safetensors::SafeTensors<'a>,
    name: &str,
    from_le: fn([u8; N]) -> T,
    bad: &impl Fn(String) -> AnalysisError,
) -> Result<Cow<'a, [T]>, AnalysisError> {
    let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
    Ok(values(t.data(), from_le))
}

/// The finished passes' results a checkpoint holds.
fn read_results(
    st: &safetensors::SafeTensors<'_>,
    meta: &Meta,
    bad: &impl Fn(String) -> AnalysisError,
) -> Result<Vec<AnchorResult>, AnalysisError> {
    let f64s = |name: &str| tensor(st, name, f64::from_le_bytes, bad).map(Cow::into_owned);
    let f32s = |name: &str| tensor(st, name, f32::from_le_bytes, bad).map(Cow::into_owned);
    let u32s = |name: &str| tensor(st, name, u32::from_le_bytes, bad).map(Cow::into_owned);
    let mut results = Vec::new();
    for (i, a) in meta.anchors.iter().enumerate() {
        let mut lists = Vec::new();
        for kind in ["real", "baseline", "null"] {
            let mut list = Vec::new();
            let held = if kind == "null" { a.null } else { true };
            for o in (0..a.others.len()).filter(|_| held) {
                list.push(Matches {
                    max: f32s(&format!("res.{i}.{kind}.{o}.max"))?,
                    argmax: u32s(&format!("res.{i}.{kind}.{o}.argmax"))?,
                    min: f32s(&format!("res.{i}.{kind}.{o}.min"))?,
                    argmin: u32s(&format!("res.{i}.{kind}.{o}.argmin"))?,
                });
            }
            lists.push(list);
        }
        let null = lists.pop().unwrap_or_default();
        let baseline = lists.pop().unwrap_or_default();
        let real = lists.pop().unwrap_or_default();
        let mut tiles = Vec::new();
        for (k, &(other, layer_a, layer_b)) in a.tiles.iter().enumerate() {
            tiles.push(SavedTile {
                other,
                layer_a,
                layer_b,
                corr: f32s(&format!("res.{i}.tile.{k}"))?,
            });
        }
        let mut one_to_one = Vec::new();
        for o in 0..a.others.len() {
            let p = format!("res.{i}.o2o.{o}");
            let pending = a.pending.get(o).map(Vec::as_slice).unwrap_or_default();
            one_to_one.push(OneToOne {
                back_max: f32s(&format!("{p}.back_max"))?,
                back_argmax: u32s(&format!("{p}.back_argmax"))?,
                partner: u32s(&format!("{p}.partner"))?,
                partner_corr: f32s(&format!("{p}.partner_corr"))?,
                pending: pending
                    .iter()
                    .enumerate()
                    .map(|(k, &(layer, filled))| {
                        Ok(LayerBlock {
                            layer,
                            filled,
                            corr: f32s(&format!("{p}.pending.{k}"))?,
                        })
                    })
                    .collect::<Result<_, AnalysisError>>()?,
            });
        }
        results.push(AnchorResult {
            one_to_one,
            anchor: a.anchor,
            others: a.others.clone(),
            real,
            baseline,
            null,
            mean: f64s(&format!("res.{i}.mean"))?,
            var: f64s(&format!("res.{i}.var"))?,
            pre_hist: if st.names().iter().any(|n| *n == format!("res.{i}.pre_hist")) {
                u32s(&format!("res.{i}.pre_hist"))?
            } else {
                Vec::new()
            },
            anatomy: if a.anatomy {
                let p = format!("res.{i}.anat");
                Some(crate::anatomy::AnatomyResult {
                    k: crate::anatomy::TOP_K,
                    top_val: f32s(&format!("{p}.top_val"))?,
                    top_idx: u32s(&format!("{p}.top_idx"))?,
                    best_feature: u32s(&format!("{p}.best_feature"))?,
                    best_vr: f32s(&format!("{p}.best_vr"))?,
                    top_token: u32s(&format!("{p}.top_token"))?,
                    top_token_mean: f32s(&format!("{p}.top_token_mean"))?,
                    pos_mi: f32s(&format!("{p}.pos_mi"))?,
                })
            } else {
                None
            },
            tiles,
            candidates: (0..a.candidates)
                .map(|j| {
                    Ok(Candidates {
                        k: a.candidate_k,
                        val: f32s(&format!("res.{i}.cand.{j}.val"))?,
                        col: u32s(&format!("res.{i}.cand.{j}.col"))?,
                    })
                })
                .collect::<Result<_, AnalysisError>>()?,
        });
    }
    Ok(results)
}
