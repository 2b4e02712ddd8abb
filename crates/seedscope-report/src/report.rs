//! `seedscope report`: a bundle's figures as PNG and SVG, a page per neuron family with its best
//! examples, and an `index.html` that links them. Everything comes from the bundle (no model is
//! loaded). Written into `<out>.partial` and put in place when complete.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seedscope_analysis::bundle::{
    AnatomyFile, Bundle, BundleSource, CORRELATION, Dtype, NEURONS, NeuronRow, PCT_COLUMNS,
    TOKENIZER, VOCAB_MOMENTS, family_counts, layer_percentiles, partial_dir, read_tensor,
};
use seedscope_analysis::intervene::{Interventions, Metrics};
use seedscope_analysis::stats::universal_counts;
use seedscope_data::TextTokenizer;

use crate::{
    Bars, Curve, Curves, Draw, LayerQuantiles, Overview, Percentiles, Point, ReportError, Scatter,
    ScatterLabels, png, svg,
};

/// What a report wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The figures' base names (each as `.png` and `.svg`).
    pub figures: Vec<String>,
    /// Family pages, `family-<name>.html`.
    pub families: Vec<String>,
    /// Seeds whose vocabulary statistics fed Fig. 6 (one, the anchor, for bundles that lack
    /// every seed's).
    pub seeds_with_weights: usize,
    /// Notes for the reader (what a bundle lacks, and how to get it).
    pub notes: Vec<String>,
}

/// Write the report of bundle `dir` into `out` (replacing an earlier report only when the new
/// one is complete).
pub fn write_report(dir: &Path, out: &Path) -> Result<ReportSummary, ReportError> {
    let input = Input::read(dir)?;
    let mut page = Page::new(partial_dir(out))?;
    fig2_universality(&input, &mut page)?;
    fig3_percentiles(&input, &mut page)?;
    fig6_vocabulary(&input, &mut page)?;
    fig9_frequency_vs_in_out(&input, &mut page)?;
    entropy_candidates(&input, &mut page)?;
    fig7_interventions(&input, &mut page)?;
    fig8_path_ablations(&input, &mut page)?;
    training(&input, &mut page)?;
    families(&input, &mut page)?;
    page.index(&input)?;
    seedscope_analysis::replace_dir(&page.dir, out)
        .map_err(seedscope_analysis::AnalysisError::from)?;
    Ok(page.summary)
}

/// What the figures read from a bundle: the manifest, the anchor's rows, Fig. 2c's fractions,
/// every seed's vocabulary moments, the anatomy and the tokenizer.
struct Input {
    dir: PathBuf,
    bundle: Bundle,
    /// Indices of the anchor's rows, `layer * d_mlp + neuron` order.
    anchor_rows: Vec<usize>,
    layer_match: Vec<f32>,
    /// `[n_models, n_layers, d_mlp, 4]` (mean, var, skew, kurt), when the bundle has it.
    vocab_moments: Option<Vec<f32>>,
    anatomy: Option<AnatomyFile>,
    tokenizer: Option<TextTokenizer>,
    /// The report's title line.
    title: String,
}

