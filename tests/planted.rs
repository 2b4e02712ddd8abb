//! GPT-2 small's widths at reduced depth, with planted twins: seed-a, seed-b (seed-a's MLP
//! neurons permuted, with a little noise) and an independent seed-c, built here from the same
//! counter-based hash `scripts/make_planted_reference.py` uses, so the numpy float64 reference
//! it committed (`tests/fixtures/planted/reference.safetensors`) is of these very models.
//!
//! A refined run with a budget that splits its first stage into passes must find every planted
//! twin, give the reference's correlations at the best matches, and run each model once per
//! block of each stage. An exhaustive run must give the reference's one-to-one matching: mutual
//! best matches and scipy's assignment of each layer's neurons.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{fixture, temp_dir};
use seedscope_analysis::plan::activation_bytes;
use seedscope_analysis::{AnalysisOptions, Family, Outcome, Refine, Run, Shape, TokenSet};
use seedscope_model::{BackendKind, ComputeDevice, LoadedModel};

const D: usize = 768;
const HEADS: usize = 12;
const D_MLP: usize = 3072;
const LAYERS: usize = 2;
const VOCAB: usize = 512;
const POSITIONS: usize = 64;
const ROWS: usize = 12;
const SEQ: usize = 32;
const MAX_LEVEL: f64 = 0.3;

fn splitmix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values in [0, 1) for tensor number `tensor` of model seed `seed` (53 bits).
fn uniform(seed: u64, tensor: u64, n: usize) -> Vec<f64> {
    let key = (seed * 4096 + tensor) << 32;
    (0..n as u64)
        .map(|i| (splitmix(i ^ key) >> 11) as f64 / 2f64.powi(53))
        .collect()
}

/// Uniform weights of std `0.02`.
fn weight(seed: u64, tensor: u64, n: usize) -> Vec<f32> {
    uniform(seed, tensor, n)
        .into_iter()
        .map(|u| ((u - 0.5) * (0.02 * 12f64.sqrt())) as f32)
        .collect()
}

type Weights = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// A model's weights in the Hugging Face GPT-2 layout (Conv1D: `[in, out]`).
fn init(seed: u64) -> Weights {
    let mut w = Weights::new();
    let mut t = 0u64;
    let mut next = |shape: Vec<usize>| {
        t += 1;
        (weight(seed, t - 1, shape.iter().product()), shape)
    };
    w.insert("transformer.wte.weight".into(), next(vec![VOCAB, D]));
    w.insert("transformer.wpe.weight".into(), next(vec![POSITIONS, D]));
    let fill = |v: f32, n: usize| (vec![v; n], vec![n]);
    for l in 0..LAYERS {
        let h = format!("transformer.h.{l}");
        w.insert(format!("{h}.ln_1.weight"), fill(1.0, D));
        w.insert(format!("{h}.ln_1.bias"), fill(0.0, D));
        w.insert(format!("{h}.attn.c_attn.weight"), next(vec![D, 3 * D]));
        w.insert(format!("{h}.attn.c_attn.bias"), fill(0.0, 3 * D));
        w.insert(format!("{h}.attn.c_proj.weight"), next(vec![D, D]));
        w.insert(format!("{h}.attn.c_proj.bias"), fill(0.0, D));
        w.insert(format!("{h}.ln_2.weight"), fill(1.0, D));
        w.insert(format!("{h}.ln_2.bias"), fill(0.0, D));
        w.insert(format!("{h}.mlp.c_fc.weight"), next(vec![D, D_MLP]));
        w.insert(format!("{h}.mlp.c_fc.bias"), fill(0.0, D_MLP));
        w.insert(format!("{h}.mlp.c_proj.weight"), next(vec![D_MLP, D]));
        w.insert(format!("{h}.mlp.c_proj.bias"), fill(0.0, D));
    }
    w.insert("transformer.ln_f.weight".into(), fill(1.0, D));
    w.insert("transformer.ln_f.bias".into(), fill(0.0, D));
    w
}

