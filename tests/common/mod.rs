//! Set-up shared by the integration tests. Each test crate uses part of
//! it, so what one does not use is not dead code.
#![allow(dead_code)]

use neurostimd::config::Config;
use std::path::Path;
use std::process::{Command, Output};

/// The real binary with `args`, run in `dir`, to its end.
pub fn neurostimd(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neurostimd"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the binary runs")
}

/// The defaults with the shipped model, the free clock and no real-time
/// requests (tests share the machine), then `extra` laid over them.
pub fn free_clock_config(extra: &str) -> Config {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ca1_lstm.onnx");
    let base = format!(
        "[run]\nclock = \"free\"\n[control]\nmodel = \"{}\"\n\
         [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n",
        model.display()
    );
    Config::load_stack(
        &[("base.toml", &base), ("test.toml", extra)],
        None,
        &toml::Table::new(),
    )
    .unwrap()
}