impl Input {
    fn read(dir: &Path) -> Result<Self, ReportError> {
        let source = BundleSource::Dir(dir.to_path_buf());
        let bundle = Bundle::read_from(&source)?;
        let m = &bundle.manifest;
        let (l, d) = (m.n_layers, m.d_mlp);
        let anchor = m.models.first().map(|e| e.name.clone()).unwrap_or_default();
        let anchor_rows: Vec<usize> = (0..bundle.neurons.len())
            .filter(|&i| bundle.neurons[i].model == anchor)
            .collect();
        if anchor_rows.len() != l * d {
            return Err(ReportError::Invalid(format!(
                "{}: {} rows for the anchor {anchor}, expected {}",
                dir.join(NEURONS).display(),
                anchor_rows.len(),
                l * d
            )));
        }
        let cpath = dir.join(CORRELATION);
        let cbytes = source.require(CORRELATION)?;
        let st = safetensors::SafeTensors::deserialize(&cbytes).map_err(|e| {
            seedscope_analysis::AnalysisError::Corrupt {
                path: cpath.clone(),
                message: e.to_string(),
            }
        })?;
        let deepest = (1..m.models.len())
            .map(|o| m.shape_of(o).n_layers)
            .max()
            .unwrap_or(l);
        let layer_match =
            read_tensor(&st, "layer_match_fraction", &cpath, l * deepest, Dtype::F32)?;
        let vocab_moments = match st.tensor(VOCAB_MOMENTS) {
            Ok(_) => Some(read_tensor(
                &st,
                VOCAB_MOMENTS,
                &cpath,
                m.models.len() * l * d * 4,
                Dtype::F32,
            )?),
            Err(_) => None,
        };
        let anatomy = AnatomyFile::read_from(&source, 0, l * d, true)?;
        let tokenizer = match source.read(TOKENIZER)? {
            Some(bytes) => Some(TextTokenizer::from_bytes(&bytes, &dir.join(TOKENIZER))?),
            None => None,
        };
        let n_univ = anchor_rows
            .iter()
            .filter(|&&i| bundle.neurons[i].is_universal)
            .count();
        let title = format!(
            "{} seeds ({}), {} tokens; {} of {} anchor neurons universal ({:.2} %)",
            m.models.len(),
            m.models
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            m.n_tokens,
            n_univ,
            anchor_rows.len(),
            100.0 * n_univ as f64 / anchor_rows.len().max(1) as f64
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            bundle,
            anchor_rows,
            layer_match,
            vocab_moments,
            anatomy,
            tokenizer,
            title,
        })
    }

    /// The anchor's rows.
    fn rows(&self) -> Vec<&NeuronRow> {
        self.anchor_rows
            .iter()
            .map(|&i| &self.bundle.neurons[i])
            .collect()
    }

    /// A statistic of every anchor row.
    fn column(&self, f: fn(&NeuronRow) -> f64) -> Vec<f64> {
        self.rows().into_iter().map(f).collect()
    }

    /// Points `(x, y, universal)` of every anchor row.
    fn points(&self, x: fn(&NeuronRow) -> f64, y: fn(&NeuronRow) -> f64) -> Vec<Point> {
        self.rows()
            .into_iter()
            .map(|r| (x(r), y(r), r.is_universal))
            .collect()
    }
}

/// The report being written: its directory, the figures with their captions, the summary.
struct Page {
    dir: PathBuf,
    captions: Vec<(String, String)>,
    summary: ReportSummary,
}

