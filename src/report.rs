//! `seedscope report`: the paper's figures for an analysed family.

use std::path::PathBuf;

use anyhow::Result;

/// Options of `seedscope report`.
#[derive(clap::Args)]
pub struct Args {
    /// A bundle directory written by `seedscope analyze`.
    pub bundle: PathBuf,
    /// Where to write the report (PNG and SVG figures, family pages, index.html).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// Write the report and say where it is.
pub fn run(args: &Args) -> Result<()> {
    let s = seedscope_report::write_report(&args.bundle, &args.out)?;
    for n in &s.notes {
        eprintln!("note: {n}");
    }
    println!(
        "wrote {} figures (PNG + SVG) and {} family pages to {}; open {}",
        s.figures.len(),
        s.families.len(),
        args.out.display(),
        args.out.join("index.html").display()
    );
    Ok(())
}
