//! `seedscope download`: seed families from the Hugging Face hub into its standard cache, and
//! the lookup that lets `--models` name a preset or a repository instead of a directory.

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use seedscope_hub::{Fetched, Hub, PRESETS, repos_of};

/// Options of `seedscope download`.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// A preset (stanford-gpt2-small, stanford-gpt2-medium, pythia-{14m,31m,70m,160m,410m},
    /// pythia-160m-data-seed, pythia-160m-weight-seed; `--list`) or a repository id
    /// (org/name). Omit with --list.
    pub name: Option<String>,
    /// Branch, tag or commit of every repository (default: main).
    #[arg(long, conflicts_with = "step")]
    pub revision: Option<String>,
    /// The training checkpoint at this step (Stanford CRFM: checkpoint-STEP; Pythia: stepSTEP).
    #[arg(long)]
    pub step: Option<u64>,
    /// Retries of a dropped transfer within this run (each resumes the partial file).
    #[arg(long, default_value_t = 5)]
    pub retries: usize,
    /// List the presets and their repositories.
    #[arg(long)]
    pub list: bool,
}

/// Run `seedscope download`.
pub fn run(args: &Args) -> Result<()> {
    if args.list || args.name.is_none() {
        for p in PRESETS {
            println!("{:22} {}", p.name, p.about);
            for r in p.repos {
                println!("{:22}   {r}", "");
            }
        }
        if args.name.is_none() && !args.list {
            bail!("name a preset or a repository to download (the presets are listed above)");
        }
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or_default();
    let hub = Hub {
        retries: args.retries,
        ..Hub::from_env()
    };
    let rev = crate::models::revision(args.revision.as_deref(), args.step);
    let repos = repos_of(name)?;
    eprintln!(
        "{} {} repositor{} into {}{}",
        if hub.offline { "checking" } else { "fetching" },
        repos.len(),
        if repos.len() == 1 { "y" } else { "ies" },
        hub.cache_dir.display(),
        if hub.offline {
            " (offline mode: HF_HUB_OFFLINE)"
        } else {
            ""
        }
    );
    let mut total = (0u64, 0u64);
    for repo in &repos {
        let r = rev.for_repo(repo)?;
        let got = hub
            .download(repo, &r)
            .with_context(|| format!("downloading {repo} at {r}"))?;
        for f in &got.files {
            let how = match f.fetched {
                Fetched::Verified => "downloaded, checksum verified",
                Fetched::Unverified => "downloaded (the hub gave no content hash)",
                Fetched::Cached => "in the cache",
            };
            eprintln!("  {repo}/{}: {} bytes, {how}", f.name, f.bytes);
            total.0 += f.bytes;
            if f.fetched != Fetched::Cached {
                total.1 += f.bytes;
            }
        }
        println!("{}", got.snapshot.display());
    }
    eprintln!(
        "{:.1} MB in the cache, {:.1} MB transferred now; analyse with `seedscope analyze \
         --models {name}{}`",
        total.0 as f64 / 1e6,
        total.1 as f64 / 1e6,
        match (&args.revision, args.step) {
            (_, Some(s)) => format!(" --step {s}"),
            (Some(r), None) => format!(" --revision {r}"),
            _ => String::new(),
        }
    );
    Ok(())
}
