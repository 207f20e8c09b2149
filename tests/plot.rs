//! `neurostimd plot` on a real run of the binary: the figure has every
//! panel and the run's figures in it.

use std::path::Path;

mod common;
use common::neurostimd;

#[test]
fn plot_draws_a_run_with_forecasts_stimulation_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ca1_lstm.onnx");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[service]\nmetrics = \"\"\n[objective.rate]\nschedule = [{ at = \"0 s\", rate = \"8 Hz\" }, { at = \"1 s\", rate = \"20 Hz\" }]\n",
    )
    .unwrap();
    let o = neurostimd(
        &[
            "--plant",
            "sim",
            "--clock",
            "free",
            "--duration",
            "2",
            "--model",
            model.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--report",
            "run",
            "--trace-out",
            "run/trace.csv",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("run");
    for f in ["objective.json", "trace.csv", "trace.forecasts.csv"] {
        assert!(run.join(f).exists(), "no {f}");
    }
    // Every plan's forecast: 20 model steps of 0.5 ms.
    let fc = std::fs::read_to_string(run.join("trace.forecasts.csv")).unwrap();
    let first: Vec<&str> = fc.lines().next().unwrap().split(',').collect();
    assert_eq!((first.len(), first[1]), (22, "0.5"), "{:?}", first);
    assert!(fc.lines().count() > 500);

    let o = neurostimd(&["plot", "run", "--out", "f.svg"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(dir.path().join("f.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        "policy mpc, objective rate",
        "firing rate (1/ISI)",
        "target rate",
        "with the planner&apos;s forecasts",
        "forecasts (one per plan)",
        "command",
        "sample to command (p99",
        "plan latency (p99",
        "latency (us, log scale)",
    ] {
        assert!(
            svg.contains(text) || svg.contains(&text.replace("&apos;", "'")),
            "no `{text}` in the figure"
        );
    }
    // Forecast traces: hundreds of paths, not one.
    assert!(
        svg.matches("<polyline").count() > 100,
        "{} polylines",
        svg.matches("<polyline").count()
    );

    let o = neurostimd(
        &[
            "plot",
            "run",
            "--out",
            "f.png",
            "--zoom-start",
            "1.2",
            "--zoom-ms",
            "100",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(dir.path().join("f.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (1400, 1200));

    // Usage errors exit 2; a missing run exits 1 naming the file.
    let o = neurostimd(&["plot", "run", "--out", "f.pdf"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(".svg or .png"));
    let o = neurostimd(&["plot", "nope", "--out", "g.svg"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope/summary.json"));
}
