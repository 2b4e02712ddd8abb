//! `seedscope report`: a bundle's figures as PNG and SVG, a page per neuron family with its best
//! examples, and an `index.html` that links them. Written into `<out>.partial` and renamed into
//! place when complete.

use std::fmt::Write as _;
use std::path::Path;

use seedscope_analysis::bundle::{
    AnatomyFile, Bundle, CORRELATION, Dtype, NeuronRow, PCT_COLUMNS, layer_percentiles,
    partial_dir, read_tensor,
};

use crate::{
    Overview, draw_bars, draw_layer_quantiles, draw_overview, draw_percentiles, draw_scatter, png,
    svg,
};

/// What a report wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The figures' base names (each as `.png` and `.svg`).
    pub figures: Vec<String>,
    /// Family pages, `family-<name>.html`.
    pub families: Vec<String>,
    /// Seeds whose weights fed Fig. 6 (the others were not found).
    pub seeds_with_weights: usize,
    /// Notes for the reader (missing models, missing anatomy).
    pub notes: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A token as text a reader can see: newlines and tabs escaped, ids for unknown tokens.
fn token_text(tok: Option<&seedscope_data::TextTokenizer>, id: i32) -> String {
    if id < 0 {
        return String::new();
    }
    match tok.and_then(|t| t.decode(&[id as u32]).ok()) {
        Some(s) => s.replace('\n', "\\n").replace('\t', "\\t"),
        None => format!("#{id}"),
    }
}