impl Page {
    /// An empty report in `dir` (a leftover from an interrupted report is cleared).
    fn new(dir: PathBuf) -> Result<Self, ReportError> {
        let io = |source| ReportError::Io {
            path: dir.clone(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        Ok(Self {
            dir,
            captions: Vec::new(),
            summary: ReportSummary {
                figures: Vec::new(),
                families: Vec::new(),
                seeds_with_weights: 0,
                notes: Vec::new(),
            },
        })
    }

    /// Write `figure` as `{name}.svg` and `{name}.png` (`size` in pixels) with its caption.
    fn figure(
        &mut self,
        name: &str,
        caption: &str,
        size: (u32, u32),
        figure: &impl Draw,
    ) -> Result<(), ReportError> {
        self.write(
            &format!("{name}.svg"),
            svg(figure, size.0, size.1)?.as_bytes(),
        )?;
        self.write(&format!("{name}.png"), &png(figure, size.0, size.1)?)?;
        self.summary.figures.push(name.to_string());
        self.captions.push((name.to_string(), caption.to_string()));
        Ok(())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Io { path, source })
    }

    fn note(&mut self, note: impl Into<String>) {
        self.summary.notes.push(note.into());
    }

    /// `index.html`: the title, the family pages, every figure with its caption, the notes.
    fn index(&self, input: &Input) -> Result<(), ReportError> {
        let m = &input.bundle.manifest;
        let mut html = String::new();
        let _ = write!(
            html,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Seedscope report</title>\
             <style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;\
             line-height:1.45}}img{{max-width:100%;border:1px solid #ddd}}figure{{margin:2em 0}}\
             </style></head><body><h1>Seedscope report</h1><p>{}</p><p>Bundle: <code>{}</code>; \
             data: <code>{}</code>; threshold {:.2}; made by Seedscope {}.</p>",
            escape(&input.title),
            escape(&input.dir.display().to_string()),
            escape(&m.data_source),
            m.options.threshold,
            escape(&m.seedscope_version)
        );
        if !self.summary.families.is_empty() {
            html.push_str("<h2>Families</h2><ul>");
            for (family, n, u) in family_counts(&input.rows()) {
                let _ = write!(
                    html,
                    "<li><a href=\"family-{family}.html\">{family}</a>: {n} neurons, {u} \
                     universal</li>"
                );
            }
            html.push_str("</ul>");
        }
        let rows = input.rows();
        if let Some(c) = seedscope_analysis::bundle::mutual_counts(
            &rows,
            m.options.threshold,
            m.models.len().saturating_sub(1),
        ) {
            let _ = write!(
                html,
                "<h2>One-to-one</h2><p>{} of the {} universal neurons ({} of all {}) are their best \
                 match's best match in every other seed (<code>mutual_best</code>); \
                 <code>assignment_corr</code> in <code>neurons.csv</code> is each neuron's mean \
                 correlation with its partners in the one-to-one assignment of its layer.</p>",
                c.universal_mutual, c.universal, c.mutual, c.neurons
            );
        }
        html.push_str("<h2>Figures</h2>");
        for (name, caption) in &self.captions {
            let _ = write!(
                html,
                "<figure><a href=\"{name}.svg\"><img src=\"{name}.png\" alt=\"{name}\"></a>\
                 <figcaption>{} (<a href=\"{name}.svg\">SVG</a>)</figcaption></figure>",
                escape(caption)
            );
        }
        if !self.summary.notes.is_empty() {
            html.push_str("<h2>Notes</h2><ul>");
            for n in &self.summary.notes {
                let _ = write!(html, "<li>{}</li>", escape(n));
            }
            html.push_str("</ul>");
        }
        html.push_str("</body></html>\n");
        self.write("index.html", html.as_bytes())
    }
}

/// Fig. 2: universal neurons per layer, Fig. 2a–c.
fn fig2_universality(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let m = &input.bundle.manifest;
    let per_layer = universal_counts(
        input.rows().iter().map(|r| (r.layer, r.is_universal)),
        m.n_layers,
    );
    let (mean_corr, baseline, excess, max_corr, min_corr) = (
        input.column(|r| r.mean_corr),
        input.column(|r| r.mean_baseline),
        input.column(|r| r.excess_corr),
        input.column(|r| r.max_corr),
        input.column(|r| r.min_corr),
    );
    page.figure(
        "fig2-universality",
        "Universal neurons per layer; Fig. 2a: distributions of the mean best correlation, the \
         rotation baseline and their difference (excess) with the threshold; Fig. 2b: best \
         correlation, max vs min over the other seeds (universal neurons large, orange); \
         Fig. 2c: fraction of each anchor layer's neurons whose best match lies in each layer.",
        (1100, 780),
        &Overview {
            title: &input.title,
            mean_corr: &mean_corr,
            baseline: &baseline,
            excess: &excess,
            max_corr: &max_corr,
            min_corr: &min_corr,
            per_layer: &per_layer,
            layer_match: &input.layer_match,
            threshold: m.options.threshold,
        },
    )
}

/// Fig. 3: where universal neurons sit within their layer.
fn fig3_percentiles(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let rows = input.rows();
    let pcts = layer_percentiles(&rows);
    let stats: Vec<(&str, Vec<f64>)> = PCT_COLUMNS
        .iter()
        .enumerate()
        .map(|(k, (name, _))| {
            let universal = rows
                .iter()
                .zip(&pcts)
                .filter(|(r, _)| r.is_universal)
                .map(|(_, p)| p[k]);
            (*name, universal.collect())
        })
        .collect();
    page.figure(
        "fig3-percentiles",
        "Fig. 3: where universal neurons sit within their layer for each statistic (percentile \
         per layer, scipy kind='rank'; box 25-75 %, whiskers 5-95 %, dashed: 50 = no difference \
         from the rest).",
        (1000, 520),
        &Percentiles {
            title: "Fig. 3: universal neurons' within-layer percentiles",
            stats: &stats,
        },
    )
}

/// Fig. 6a/b: vocabulary kurtosis and skew by layer across every seed (from the bundle's
/// `vocab_moments`; the anchor's rows for bundles without it).
fn fig6_vocabulary(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let m = &input.bundle.manifest;
    let (l, d) = (m.n_layers, m.d_mlp);
    // per_seed[s][layer] = values
    let by_layer = |moment: usize| -> Vec<Vec<Vec<f64>>> {
        match &input.vocab_moments {
            Some(v) => (0..m.models.len())
                .map(|s| {
                    (0..l)
                        .map(|layer| {
                            (0..d)
                                .map(|n| v[((s * l + layer) * d + n) * 4 + moment] as f64)
                                .collect()
                        })
                        .collect()
                })
                .collect(),
            None => {
                let rows = input.rows();
                let f = |r: &NeuronRow| [r.vocab_mean, r.vocab_var, r.vocab_skew, r.vocab_kurt];
                vec![
                    (0..l)
                        .map(|layer| {
                            rows.iter()
                                .filter(|r| r.layer == layer)
                                .map(|r| f(r)[moment])
                                .collect()
                        })
                        .collect(),
                ]
            }
        }
    };
    let (skew, kurt) = (by_layer(2), by_layer(3));
    page.summary.seeds_with_weights = kurt.len();
    if input.vocab_moments.is_none() {
        page.note(
            "the bundle has only the anchor's vocabulary statistics (made by an older \
             Seedscope): Fig. 6 shows one seed; analyse again for every seed's",
        );
    }
    page.figure(
        "fig6a-vocab-kurtosis",
        "Fig. 6a: quantiles of the vocabulary kurtosis of cos(W_U, w_out) by layer (line: mean \
         over seeds, band: min-max over seeds). Prediction and suppression neurons have kurtosis \
         above 10.",
        (800, 480),
        &LayerQuantiles {
            title: "Fig. 6a: vocab kurtosis by layer",
            y_desc: "vocab_kurt",
            per_seed: &kurt,
            log_y: true,
        },
    )?;
    page.figure(
        "fig6b-vocab-skew",
        "Fig. 6b: quantiles of the vocabulary skew by layer (positive: prediction, negative: \
         suppression).",
        (800, 480),
        &LayerQuantiles {
            title: "Fig. 6b: vocab skew by layer",
            y_desc: "vocab_skew",
            per_seed: &skew,
            log_y: false,
        },
    )
}

/// Fig. 9: activation frequency against cos(w_in, w_out).
fn fig9_frequency_vs_in_out(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    page.figure(
        "fig9-frequency-vs-in-out",
        "Fig. 9: activation frequency against cos(w_in, w_out); the paper finds a strong \
         correlation, with the densest neurons' w_in and w_out pointing apart.",
        (800, 520),
        &Scatter {
            title: "Fig. 9: activation frequency vs cos(w_in, w_out)",
            x_desc: "activation frequency",
            y_desc: "cos(w_in, w_out)",
            points: &input.points(|r| r.sparsity, |r| r.in_out_sim),
            labels: ScatterLabels::NEURONS,
        },
    )
}

/// The entropy-neuron candidates: output norm against the share of w_out in W_U's null space.
fn entropy_candidates(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    page.figure(
        "entropy-candidates",
        "Entropy-neuron candidates: output norm against the share of w_out in the near-null \
         space of W_U (its bottom 5 % of singular directions). Neurons far up and right change \
         the final LayerNorm scale, hence the entropy, without changing the logits' order.",
        (800, 520),
        &Scatter {
            title: "Entropy-neuron candidates",
            x_desc: "||w_out||",
            y_desc: "share of ||w_out|| in W_U's null space",
            points: &input.points(|r| r.w_out_norm, |r| r.null_frac),
            labels: ScatterLabels::NEURONS,
        },
    )
}

/// Fig. 7c–f: the entropy-neuron intervention curves, once `seedscope intervene` ran.
fn fig7_interventions(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let iv = match Interventions::read(&input.dir) {
        Ok(Some(iv)) if !iv.curves.is_empty() => iv,
        Ok(_) => {
            page.note(
                "no interventions yet: run `seedscope intervene BUNDLE` for the entropy-neuron \
                 curves (Fig. 7)",
            );
            return Ok(());
        }
        Err(e) => {
            page.note(format!("interventions not shown: {e}"));
            return Ok(());
        }
    };
    type Get = fn(&Metrics) -> f64;
    let metrics: [(&str, &str, Get); 4] = [
        ("(c) final LayerNorm scale", "mean scale", |m| m.scale),
        ("(d) true-token reciprocal rank", "mean 1/(rank+1)", |m| {
            m.reciprocal_rank
        }),
        ("(e) next-token entropy", "mean entropy (nats)", |m| {
            m.entropy
        }),
        ("(f) loss", "mean loss (nats)", |m| m.loss),
    ];
    let panels: Vec<(String, String, f64, Vec<Curve>)> = metrics
        .iter()
        .map(|(name, y, get)| {
            let curves = iv
                .curves
                .iter()
                .map(|c| Curve {
                    label: format!("L{}.{}", c.layer, c.neuron),
                    points: iv
                        .request
                        .values
                        .iter()
                        .zip(&c.metrics)
                        .map(|(&v, m)| (v as f64, get(m)))
                        .collect(),
                    baseline: c.baseline,
                })
                .collect();
            (name.to_string(), y.to_string(), get(&iv.nominal), curves)
        })
        .collect();
    let title = format!(
        "Fig. 7: fixing a neuron's activation, {} ({} tokens; {} baseline neurons)",
        iv.model,
        iv.n_tokens,
        iv.curves.iter().filter(|c| c.baseline).count()
    );
    page.figure(
        "fig7-entropy-interventions",
        "Fig. 7c-f: the neurons' post-activation fixed to each value at every position \
         (seedscope intervene): mean final LayerNorm scale, true-token reciprocal rank, entropy \
         and loss, against random neurons of the last two layers (grey) and the unmodified model \
         (dashed). An entropy neuron raises the scale and the entropy while the rank barely \
         moves.",
        (1100, 760),
        &Curves {
            title: &title,
            x_desc: "fixed activation",
            x_ticks: &[],
            panels: &panels,
            nominal_label: "no intervention",
            baseline_label: "random baseline neurons",
        },
    )
}

/// Universality over training, when the bundle is the last step of a series
/// (`trajectory.json`): the fraction universal per layer against the step, and the mean excess
/// of the neurons universal at the last step against that of the others.
fn training(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let t = match seedscope_analysis::bundle::Trajectory::load(&input.dir) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(()),
        Err(e) => {
            page.note(format!("training trajectory not shown: {e}"));
            return Ok(());
        }
    };
    let fractions = t.fractions(t.threshold);
    let xs = |k: usize| k as f64;
    let mut per_layer: Vec<Curve> = (0..t.n_layers)
        .map(|l| Curve {
            label: format!("layer {l}"),
            points: fractions
                .iter()
                .enumerate()
                .map(|(k, f)| (xs(k), 100.0 * f.1[l]))
                .collect(),
            baseline: false,
        })
        .collect();
    per_layer.push(Curve {
        label: "all layers".into(),
        points: fractions
            .iter()
            .enumerate()
            .map(|(k, f)| (xs(k), 100.0 * f.0))
            .collect(),
        baseline: true,
    });
    let last = t.excess_corr.last().cloned().unwrap_or_default();
    let mean_of = |universal: bool| -> Vec<(f64, f64)> {
        t.excess_corr
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let v: Vec<f64> = s
                    .iter()
                    .zip(&last)
                    .filter(|(_, l)| (**l as f64 > t.threshold) == universal)
                    .map(|(e, _)| *e as f64)
                    .collect();
                (xs(k), v.iter().sum::<f64>() / v.len().max(1) as f64)
            })
            .collect()
    };
    let panels = vec![
        (
            "Universal neurons per layer".to_string(),
            "% universal".to_string(),
            f64::NAN,
            per_layer,
        ),
        (
            "Excess correlation of the last step's universal neurons".to_string(),
            "mean excess".to_string(),
            t.threshold,
            {
                // The last step's universal neurons, when it has any.
                let n = last.iter().filter(|&&e| e as f64 > t.threshold).count();
                let mut curves = vec![Curve {
                    label: "the others".into(),
                    points: mean_of(false),
                    baseline: true,
                }];
                if n > 0 {
                    curves.push(Curve {
                        label: format!("the {n} universal at the last step"),
                        points: mean_of(true),
                        baseline: false,
                    });
                }
                curves
            },
        ),
    ];
    let steps: Vec<String> = t.steps.iter().map(|s| s.label.clone()).collect();
    let title = format!("{}: universality over training", input.title);
    page.figure(
        "training-universality",
        "Universality over training (seedscope analyze --steps): the fraction of the anchor's \
         neurons that are universal at each training step, per layer; and the mean excess \
         correlation, step by step, of the neurons universal at the last step against the \
         others (the threshold dashed).",
        (1100, 460),
        &Curves {
            title: &title,
            x_desc: "training step",
            x_ticks: &steps,
            panels: &panels,
            nominal_label: "threshold",
            baseline_label: "all layers / the others",
        },
    )
}

