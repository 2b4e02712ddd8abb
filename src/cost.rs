//! `seedscope cost`: how analyses' cost grows, from their bundles' manifests.

use std::path::PathBuf;

use anyhow::Result;
use seedscope_report::{CostRow, cost_table, write_cost_figures};

/// Options of `seedscope cost`.
#[derive(clap::Args)]
pub struct Args {
    /// Bundle directories written by `seedscope analyze` (one row each, in this order).
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
    /// Also draw the runs into this directory: cost-time (where each run's time went, with
    /// its tokens/s), PNG and SVG.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Print the table (Markdown) and draw the figures when asked.
pub fn run(args: &Args) -> Result<()> {
    let rows = args
        .bundles
        .iter()
        .map(|b| CostRow::read(b))
        .collect::<Result<Vec<_>, _>>()?;
    print!("{}", cost_table(&rows));
    if let Some(out) = &args.out {
        for f in write_cost_figures(&rows, out)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}
