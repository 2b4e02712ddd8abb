//! `seedscope intervene`: the entropy-neuron experiment on a bundle's anchor.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use seedscope_analysis::intervene::{InterventionRequest, run_interventions};
use seedscope_model::BackendKind;

/// Options of `seedscope intervene`.
#[derive(clap::Args)]
pub struct Args {
    /// A bundle directory written by `seedscope analyze`; the results go into it
    /// (`interventions.json`).
    pub bundle: PathBuf,
    /// Neurons to fix, e.g. `L1.41,L1.20` (default: the entropy-neuron candidate of the last two
    /// layers and its most antipodal neuron).
    #[arg(long, value_delimiter = ',')]
    pub neurons: Vec<String>,
    /// Values written into the post-activation (default: the paper's -0.17,0,1,...,6).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub values: Vec<f32>,
    /// Random baseline neurons from the last two layers.
    #[arg(long, default_value_t = 20)]
    pub baseline: usize,
    /// Seed of the baseline sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens of the bundle's data to average over (whole rows).
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: u64,
    /// Run the query-only path ablation of a neuron on a later head instead (`L4.3594:L5H0`;
    /// without a value: the neuron with the largest deactivation score and its head).
    #[arg(long, num_args = 0..=1, default_missing_value = "auto")]
    pub path: Option<String>,
    /// Compute backend: auto, cpu or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
}

fn parse_neuron(s: &str) -> Result<(usize, usize)> {
    let t = s.trim().trim_start_matches(['L', 'l']);
    let (a, b) = t
        .split_once(['.', ':'])
        .with_context(|| format!("neuron {s:?}: write it as L<layer>.<neuron>"))?;
    Ok((
        a.parse()
            .with_context(|| format!("neuron {s:?}: bad layer"))?,
        b.parse()
            .with_context(|| format!("neuron {s:?}: bad neuron"))?,
    ))
}

fn parse_pair(s: &str) -> Result<((usize, usize), (usize, usize))> {
    let (n, h) = s
        .split_once(':')
        .with_context(|| format!("pair {s:?}: write it as L<layer>.<neuron>:L<layer>H<head>"))?;
    let (l, head) = h
        .trim()
        .trim_start_matches(['L', 'l'])
        .split_once(['H', 'h'])
        .with_context(|| format!("head {h:?}: write it as L<layer>H<head>"))?;
    Ok((
        parse_neuron(n)?,
        (
            l.parse()
                .with_context(|| format!("head {h:?}: bad layer"))?,
            head.parse()
                .with_context(|| format!("head {h:?}: bad head"))?,
        ),
    ))
}

/// Run and print the curves (or the path ablation).
pub fn run(args: &Args) -> Result<()> {
    if let Some(p) = &args.path {
        let pair = if p == "auto" {
            None
        } else {
            Some(parse_pair(p)?)
        };
        let r = seedscope_analysis::path_ablation::run_path_ablation(
            &args.bundle,
            pair,
            args.max_tokens,
            args.backend,
        )?;
        println!(
            "L{}.{} on head L{}H{} over {} positions ({}..{} of each row): mean activation {:.3}; \
             attention to BOS {:.4} -> {:.4} and output norm {:.4} -> {:.4} with the neuron \
             removed from the query; corr(activation, change) {:.3} and {:.3}",
            r.neuron.0,
            r.neuron.1,
            r.head.0,
            r.head.1,
            r.n_tokens,
            r.positions.0,
            r.positions.1,
            r.mean_activation,
            r.mean_bos_attention,
            r.mean_bos_attention_ablated,
            r.mean_z_norm,
            r.mean_z_norm_ablated,
            r.corr_activation_bos_change,
            r.corr_activation_norm_change
        );
        println!(
            "wrote {}",
            args.bundle
                .join(seedscope_analysis::path_ablation::FILE)
                .display()
        );
        return Ok(());
    }
    let request = InterventionRequest {
        neurons: args
            .neurons
            .iter()
            .map(|s| parse_neuron(s))
            .collect::<Result<_>>()?,
        values: if args.values.is_empty() {
            InterventionRequest::default().values
        } else {
            args.values.clone()
        },
        baseline: args.baseline,
        seed: args.seed,
        max_tokens: args.max_tokens,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::SeqCst));
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} forward passes, ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = run_interventions(&args.bundle, &request, args.backend, cancel.clone(), |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    })?;
    bar.finish_and_clear();
    let done = r.curves.len();
    let all = r.request.neurons.len() + r.baseline_neurons.len();
    println!(
        "{}: {} valid tokens; nominal scale {:.3}, entropy {:.3}, loss {:.3}, reciprocal rank {:.3}",
        r.model,
        r.n_tokens,
        r.nominal.scale,
        r.nominal.entropy,
        r.nominal.loss,
        r.nominal.reciprocal_rank
    );
    println!(
        "value    {}",
        r.request
            .values
            .iter()
            .map(|v| format!("{v:>7.2}"))
            .collect::<String>()
    );
    for c in &r.curves {
        let line = |f: fn(&seedscope_analysis::intervene::Metrics) -> f64| {
            c.metrics
                .iter()
                .map(|m| format!("{:>7.3}", f(m)))
                .collect::<String>()
        };
        println!(
            "L{}.{}{} scale   {}\n{:>w$} entropy {}",
            c.layer,
            c.neuron,
            if c.baseline { " (baseline)" } else { "" },
            line(|m| m.scale),
            "",
            line(|m| m.entropy),
            w = format!(
                "L{}.{}{}",
                c.layer,
                c.neuron,
                if c.baseline { " (baseline)" } else { "" }
            )
            .len()
        );
    }
    if done < all {
        println!("interrupted after {done} of {all} neurons; rerun the same command to resume");
    } else {
        println!(
            "wrote {}",
            args.bundle
                .join(seedscope_analysis::intervene::FILE)
                .display()
        );
    }
    Ok(())
}
