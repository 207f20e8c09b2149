//! Set-up shared by the integration tests.

use neurostimd::config::Config;
use std::path::Path;

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
