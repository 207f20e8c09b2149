//! `neurostimd recover`: a recording cut short by a crash holds streams of
//! different lengths and headers that undercount; this makes it readable
//! again.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The recording's root directory (as given to --record).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn cmd_recover(a: RecoverArgs) -> anyhow::Result<()> {
    let RecoverArgs { dir, json } = a;
    let r = neurostimd::record::recover(&dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} samples kept in every stream (the headers counted {} before), {} events, {} forecast rows; {} bytes of partial rows cut",
            dir.display(),
            r.samples,
            r.samples_counted_before,
            r.events,
            r.forecasts,
            r.bytes_cut
        );
    }
    Ok(())
}