/// Write the report of bundle `dir` into `out`.
pub fn write_report(dir: &Path, out: &Path) -> Result<ReportSummary, String> {
    let bundle = Bundle::read(dir).map_err(|e| e.to_string())?;
    let m = &bundle.manifest;
    let (l, d) = (m.n_layers, m.d_mlp);
    let anchor_name = m.models.first().map(|e| e.name.clone()).unwrap_or_default();
    let rows: Vec<&NeuronRow> = bundle
        .neurons
        .iter()
        .filter(|r| r.model == anchor_name)
        .collect();
    if rows.len() != l * d {
        return Err(format!(
            "{}: {} rows for the anchor {anchor_name}, expected {}",
            dir.join(seedscope_analysis::bundle::NEURONS).display(),
            rows.len(),
            l * d
        ));
    }
    let cpath = dir.join(CORRELATION);
    let cbytes = std::fs::read(&cpath).map_err(io(&cpath))?;
    let st = safetensors::SafeTensors::deserialize(&cbytes)
        .map_err(|e| format!("{}: {e}", cpath.display()))?;
    let layer_match: Vec<f32> = read_tensor(&st, "layer_match_fraction", &cpath, l * l, Dtype::F32)
        .map_err(|e| e.to_string())?;
    let anatomy = AnatomyFile::read(dir, 0, l * d, true).map_err(|e| e.to_string())?;
    let tokenizer = m
        .models
        .first()
        .and_then(|e| seedscope_data::TextTokenizer::from_model_dir(Path::new(&e.path)).ok());

    let work = partial_dir(out);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io(&work))?;
    }
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let mut summary = ReportSummary {
        figures: Vec::new(),
        families: Vec::new(),
        seeds_with_weights: 0,
        notes: Vec::new(),
    };
    let mut captions: Vec<(String, String)> = Vec::new();
    macro_rules! figure {
        ($name:expr, $caption:expr, $w:expr, $h:expr, $draw:expr) => {{
            let name: &str = $name;
            let s = svg($w, $h, $draw)?;
            std::fs::write(work.join(format!("{name}.svg")), s)
                .map_err(io(&work.join(format!("{name}.svg"))))?;
            let p = png($w, $h, $draw)?;
            std::fs::write(work.join(format!("{name}.png")), p)
                .map_err(io(&work.join(format!("{name}.png"))))?;
            summary.figures.push(name.to_string());
            captions.push((name.to_string(), $caption.to_string()));
        }};
    }

    // Fig. 2 and the per-layer counts.
    let col = |f: fn(&NeuronRow) -> f64| -> Vec<f64> { rows.iter().map(|r| f(r)).collect() };
    let mut per_layer = vec![(0usize, 0usize); l];
    for r in &rows {
        per_layer[r.layer].1 += 1;
        per_layer[r.layer].0 += usize::from(r.is_universal);
    }
    let n_univ: usize = per_layer.iter().map(|p| p.0).sum();
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
        rows.len(),
        100.0 * n_univ as f64 / rows.len().max(1) as f64
    );
    let (mean_corr, baseline, excess, max_corr, min_corr) = (
        col(|r| r.mean_corr),
        col(|r| r.mean_baseline),
        col(|r| r.excess_corr),
        col(|r| r.max_corr),
        col(|r| r.min_corr),
    );
    let ov = Overview {
        title: &title,
        mean_corr: &mean_corr,
        baseline: &baseline,
        excess: &excess,
        max_corr: &max_corr,
        min_corr: &min_corr,
        per_layer: &per_layer,
        layer_match: &layer_match,
        threshold: m.options.threshold,
    };
    figure!(
        "fig2-universality",
        "Universal neurons per layer; Fig. 2a: distributions of the mean best correlation, the \
         rotation baseline and their difference (excess) with the threshold; Fig. 2b: best \
         correlation, max vs min over the other seeds (universal neurons large, orange); \
         Fig. 2c: fraction of each anchor layer's neurons whose best match lies in each layer.",
        1100,
        780,
        |a| draw_overview(a, &ov)
    );

    // Fig. 3: within-layer percentiles of universal neurons.
    let pcts = layer_percentiles(&rows);
    let stats: Vec<(&str, Vec<f64>)> = PCT_COLUMNS
        .iter()
        .enumerate()
        .map(|(k, (name, _))| {
            (
                *name,
                rows.iter()
                    .zip(&pcts)
                    .filter(|(r, _)| r.is_universal)
                    .map(|(_, p)| p[k])
                    .collect(),
            )
        })
        .collect();
    figure!(
        "fig3-percentiles",
        "Fig. 3: where universal neurons sit within their layer for each statistic (percentile \
         per layer, scipy kind='rank'; box 25-75 %, whiskers 5-95 %, dashed: 50 = no difference \
         from the rest).",
        1000,
        520,
        |a| draw_percentiles(
            a,
            "Fig. 3: universal neurons' within-layer percentiles",
            &stats
        )
    );

    // Fig. 6: vocabulary kurtosis and skew by layer across seeds (weights of every seed found).
    let mut kurt: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut skew: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut anchor_weights = None;
    let cpu = seedscope_model::ComputeDevice::open(seedscope_model::BackendKind::Cpu)
        .map_err(|e| e.to_string())?;
    for e in &m.models {
        let loaded = seedscope_model::LoadedModel::load_on(
            Path::new(&e.path),
            &cpu,
            burn::tensor::FloatDType::F32,
        )
        .and_then(|model| model.processed_weights());
        match loaded {
            Ok(p) => {
                let w = seedscope_analysis::weights::weight_stats(&p);
                let by_layer = |f: fn(&seedscope_analysis::weights::NeuronWeights) -> f64| {
                    (0..l)
                        .map(|layer| w[layer * d..(layer + 1) * d].iter().map(f).collect())
                        .collect::<Vec<Vec<f64>>>()
                };
                kurt.push(by_layer(|n| n.vocab_kurt));
                skew.push(by_layer(|n| n.vocab_skew));
                if anchor_weights.is_none() && e.name == anchor_name {
                    anchor_weights = Some(w);
                }
            }
            Err(err) => summary.notes.push(format!(
                "{}: weights not available for Fig. 6 ({err})",
                e.name
            )),
        }
    }
    if kurt.is_empty() {
        // The anchor's statistics are in the bundle.
        let by_layer = |f: fn(&NeuronRow) -> f64| {
            (0..l)
                .map(|layer| {
                    rows.iter()
                        .filter(|r| r.layer == layer)
                        .map(|r| f(r))
                        .collect()
                })
                .collect::<Vec<Vec<f64>>>()
        };
        kurt.push(by_layer(|r| r.vocab_kurt));
        skew.push(by_layer(|r| r.vocab_skew));
    }
    summary.seeds_with_weights = kurt.len();
    figure!(
        "fig6a-vocab-kurtosis",
        "Fig. 6a: quantiles of the vocabulary kurtosis of cos(W_U, w_out) by layer (line: mean \
         over seeds, band: min-max over seeds). Prediction and suppression neurons have kurtosis \
         above 10.",
        800,
        480,
        |a| draw_layer_quantiles(
            a,
            "Fig. 6a: vocab kurtosis by layer",
            "vocab_kurt",
            &kurt,
            true
        )
    );
    figure!(
        "fig6b-vocab-skew",
        "Fig. 6b: quantiles of the vocabulary skew by layer (positive: prediction, negative: \
         suppression).",
        800,
        480,
        |a| draw_layer_quantiles(
            a,
            "Fig. 6b: vocab skew by layer",
            "vocab_skew",
            &skew,
            false
        )
    );

    // Fig. 9 and the entropy-neuron candidates.
    let fig9: Vec<(f64, f64, bool)> = rows
        .iter()
        .map(|r| (r.sparsity, r.in_out_sim, r.is_universal))
        .collect();
    figure!(
        "fig9-frequency-vs-in-out",
        "Fig. 9: activation frequency against cos(w_in, w_out); the paper finds a strong \
         correlation, with the densest neurons' w_in and w_out pointing apart.",
        800,
        520,
        |a| draw_scatter(
            a,
            "Fig. 9: activation frequency vs cos(w_in, w_out)",
            "activation frequency",
            "cos(w_in, w_out)",
            &fig9,
            crate::ScatterLabels::NEURONS
        )
    );
    // From the anchor's weights when they are at hand (bundles made before null_frac existed).
    let entropy: Vec<(f64, f64, bool)> = match &anchor_weights {
        Some(w) => rows
            .iter()
            .zip(w)
            .map(|(r, w)| (w.w_out_norm, w.null_frac, r.is_universal))
            .collect(),
        None => rows
            .iter()
            .map(|r| (r.w_out_norm, r.null_frac, r.is_universal))
            .collect(),
    };
    figure!(
        "entropy-candidates",
        "Entropy-neuron candidates: output norm against the share of w_out in the near-null \
         space of W_U (its bottom 5 % of singular directions). Neurons far up and right change \
         the final LayerNorm scale, hence the entropy, without changing the logits' order.",
        800,
        520,
        |a| draw_scatter(
            a,
            "Entropy-neuron candidates",
            "||w_out||",
            "share of ||w_out|| in W_U's null space",
            &entropy,
            crate::ScatterLabels::NEURONS
        )
    );

    // The entropy-neuron intervention curves (Fig. 7c-f), when `seedscope intervene` ran.
    match seedscope_analysis::intervene::Interventions::read(dir) {
        Ok(Some(iv)) if !iv.curves.is_empty() => {
            type Get = fn(&seedscope_analysis::intervene::Metrics) -> f64;
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
            let panels: Vec<(String, String, f64, Vec<crate::Curve>)> = metrics
                .iter()
                .map(|(name, y, get)| {
                    let curves = iv
                        .curves
                        .iter()
                        .map(|c| crate::Curve {
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
            figure!(
                "fig7-entropy-interventions",
                "Fig. 7c-f: the neurons' post-activation fixed to each value at every position \
                 (seedscope intervene): mean final LayerNorm scale, true-token reciprocal rank, \
                 entropy and loss, against random neurons of the last two layers (grey) and the \
                 unmodified model (dashed). An entropy neuron raises the scale and the entropy \
                 while the rank barely moves.",
                1100,
                760,
                |a| crate::draw_curves(a, &title, "fixed activation", &panels)
            );
        }
        Ok(_) => summary.notes.push(
            "no interventions yet: run `seedscope intervene BUNDLE` for the entropy-neuron \
             curves (Fig. 7)"
                .into(),
        ),
        Err(e) => summary.notes.push(format!("interventions not shown: {e}")),
    }

    // Fig. 8: the query-only path ablation, when `seedscope intervene --path` ran.
    match seedscope_analysis::path_ablation::read(dir) {
        Ok(list) => {
            for a in &list {
                let name = format!(
                    "fig8-path-ablation-L{}.{}-L{}H{}",
                    a.neuron.0, a.neuron.1, a.head.0, a.head.1
                );
                let pts: Vec<(f64, f64, bool)> = a
                    .points
                    .iter()
                    .map(|p| (p.0 as f64, p.1 as f64, false))
                    .collect();
                let title = format!(
                    "Fig. 8: L{}.{} removed from head L{}H{}'s query",
                    a.neuron.0, a.neuron.1, a.head.0, a.head.1
                );
                let caption = format!(
                    "Fig. 8b: the neuron's activation against the change in the head's attention \
                     to BOS when the neuron's output is removed from the query only (positions \
                     {}..{} of each row, {} positions). Mean attention to BOS {:.4} -> {:.4}, \
                     output norm {:.4} -> {:.4}. A deactivation neuron's removal lowers the \
                     attention to BOS most where it fires most.",
                    a.positions.0,
                    a.positions.1,
                    a.n_tokens,
                    a.mean_bos_attention,
                    a.mean_bos_attention_ablated,
                    a.mean_z_norm,
                    a.mean_z_norm_ablated
                );
                figure!(&name, caption, 800, 520, |ar| draw_scatter(
                    ar,
                    &title,
                    "neuron activation",
                    "change in attention to BOS",
                    &pts,
                    crate::ScatterLabels {
                        unit: "positions",
                        legend: None
                    }
                ));
            }
        }
        Err(e) => summary.notes.push(format!("path ablations not shown: {e}")),
    }

    // Families.
    let mut families: Vec<String> = rows
        .iter()
        .map(|r| r.family.clone())
        .filter(|f| !f.is_empty())
        .collect();
    families.sort();
    families.dedup();
    if anatomy.is_none() || families.is_empty() {
        summary.notes.push(
            "the bundle has no anatomy (made by an older Seedscope): no families or examples"
                .into(),
        );
    } else {
        let share = |f: &str, universal_only: bool| {
            let pool: Vec<&&NeuronRow> = rows
                .iter()
                .filter(|r| !universal_only || r.is_universal)
                .collect();
            100.0 * pool.iter().filter(|r| r.family == f).count() as f64 / pool.len().max(1) as f64
        };
        let values: Vec<Vec<f64>> = families
            .iter()
            .map(|f| vec![share(f, false), share(f, true)])
            .collect();
        figure!(
            "families",
            "Neuron families (best token feature with variance explained > 0.5, else position \
             by mutual information, else unexplained): share of all anchor neurons and of the \
             universal ones.",
            900,
            480,
            |a| draw_bars(
                a,
                "Families: share of neurons (%)",
                "% of neurons",
                &families,
                &["all neurons", "universal neurons"],
                &values
            )
        );
    }
    if let Some(an) = &anatomy {
        for fam in &families {
            let page = family_page(fam, &rows, an, tokenizer.as_ref(), d);
            let name = format!("family-{fam}.html");
            std::fs::write(work.join(&name), page).map_err(io(&work.join(&name)))?;
            summary.families.push(name);
        }
    }

    // index.html
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Seedscope report</title>\
         <style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.45}}\
         img{{max-width:100%;border:1px solid #ddd}}figure{{margin:2em 0}}</style></head><body>\
         <h1>Seedscope report</h1><p>{}</p><p>Bundle: <code>{}</code>; data: <code>{}</code>; \
         threshold {:.2}; made by Seedscope {}.</p>",
        escape(&title),
        escape(&dir.display().to_string()),
        escape(&m.data_source),
        m.options.threshold,
        escape(&m.seedscope_version)
    );
    if !summary.families.is_empty() {
        html.push_str("<h2>Families</h2><ul>");
        for (fam, page) in families.iter().zip(&summary.families) {
            let n = rows.iter().filter(|r| &r.family == fam).count();
            let u = rows
                .iter()
                .filter(|r| &r.family == fam && r.is_universal)
                .count();
            let _ = write!(
                html,
                "<li><a href=\"{page}\">{fam}</a>: {n} neurons, {u} universal</li>"
            );
        }
        html.push_str("</ul>");
    }
    html.push_str("<h2>Figures</h2>");
    for (name, caption) in &captions {
        let _ = write!(
            html,
            "<figure><a href=\"{name}.svg\"><img src=\"{name}.png\" alt=\"{name}\"></a>\
             <figcaption>{} (<a href=\"{name}.svg\">SVG</a>)</figcaption></figure>",
            escape(caption)
        );
    }
    if !summary.notes.is_empty() {
        html.push_str("<h2>Notes</h2><ul>");
        for n in &summary.notes {
            let _ = write!(html, "<li>{}</li>", escape(n));
        }
        html.push_str("</ul>");
    }
    html.push_str("</body></html>\n");
    std::fs::write(work.join("index.html"), html).map_err(io(&work.join("index.html")))?;

    // Swap into place.
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&work, out).map_err(io(out))?;
    Ok(summary)
}

/// Neurons of one family with their best examples, as an HTML page.
fn family_page(
    fam: &str,
    rows: &[&NeuronRow],
    an: &AnatomyFile,
    tok: Option<&seedscope_data::TextTokenizer>,
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