/// Fig. 8: one scatter per query-only path ablation, once `seedscope intervene --path` ran.
fn fig8_path_ablations(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let list = match seedscope_analysis::path_ablation::read(&input.dir) {
        Ok(list) => list,
        Err(e) => {
            page.note(format!("path ablations not shown: {e}"));
            return Ok(());
        }
    };
    if list.is_empty() {
        page.note(
            "no path ablations yet: run `seedscope intervene BUNDLE --path` for Fig. 8 (a \
             neuron removed from one head's query)",
        );
    }
    for a in &list {
        let (neuron, head) = (
            format!("L{}.{}", a.neuron.0, a.neuron.1),
            format!("L{}H{}", a.head.0, a.head.1),
        );
        let points: Vec<Point> = a
            .points
            .iter()
            .map(|p| (p.0 as f64, p.1 as f64, false))
            .collect();
        let caption = format!(
            "Fig. 8b: the neuron's activation against the change in the head's attention to BOS \
             when the neuron's output is removed from the query only (positions {}..{} of each \
             row, {} positions). Mean attention to BOS {:.4} -> {:.4}, output norm {:.4} -> \
             {:.4}. A deactivation neuron's removal lowers the attention to BOS most where it \
             fires most.",
            a.positions.0,
            a.positions.1,
            a.n_tokens,
            a.mean_bos_attention,
            a.mean_bos_attention_ablated,
            a.mean_z_norm,
            a.mean_z_norm_ablated
        );
        page.figure(
            &format!("fig8-path-ablation-{neuron}-{head}"),
            &caption,
            (800, 520),
            &Scatter {
                title: &format!("Fig. 8: {neuron} removed from head {head}'s query"),
                x_desc: "neuron activation",
                y_desc: "change in attention to BOS",
                points: &points,
                labels: ScatterLabels {
                    unit: "positions",
                    legend: None,
                },
            },
        )?;
    }
    Ok(())
}

