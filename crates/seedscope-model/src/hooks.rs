//! Hook points named like TransformerLens, and interventions on neurons.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Which side of the MLP non-linearity a tap reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MlpSite {
    /// `blocks.{l}.mlp.hook_pre`: the input of the non-linearity (after `W_in`, with bias).
    Pre,
    /// `blocks.{l}.mlp.hook_post`: the neuron activations, the non-linearity's output.
    Post,
}

/// A TransformerLens hook point on an MLP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookPoint {
    /// Block index.
    pub layer: usize,
    /// Pre- or post-activation.
    pub site: MlpSite,
}

impl HookPoint {
    /// `blocks.{layer}.mlp.hook_pre`.
    pub fn pre(layer: usize) -> Self {
        Self {
            layer,
            site: MlpSite::Pre,
        }
    }

    /// `blocks.{layer}.mlp.hook_post`.
    pub fn post(layer: usize) -> Self {
        Self {
            layer,
            site: MlpSite::Post,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let site = match self.site {
            MlpSite::Pre => "hook_pre",
            MlpSite::Post => "hook_post",
        };
        write!(f, "blocks.{}.mlp.{site}", self.layer)
    }
}

impl FromStr for HookPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an MLP hook point (blocks.L.mlp.hook_pre or hook_post)");
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, site) = rest.split_once(".mlp.").ok_or_else(bad)?;
        let layer = layer.parse().map_err(|_| bad())?;
        let site = match site {
            "hook_pre" => MlpSite::Pre,
            "hook_post" => MlpSite::Post,
            _ => return Err(bad()),
        };
        Ok(Self { layer, site })
    }
}

/// Set one neuron's post-activation to a fixed value at every position (mean- or
/// zero-ablation, and the entropy-neuron experiments of the paper).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeuronPatch {
    /// Block index.
    pub layer: usize,
    /// Neuron index within the layer.
    pub neuron: usize,
    /// The value written into `hook_post`.
    pub value: f32,
}

/// The query-only path ablation of the paper's attention-deactivation experiment (§5.3): at
/// attention layer `attn_layer`, head `head` also computes its query from the residual stream
/// minus neuron `neuron_layer.neuron`'s contribution `act · w_out` (keys and values unchanged),
/// and the forward pass reports both heads' attention to position 0 and output (`z`) norms.
/// The neuron's layer must be tapped (`hook_post`) and come before the attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryAblation {
    /// The neuron's MLP layer.
    pub neuron_layer: usize,
    /// The neuron.
    pub neuron: usize,
    /// The attention layer (after the neuron's).
    pub attn_layer: usize,
    /// The head.
    pub head: usize,
}

/// What one forward pass should produce.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Hook points whose tensors are returned. Nothing else is kept.
    pub taps: BTreeSet<HookPoint>,
    /// Run only blocks `0..n`; the final norm and unembedding are skipped. `None` runs all.
    pub stop_at_layer: Option<usize>,
    /// Compute the logits (ignored when `stop_at_layer` stops early).
    pub logits: bool,
    /// Neurons whose post-activations are overwritten before the MLP output projection.
    pub patches: Vec<NeuronPatch>,
    /// Return every attention layer's keys (`hook_k`, after rotary embedding).
    pub keys: bool,
    /// Return the final LayerNorm's scale (`ln_final.hook_scale`; needs the full model).
    pub ln_final_scale: bool,
    /// Probe one head with and without a neuron on its query path.
    pub query_ablation: Option<QueryAblation>,
}

impl ForwardOptions {
    /// Logits only.
    pub fn logits() -> Self {
        Self {
            logits: true,
            ..Self::default()
        }
    }

    /// `hook_pre` and `hook_post` of every layer, stopping after the last MLP.
    pub fn all_neurons(n_layers: usize) -> Self {
        Self {
            taps: (0..n_layers)
                .flat_map(|l| [HookPoint::pre(l), HookPoint::post(l)])
                .collect(),
            stop_at_layer: Some(n_layers),
            ..Self::default()
        }
    }

    /// `hook_pre` and `hook_post` of every layer and the logits (the whole model runs).
    pub fn all_neurons_and_logits(n_layers: usize) -> Self {
        Self {
            stop_at_layer: None,
            logits: true,
            ..Self::all_neurons(n_layers)
        }
    }

    /// The number of blocks that must run: `stop_at_layer` when given, all of them for logits,
    /// the final LayerNorm scale or keys, else up to the deepest tap.
    pub fn layers_to_run(&self, n_layers: usize) -> usize {
        match self.stop_at_layer {
            Some(stop) => stop.min(n_layers),
            None if self.logits || self.ln_final_scale || self.keys => n_layers,
            None if self.query_ablation.is_some() => self
                .taps
                .iter()
                .map(|h| h.layer + 1)
                .chain(self.query_ablation.map(|a| a.attn_layer + 1))
                .max()
                .unwrap_or(0)
                .min(n_layers),
            None => self
                .taps
                .iter()
                .map(|h| h.layer + 1)
                .max()
                .unwrap_or(0)
                .min(n_layers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in [HookPoint::pre(0), HookPoint::post(11)] {
            assert_eq!(h.to_string().parse::<HookPoint>(), Ok(h));
        }
        assert_eq!(HookPoint::post(3).to_string(), "blocks.3.mlp.hook_post");
        assert!("blocks.x.mlp.hook_pre".parse::<HookPoint>().is_err());
        assert!("blocks.1.attn.hook_z".parse::<HookPoint>().is_err());
    }

    #[test]
    fn layers_to_run_follows_taps_and_logits() {
        let mut o = ForwardOptions::default();
        o.taps.insert(HookPoint::post(1));
        assert_eq!(o.layers_to_run(4), 2);
        o.logits = true;
        assert_eq!(o.layers_to_run(4), 4);
        o.stop_at_layer = Some(3);
        assert_eq!(o.layers_to_run(4), 3);
        assert_eq!(ForwardOptions::all_neurons(3).layers_to_run(3), 3);
    }
}
