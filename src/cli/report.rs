//! `neurostimd report`: runs' reports side by side, so runs made with
//! different settings can be compared without opening each directory.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

pub fn cmd_report(a: ReportArgs) -> anyhow::Result<()> {
    neurostimd::report::render(&a.dirs)
        .map(|t| print!("{t}"))
        .map_err(|e| anyhow::anyhow!(e))
}