/// The neuron families: shares of all and of universal neurons, and a page per family with its
/// best neurons' examples.
fn families(input: &Input, page: &mut Page) -> Result<(), ReportError> {
    let rows = input.rows();
    let counts = family_counts(&rows);
    let Some(anatomy) = input.anatomy.as_ref().filter(|_| !counts.is_empty()) else {
        page.note(
            "the bundle has no anatomy (made by an older Seedscope): no families or examples",
        );
        return Ok(());
    };
    let n_universal = rows.iter().filter(|r| r.is_universal).count();
    let names: Vec<String> = counts.iter().map(|c| c.0.clone()).collect();
    let values: Vec<Vec<f64>> = counts
        .iter()
        .map(|(_, all, universal)| {
            vec![
                100.0 * *all as f64 / rows.len().max(1) as f64,
                100.0 * *universal as f64 / n_universal.max(1) as f64,
            ]
        })
        .collect();
    page.figure(
        "families",
        "Neuron families (best token feature with variance explained > 0.5, else position by \
         mutual information, else unexplained): share of all anchor neurons and of the \
         universal ones.",
        (900, 480),
        &Bars {
            title: "Families: share of neurons (%)",
            y_desc: "% of neurons",
            labels: &names,
            series: &["all neurons", "universal neurons"],
            values: &values,
        },
    )?;
    let d = input.bundle.manifest.d_mlp;
    for family in &names {
        let html = family_page(family, &rows, anatomy, input.tokenizer.as_ref(), d);
        let name = format!("family-{family}.html");
        page.write(&name, html.as_bytes())?;
        page.summary.families.push(name);
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A token as text a reader can see: newlines and tabs escaped, ids for unknown tokens.
fn token_text(tok: Option<&TextTokenizer>, id: i32) -> String {
    if id < 0 {
        return String::new();
    }
    match tok.and_then(|t| t.decode(&[id as u32]).ok()) {
        Some(s) => s.replace('\n', "\\n").replace('\t', "\\t"),
        None => format!("#{id}"),
    }
}

/// Neurons of one family with their best examples, as an HTML page.
fn family_page(
    fam: &str,
    rows: &[&NeuronRow],
    an: &AnatomyFile,
    tok: Option<&TextTokenizer>,
    d: usize,
) -> String {
    const SHOWN: usize = 16;
    const EXAMPLES: usize = 4;
    let mut members: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].family == fam).collect();
    let score = |i: usize| {
        if fam == "position" {
            rows[i].pos_mi
        } else {
            rows[i].best_vr
        }
    };
    // Universal neurons first, then by score.
    members.sort_by(|&a, &b| {
        rows[b]
            .is_universal
            .cmp(&rows[a].is_universal)
            .then(score(b).total_cmp(&score(a)))
    });
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{fam} neurons</title><style>\
         body{{font-family:sans-serif;max-width:1150px;margin:2em auto}}\
         .ex{{font-family:monospace;white-space:pre-wrap;background:#f6f6f6;padding:4px;margin:3px 0}}\
         mark{{background:#f5a35c}}.u{{color:#c05010;font-weight:bold}}</style></head><body>\
         <p><a href=\"index.html\">report</a></p><h1>{fam} neurons</h1><p>{} neurons; the {} \
         shown first are universal ones, then by {}. Each example shows up to {} tokens before \
         and {} after the maximum, which is marked.</p>",
        members.len(),
        members.iter().filter(|&&i| rows[i].is_universal).count(),
        if fam == "position" {
            "mutual information with position"
        } else {
            "variance explained by the best feature"
        },
        an.context.0,
        an.context.1
    );
    let win = an.window();
    for &i in members.iter().take(SHOWN) {
        let r = rows[i];
        let _ = write!(
            h,
            "<h3>L{}.{} {}</h3><p>best feature <b>{}</b> (variance explained {:.3}), position MI \
             {:.3} nats, excess correlation {:.3}, activation frequency {:.3}</p>",
            r.layer,
            r.neuron,
            if r.is_universal {
                "<span class=\"u\">universal</span>"
            } else {
                ""
            },
            escape(&r.best_feature),
            r.best_vr,
            r.pos_mi,
            r.excess_corr,
            r.sparsity
        );
        let n = r.layer * d + r.neuron;
        let nt = seedscope_analysis::anatomy::TOP_TOKENS;
        let tops: Vec<String> = (0..nt)
            .filter_map(|j| {
                let t = an.top_token[n * nt + j];
                (t >= 0).then(|| {
                    format!(
                        "<code>{}</code> {:.2}",
                        escape(&token_text(tok, t)),
                        an.top_token_mean[n * nt + j]
                    )
                })
            })
            .collect();
        let _ = write!(h, "<p>highest mean activation: {}</p>", tops.join(", "));
        for e in 0..an.k.min(EXAMPLES) {
            let v = an.top_val[n * an.k + e];
            if !v.is_finite() {
                continue;
            }
            let w = &an.windows[(n * an.k + e) * win..(n * an.k + e + 1) * win];
            let mut line = String::new();
            for (j, &t) in w.iter().enumerate() {
                let s = escape(&token_text(tok, t));
                if j == an.context.0 {
                    let _ = write!(line, "<mark>{s}</mark>");
                } else {
                    line.push_str(&s);
                }
            }
            let _ = write!(h, "<div class=\"ex\">{v:.2} | {line}</div>");
        }
    }
    h.push_str("</body></html>\n");
    h
}