/// `base` with each layer's MLP neurons permuted and noised, and per layer where each of
/// base's neurons went.
fn planted(base: &Weights, seed: u64) -> (Weights, Vec<Vec<usize>>) {
    let mut w = base.clone();
    let mut twins = Vec::new();
    for l in 0..LAYERS {
        let h = format!("transformer.h.{l}.mlp");
        let t = 100 + 4 * l as u64;
        let u = uniform(seed, t, D_MLP);
        let mut perm: Vec<usize> = (0..D_MLP).collect();
        perm.sort_by(|&a, &b| u[a].total_cmp(&u[b]));
        let level: Vec<f32> = uniform(seed, t + 1, D_MLP)
            .into_iter()
            .map(|x| (x * MAX_LEVEL) as f32)
            .collect();
        let noise_in = weight(seed, t + 2, D * D_MLP);
        let noise_out = weight(seed, t + 3, D_MLP * D);
        let w_in = &base[&format!("{h}.c_fc.weight")].0;
        let w_out = &base[&format!("{h}.c_proj.weight")].0;
        let mut new_in = vec![0f32; D * D_MLP];
        let mut new_out = vec![0f32; D_MLP * D];
        for (j, &i) in perm.iter().enumerate() {
            let lv = level[i];
            for k in 0..D {
                new_in[k * D_MLP + j] = w_in[k * D_MLP + i] + noise_in[k * D_MLP + j] * lv;
                new_out[j * D + k] = w_out[i * D + k] + noise_out[j * D + k] * lv;
            }
        }
        w.insert(format!("{h}.c_fc.weight"), (new_in, vec![D, D_MLP]));
        w.insert(format!("{h}.c_proj.weight"), (new_out, vec![D_MLP, D]));
        let mut twin = vec![0; D_MLP];
        for (j, &i) in perm.iter().enumerate() {
            twin[i] = j;
        }
        twins.push(twin);
    }
    (w, twins)
}

/// Write `w` as a Hugging Face GPT-2 directory.
fn save(w: &Weights, dir: &Path) {
    let shape = common::Gpt2Shape {
        d: D,
        heads: HEADS,
        d_mlp: D_MLP,
        layers: LAYERS,
        positions: POSITIONS,
        vocab: VOCAB,
    };
    common::write_gpt2(dir, w, &shape);
}

struct Reference {
    tensors: HashMap<String, Vec<f64>>,
}

impl Reference {
    fn load() -> Self {
        let bytes = std::fs::read(fixture("planted/reference.safetensors")).expect("reference");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let values = match v.dtype() {
                    safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(v.data())
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    safetensors::Dtype::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(v.data())
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    safetensors::Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(v.data()),
                    d => panic!("{name}: unexpected {d:?}"),
                };
                (name, values)
            })
            .collect();
        Self { tensors }
    }

    fn get(&self, name: &str) -> &[f64] {
        &self.tensors[name]
    }
}

fn tokens() -> TokenSet {
    let ids: Vec<u32> = (0..(ROWS * SEQ) as u64)
        .map(|i| (splitmix(i ^ (7 << 40)) % VOCAB as u64) as u32)
        .enumerate()
        .map(|(i, id)| if i % SEQ == 0 { 0 } else { id })
        .collect();
    TokenSet {
        ids,
        n_rows: ROWS,
        seq_len: SEQ,
        drop_ids: vec![0],
    }
}

/// The three planted models, saved under a fresh directory `tag` and loaded on the CPU, with
/// the planted permutation (checked against the reference's).
fn planted_models(
    tag: &str,
    reference: &Reference,
) -> (common::TempDir, Vec<LoadedModel>, Vec<Vec<usize>>) {
    let tokens = tokens();
    let expected: Vec<f64> = tokens.ids.iter().map(|&i| i as f64).collect();
    assert_eq!(
        reference.get("tokens"),
        expected,
        "the hash gives the reference's tokens"
    );
    let dir = temp_dir(tag);
    let a = init(1);
    let (b, twins) = planted(&a, 2);
    let ref_twin = reference.get("twin");
    for (l, t) in twins.iter().enumerate() {
        for (i, &j) in t.iter().enumerate() {
            assert_eq!(ref_twin[l * D_MLP + i] as usize, j, "the same permutation");
        }
    }
    save(&a, &dir.join("seed-a"));
    save(&b, &dir.join("seed-b"));
    save(&init(3), &dir.join("seed-c"));
    let dev = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    let models: Vec<LoadedModel> = ["seed-a", "seed-b", "seed-c"]
        .iter()
        .map(|m| LoadedModel::load_on(&dir.join(m), &dev, burn::tensor::FloatDType::F32))
        .collect::<Result<_, _>>()
        .expect("load");
    (dir, models, twins)
}

