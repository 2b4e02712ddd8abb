//! `seedscope bench-refine`: candidate refinement against the exhaustive computation on the
//! same models and data: time of each, and how far the refined numbers are from the exact ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use seedscope_analysis::bundle::{Dtype, read_tensor};
use seedscope_analysis::job::{JobEnd, run_analysis};
use seedscope_analysis::{AnalysisOptions, Bundle, Refine};

/// Options of `seedscope bench-refine`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The analysis to run both ways (models, data, backend, ...); its `--refine` and
    /// `--candidates` set the refined run. `--out` is the directory for both bundles
    /// (`exhaustive/`, `refined/`).
    #[command(flatten)]
    pub analysis: crate::analyze::Args,
    /// Keep an existing `exhaustive/` bundle from an earlier run (it must be of the same models,
    /// data and options: checked against the refined bundle's manifest).
    #[arg(long)]
    pub reuse_exhaustive: bool,
}

/// One bundle's tensors compared here, anchor model 0.
struct Numbers {
    max: Vec<f32>,
    argmax: Vec<(i32, i32)>,
    baseline: Vec<f32>,
    excess: Vec<f32>,
    threshold: f64,
}

fn numbers(dir: &Path) -> Result<Numbers> {
    let path = dir.join("correlation.safetensors");
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not safetensors", path.display()))?;
    let len = |name: &str| -> Result<usize> {
        Ok(st
            .tensor(name)
            .with_context(|| format!("{}: no {name}", path.display()))?
            .shape()
            .iter()
            .product())
    };
    let n = len("max_corr")?;
    let w = len("excess_corr")?;
    let layer: Vec<i32> = read_tensor(&st, "max_corr_layer", &path, n, Dtype::I32)?;
    let neuron: Vec<i32> = read_tensor(&st, "max_corr_neuron", &path, n, Dtype::I32)?;
    Ok(Numbers {
        max: read_tensor(&st, "max_corr", &path, n, Dtype::F32)?,
        argmax: layer.into_iter().zip(neuron).collect(),
        baseline: read_tensor(&st, "baseline_max_corr", &path, n, Dtype::F32)?,
        excess: read_tensor(&st, "excess_corr", &path, w, Dtype::F32)?,
        threshold: Bundle::read(dir)?.manifest.options.threshold,
    })
}

fn run_once(args: &crate::analyze::Args, out: PathBuf, refine: Option<Refine>) -> Result<f64> {
    let mut request = args.request()?;
    request.out = out;
    request.refine = refine;
    let t = Instant::now();
    match run_analysis(&request, Arc::new(AtomicBool::new(false)), |_| {})? {
        JobEnd::Written(_) => Ok(t.elapsed().as_secs_f64()),
        JobEnd::Interrupted(p) => bail!("interrupted; checkpoint at {}", p.display()),
    }
}

/// Run both analyses and print the comparison (one JSON line).
pub fn run(args: &Args) -> Result<()> {
    let a = &args.analysis;
    let Some(prefix) = a.refine else {
        bail!("give the refined run's prefix with --refine N (and --candidates K)");
    };
    let refine = Refine {
        prefix_tokens: prefix,
        k: a.candidates.max(1),
    };
    let exh_dir = a.out.join("exhaustive");
    let ref_dir = a.out.join("refined");
    let reused = args.reuse_exhaustive && exh_dir.join("manifest.json").is_file();
    let t_exh = if reused {
        let m = Bundle::read(&exh_dir)?.manifest;
        eprintln!(
            "reusing {} ({:.1} s when it ran)",
            exh_dir.display(),
            m.seconds
        );
        m.seconds
    } else {
        eprintln!("exhaustive run -> {}", exh_dir.display());
        run_once(a, exh_dir.clone(), None)?
    };
    eprintln!(
        "refined run (prefix {prefix}, k {}) -> {}",
        refine.k,
        ref_dir.display()
    );
    let t_ref = run_once(a, ref_dir.clone(), Some(refine))?;
    let (me, mr) = (
        Bundle::read(&exh_dir)?.manifest,
        Bundle::read(&ref_dir)?.manifest,
    );
    let unrefined = AnalysisOptions {
        refine: None,
        ..mr.options.clone()
    };
    if me.models != mr.models
        || me.data_sha256 != mr.data_sha256
        || me.n_tokens != mr.n_tokens
        || unrefined != me.options
    {
        bail!(
            "{} is not the same analysis as the refined run (models, data or options differ)",
            exh_dir.display()
        );
    }
    let (e, r) = (numbers(&exh_dir)?, numbers(&ref_dir)?);
    if e.max.len() != r.max.len() || e.excess.len() != r.excess.len() {
        bail!("the two bundles have different shapes");
    }
    let max_dev = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    // A candidate's correlation is exact, so a lower maximum means the best match was not
    // among the candidates.
    let missed = |x: &[f32], y: &[f32]| x.iter().zip(y).filter(|(a, b)| **b < **a - 1e-4).count();
    let missed_real = missed(&e.max, &r.max);
    let missed_base = missed(&e.baseline, &r.baseline);
    let argmax_changed = e
        .argmax
        .iter()
        .zip(&r.argmax)
        .filter(|(a, b)| a != b)
        .count();
    let thr = e.threshold as f32;
    let (mut flips, mut flips_far) = (0, 0);
    for (x, y) in e.excess.iter().zip(&r.excess) {
        if (*x > thr) != (*y > thr) {
            flips += 1;
            if (x - thr).abs() > 0.01 {
                flips_far += 1;
            }
        }
    }
    let universal = |v: &[f32]| v.iter().filter(|&&x| x > thr).count();
    let line = serde_json::json!({
        "neurons": e.excess.len(),
        "pairs_per_stream": e.max.len(),
        "prefix_tokens": prefix,
        "k": refine.k,
        "seconds_exhaustive": t_exh,
        "seconds_refined": t_ref,
        "speedup": t_exh / t_ref,
        "max_abs_dev_max_corr": max_dev(&e.max, &r.max),
        "max_abs_dev_baseline": max_dev(&e.baseline, &r.baseline),
        "max_abs_dev_excess": max_dev(&e.excess, &r.excess),
        "best_match_missed": missed_real,
        "best_match_missed_frac": missed_real as f64 / e.max.len().max(1) as f64,
        "baseline_missed": missed_base,
        "baseline_missed_frac": missed_base as f64 / e.baseline.len().max(1) as f64,
        "argmax_changed": argmax_changed,
        "universal_exhaustive": universal(&e.excess),
        "universal_refined": universal(&r.excess),
        "universal_flips": flips,
        "universal_flips_beyond_0.01": flips_far,
    });
    println!("{line}");
    Ok(())
}