/// Run `options` over the planted models; also the number of passes of each stage.
fn run_planted(
    dir: &Path,
    models: &[LoadedModel],
    options: &AnalysisOptions,
) -> (seedscope_analysis::Results, Vec<usize>) {
    let dev = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    let tokens = tokens();
    let run = Run {
        family: Family {
            models,
            device: &dev,
        },
        tokens: &tokens,
        options,
        fingerprint: "planted".into(),
        work_dir: Some(&dir.join("work")),
        cancel: Arc::new(AtomicBool::new(false)),
        checkpoint_every: Duration::from_secs(3600),
        rotations: None,
        anatomy: None,
    };
    let mut stage_passes = Vec::new();
    let r = match run
        .run(|p| {
            if stage_passes.last() != Some(&p.passes) {
                stage_passes.push(p.passes);
            }
        })
        .expect("runs")
    {
        Outcome::Done(r) => *r,
        Outcome::Interrupted { .. } => panic!("interrupted"),
    };
    (r, stage_passes)
}

#[test]
fn a_refined_run_at_gpt2_small_width_finds_the_planted_twins_exactly_once_per_block() {
    let reference = Reference::load();
    let (dir, models, twins) = planted_models("planted", &reference);
    // Blocks of 4 rows. The first stage (the first 200 kept tokens) holds its rows on the CPU.
    // The budget leaves room, after the models' weights, the results and one block's
    // activations, for one tile's product and correlations (3,072 x 3,072 x 4 bytes each) and
    // the rows of the anchor and one other stream, not two: each of the four other streams
    // takes a pass, and the later passes reuse the kept activations.
    let mut options = AnalysisOptions {
        block_rows: 4,
        refine: Some(Refine {
            prefix_tokens: 200,
            k: 8,
        }),
        ..AnalysisOptions::default()
    };
    let dev = ComputeDevice::open(BackendKind::Cpu).expect("cpu");
    let tokens = tokens();
    let reserved = Run {
        family: Family {
            models: &models,
            device: &dev,
        },
        tokens: &tokens,
        options: &options,
        fingerprint: String::new(),
        work_dir: None,
        cancel: Arc::new(AtomicBool::new(false)),
        checkpoint_every: Duration::from_secs(3600),
        rotations: None,
        anatomy: None,
    }
    .reserved_bytes(Some(8))
    .expect("reserved");
    let shapes = [Shape {
        n_layers: LAYERS,
        d_mlp: D_MLP,
    }; 3];
    let stream_rows = (200 * LAYERS * D_MLP * 4) as u64;
    // The two other models' rotations for the first stage's streamed baseline.
    let rotations = (2 * LAYERS * D_MLP * D_MLP * 4) as u64;
    options.memory_budget = reserved
        + rotations
        + activation_bytes(&shapes, 2, 4 * SEQ, dev.statistics_on_host())
        + 2 * (D_MLP * D_MLP * 4) as u64
        + 5 * stream_rows / 2;
    let (r, stage_passes) = run_planted(&dir, &models, &options);
    assert_eq!(r.n_tokens as f64, reference.get("n_tokens")[0]);
    // The first stage: 200 tokens of 31 per row is 7 rows, 2 blocks; the second: 12 rows in
    // 3 blocks. Each model once per block and stage, however many passes the first made.
    assert_eq!(
        stage_passes[0],
        4 + 1,
        "first stage passes {stage_passes:?}"
    );
    assert_eq!(r.cost.forwards, 3 * (2 + 3), "{:?}", r.cost);
    assert!(r.cost.reused > 0);

    let anchor = &r.anchors[0];
    let (ref_max, ref_arg) = (reference.get("max_corr"), reference.get("argmax"));
    let (mut found, mut worst, mut compared) = (0, 0f64, [0usize; 2]);
    for (o, m) in anchor.real.iter().enumerate() {
        for i in 0..LAYERS * D_MLP {
            let k = o * LAYERS * D_MLP + i;
            if m.argmax[i] as f64 == ref_arg[k] {
                worst = worst.max((m.max[i] as f64 - ref_max[k]).abs());
                compared[o] += 1;
            }
            if o == 0 {
                let (l, n) = (i / D_MLP, i % D_MLP);
                found += usize::from(m.argmax[i] as usize == l * D_MLP + twins[l][n]);
            }
        }
    }
    let n = LAYERS * D_MLP;
    eprintln!(
        "planted twins found {found} of {n}; the reference's best match in seed-b for {} and \
         in seed-c for {} of {n} neurons, largest |max_corr - numpy f64| there {worst:.2e}; \
         {:?}",
        compared[0], compared[1], r.cost
    );
    assert_eq!(found, n, "every planted twin is seed-b's best match");
    assert_eq!(compared[0], n);
    // Seed-c's best matches are noise-level maxima that 200 of 370 tokens separate less
    // well: 46 % measured (a missed one is a lower, exact, correlation).
    assert!(compared[1] * 3 > n, "{compared:?}");
    // 5.1e-7 measured.
    assert!(worst < 5e-6, "{worst}");
    // On the candidates, the twins are each other's best matches and the assignment pairs
    // them.
    let o2o = &anchor.one_to_one[0];
    for i in 0..n {
        let (l, k) = (i / D_MLP, i % D_MLP);
        let twin = l * D_MLP + twins[l][k];
        assert_eq!(
            o2o.back_argmax[twin] as usize, i,
            "twin {twin} of {i} points back"
        );
        assert_eq!(o2o.partner[i] as usize, twin, "{i} is assigned its twin");
    }
}

#[test]
fn an_exhaustive_run_gives_the_reference_one_to_one_matching() {
    let reference = Reference::load();
    let (dir, models, twins) = planted_models("planted-exhaustive", &reference);
    // After the models' 175 MB of weights, 500 MiB holds a few of the 16 layer-pair tiles'
    // sums (each 3,072 x 3,072 x 8 bytes) per pass; each pass ends with the same-layer blocks
    // read back and assigned.
    let options = AnalysisOptions {
        block_rows: 4,
        memory_budget: 500 << 20,
        permutation_null: true,
        ..AnalysisOptions::default()
    };
    let (r, stage_passes) = run_planted(&dir, &models, &options);
    assert!(stage_passes[0] > 1, "passes {stage_passes:?}");
    // The permutation null is the reference's (each block's tokens rotated as numpy replays
    // it), and sits far below the rotation baseline: a rotated mixture of the other seed's
    // neurons keeps the tokens aligned, a shifted order does not.
    let n = LAYERS * D_MLP;
    let ref_null = reference.get("null_max_corr");
    let mut null_err = 0f64;
    let (mut mean_null, mut mean_base, mut mean_real) = ([0f64; 2], [0f64; 2], [0f64; 2]);
    for o in 0..2 {
        for i in 0..n {
            null_err =
                null_err.max((r.anchors[0].null[o].max[i] as f64 - ref_null[o * n + i]).abs());
            mean_null[o] += r.anchors[0].null[o].max[i] as f64 / n as f64;
            mean_base[o] += r.anchors[0].baseline[o].max[i] as f64 / n as f64;
            mean_real[o] += r.anchors[0].real[o].max[i] as f64 / n as f64;
        }
    }
    let rows = seedscope_analysis::bundle::neuron_rows(
        &r.anchors[0],
        &["seed-a", "seed-b", "seed-c"].map(String::from),
        D_MLP,
        0.5,
        &Default::default(),
    );
    let over_base = rows.iter().filter(|(r, _)| r.excess_corr > 0.5).count();
    let over_null = rows
        .iter()
        .filter(|(r, _)| r.excess_over_null > 0.5)
        .count();
    eprintln!(
        "permutation null within {null_err:.2e} of numpy; mean best correlation (seed-b, \
         seed-c): real {mean_real:.3?}, rotation baseline {mean_base:.3?}, permutation null \
         {mean_null:.3?}; excess > 0.5 over the baseline for {over_base} of {n}, over the null \
         for {over_null}"
    );
    assert!(null_err < 5e-6, "{null_err}");
    let anchor = &r.anchors[0];
    // Mutual best matches, except where a row's or a column's best and second-best
    // correlations are too close for the float64-vs-float64 difference of two summation
    // orders to decide.
    let (back, back_gap, row_gap) = (
        reference.get("back_argmax"),
        reference.get("back_gap"),
        reference.get("row_gap"),
    );
    let mut skipped = 0;
    for (o, (m, o2o)) in anchor.real.iter().zip(&anchor.one_to_one).enumerate() {
        for j in 0..n {
            if back_gap[o * n + j] < 1e-6 {
                skipped += 1;
                continue;
            }
            assert_eq!(
                o2o.back_argmax[j] as f64,
                back[o * n + j],
                "column {j} of other {o}"
            );
        }
        for i in 0..n {
            let j = m.argmax[i] as usize;
            let tied = row_gap[o * n + i] < 1e-6 || back_gap[o * n + j] < 1e-6;
            let mutual = o2o.back_argmax[j] as usize == i;
            let ref_mutual =
                back[o * n + j] as usize == i && reference.get("argmax")[o * n + i] as usize == j;
            if !tied {
                assert_eq!(mutual, ref_mutual, "neuron {i}, other {o}");
            }
        }
    }
    let mutual_all = (0..n)
        .filter(|&i| {
            anchor
                .real
                .iter()
                .zip(&anchor.one_to_one)
                .all(|(m, o)| o.back_argmax[m.argmax[i] as usize] as usize == i)
        })
        .count();
    let ref_mutual_all = reference
        .get("mutual_best")
        .iter()
        .filter(|&&c| c == 2.0)
        .count();
    // The assignment: the optimum is unique in value; its total per layer is scipy's within
    // the correlations' error, the twins are seed-b's partners, and where the partner is
    // scipy's its correlation is the reference's.
    let totals = reference.get("assign_total");
    let (ref_partner, ref_corr) = (reference.get("partner"), reference.get("assignment_corr"));
    let (mut worst_total, mut same, mut worst_corr) = (0f64, 0, 0f64);
    for (o, o2o) in anchor.one_to_one.iter().enumerate() {
        for l in 0..LAYERS {
            let total: f64 = (l * D_MLP..(l + 1) * D_MLP)
                .map(|i| {
                    assert_eq!(
                        o2o.partner[i] as usize / D_MLP,
                        l,
                        "partner of {i} in its layer"
                    );
                    o2o.partner_corr[i] as f64
                })
                .sum();
            worst_total = worst_total.max((total - totals[o * LAYERS + l]).abs());
        }
        same += (0..n)
            .filter(|&i| o2o.partner[i] as f64 == ref_partner[o * n + i])
            .count();
    }
    for i in 0..n {
        let (l, k) = (i / D_MLP, i % D_MLP);
        assert_eq!(
            anchor.one_to_one[0].partner[i] as usize,
            l * D_MLP + twins[l][k]
        );
        if (0..2).all(|o| anchor.one_to_one[o].partner[i] as f64 == ref_partner[o * n + i]) {
            let mean = anchor
                .one_to_one
                .iter()
                .map(|o| o.partner_corr[i] as f64)
                .sum::<f64>()
                / 2.0;
            worst_corr = worst_corr.max((mean - ref_corr[i]).abs());
        }
    }
    eprintln!(
        "one-to-one: mutual best in both others for {mutual_all} of {n} (reference \
         {ref_mutual_all}), {skipped} near-tied columns skipped; assignment totals within \
         {worst_total:.2e} of scipy's, partners scipy's for {same} of {}, their mean \
         correlation within {worst_corr:.2e}",
        2 * n
    );
    assert!(
        mutual_all.abs_diff(ref_mutual_all) <= skipped,
        "{mutual_all} vs {ref_mutual_all}"
    );
    // Measured: 9.9e-6, every partner scipy's, 4.2e-7.
    assert!(worst_total < 1e-4, "{worst_total}");
    assert!(same * 100 >= 2 * n * 99, "{same}");
    assert!(worst_corr < 5e-6, "{worst_corr}");
}
