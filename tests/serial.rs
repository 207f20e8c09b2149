//! Hardware in the loop without hardware: the emulated rig on a real
//! pseudo-terminal, the daemon's serial plant on the other end, and the
//! faults a cable and firmware produce.

use neurostimd::config::Config;
use neurostimd::rig::{self, Faults, RigOptions, RigStats};
use neurostimd::session::{self, SessionError, SessionOptions, SessionOutcome};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

/// One rig-and-daemon pair at a time: each pair runs three busy threads,
/// and this machine class has two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Rig {
    _turn: std::sync::MutexGuard<'static, ()>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<RigStats>,
    link: PathBuf,
    _dir: tempfile::TempDir,
}

fn start_rig(faults: Faults, version: u16) -> Rig {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rig");
    let mut opts = RigOptions::new(Config::defaults().sim);
    opts.link = Some(link.clone());
    opts.faults = faults;
    opts.version = version;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        rig::run(&opts, &s, |p| tx.send(p.to_path_buf()).unwrap()).unwrap()
    });
    let _ = rx.recv().unwrap();
    Rig {
        _turn: turn,
        stop,
        handle,
        link,
        _dir: dir,
    }
}

impl Rig {
    fn stop(self) -> RigStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn daemon(
    link: &std::path::Path,
    seconds: f64,
    extra: &str,
) -> Result<SessionOutcome, SessionError> {
    let base = format!(
        "[plant]\nkind = \"serial\"\n[plant.serial]\nport = \"{}\"\n[run]\nduration = \"{seconds} s\"\n\
         [control]\npolicy = \"pid\"\n[control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n",
        link.display()
    );
    let cfg = Config::load_stack(
        &[("base.toml", &base), ("extra.toml", extra)],
        None,
        &toml::Table::new(),
    )
    .unwrap();
    session::run(
        &cfg,
        &SessionOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
}

fn link_stat(o: &SessionOutcome, key: &str) -> u64 {
    let r = o.summary.plant_report.as_ref().unwrap();
    r["link"][key]
        .as_u64()
        .or_else(|| r["link"]["frames"][key].as_u64())
        .unwrap_or_else(|| panic!("{key} missing in {r}"))
}

#[test]
fn the_closed_loop_runs_over_a_pty() {
    let rig = start_rig(Faults::default(), neurostimd::protocol::VERSION);
    let o = daemon(&rig.link, 1.0, "").unwrap();
    let stats = rig.stop();
    let s = &o.summary;
    assert_eq!(s.samples, 10_001);
    assert_eq!(s.clock, "plant");
    assert_eq!(s.lost_samples, 0, "{:?}", s.plant_report);
    assert_eq!(link_stat(&o, "sequence_gaps"), 0);
    assert!(stats.commands >= 10_000, "{stats:?}");
    // The PI drove the cell (15 Hz target on a 10 Hz cell).
    assert!(s.charge_delivered_nc_cm2 > 0.0);
    let rtt = &s.plant_report.as_ref().unwrap()["round_trip_us"];
    assert!(rtt["count"].as_u64().unwrap() > 9_000, "{rtt}");
    assert!(rtt["p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn corrupted_dropped_duplicated_and_reordered_frames_are_counted_and_skipped() {
    let faults = Faults {
        corrupt: 0.02,
        drop: 0.01,
        duplicate: 0.01,
        reorder: 0.01,
        garbage: 0.01,
        ..Faults::default()
    };
    let rig = start_rig(faults, neurostimd::protocol::VERSION);
    let o = daemon(&rig.link, 1.0, "").unwrap();
    let stats = rig.stop();
    let s = &o.summary;
    assert_eq!(s.samples, 10_001);
    let errors = link_stat(&o, "bad_crc")
        + link_stat(&o, "bad_cobs")
        + link_stat(&o, "bad_length")
        + link_stat(&o, "unknown_type")
        + link_stat(&o, "short")
        + link_stat(&o, "oversized");
    assert!(
        errors >= stats.corrupted / 2,
        "{errors} errors for {stats:?}"
    );
    assert!(link_stat(&o, "sequence_gaps") > 0);
    assert!(
        link_stat(&o, "stale_frames") > 0,
        "duplicates and reorders are dropped"
    );
    assert_eq!(s.lost_samples, link_stat(&o, "sequence_gaps"));
}

#[test]
fn a_stall_longer_than_the_timeout_zeroes_stimulation_and_is_counted() {
    let faults = Faults {
        stall_at_s: Some(0.4),
        stall_ms: 100.0,
        ..Faults::default()
    };
    let rig = start_rig(faults, neurostimd::protocol::VERSION);
    let o = daemon(&rig.link, 1.0, "").unwrap();
    let stats = rig.stop();
    let s = &o.summary;
    assert!(s.plant_interruptions >= 1, "{:?}", s.plant_report);
    assert!(s.interventions["plant_fault"] >= 1);
    assert!(link_stat(&o, "stalls") >= 1);
    // How late after the deadline the stall was noticed is measured and
    // reported (`stall_detect_late_us`), not asserted: tests do not assert
    // wall-clock times on a shared machine.
    let late = link_stat(&o, "stall_detect_late_us");
    eprintln!("stall detected {late} µs after the timeout");
    // The rig's own command validity ran out during the stall: it went to
    // zero by itself too.
    assert!(stats.expired >= 1, "{stats:?}");
    // The loop carried on after the stall.
    assert_eq!(s.samples, 10_001);
}

#[test]
fn a_disconnect_is_survived_and_the_rig_reconnected() {
    let faults = Faults {
        disconnect_at_s: Some(0.3),
        reconnect_ms: 300.0,
        ..Faults::default()
    };
    let rig = start_rig(faults, neurostimd::protocol::VERSION);
    let o = daemon(&rig.link, 1.0, "").unwrap();
    rig.stop();
    let s = &o.summary;
    assert!(link_stat(&o, "disconnects") >= 1, "{:?}", s.plant_report);
    assert!(link_stat(&o, "reconnects") >= 1, "{:?}", s.plant_report);
    assert!(s.plant_interruptions >= 1);
    assert_eq!(s.samples, 10_001, "the run finished after reconnecting");
}

#[test]
fn a_stop_request_is_honoured_while_the_rig_is_gone() {
    let faults = Faults {
        disconnect_at_s: Some(0.2),
        reconnect_ms: 60_000.0,
        ..Faults::default()
    };
    let rig = start_rig(faults, neurostimd::protocol::VERSION);
    let base = format!(
        "[plant]\nkind = \"serial\"\n[plant.serial]\nport = \"{}\"\n[control]\npolicy = \"pid\"\n\
         [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n",
        rig.link.display()
    );
    let cfg = Config::from_str_named("t.toml", &base).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(800));
        s2.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let o = session::run(&cfg, &SessionOptions::default(), stop).unwrap();
    stopper.join().unwrap();
    rig.stop();
    assert_eq!(o.summary.stop, neurostimd::control::StopReason::Signal);
    assert!(o.summary.plant_interruptions >= 1);
    assert_eq!(*o.summary.interventions.get("shutdown").unwrap(), 1);
}

#[test]
fn another_protocol_version_is_refused_clearly() {
    let rig = start_rig(Faults::default(), 2);
    let err = daemon(&rig.link, 0.5, "").err().expect("refused");
    rig.stop();
    let text = err.to_string();
    assert!(
        text.contains("protocol version 2") && text.contains("this daemon speaks 1"),
        "{text}"
    );
}

#[test]
fn a_flood_of_garbage_does_not_stall_the_loop() {
    let faults = Faults {
        garbage: 0.9,
        ..Faults::default()
    };
    let rig = start_rig(faults, neurostimd::protocol::VERSION);
    let o = daemon(&rig.link, 1.0, "").unwrap();
    let stats = rig.stop();
    let s = &o.summary;
    assert!(stats.garbage_bytes > 100_000, "{stats:?}");
    assert_eq!(s.samples, 10_001);
    // Frames start with a delimiter, so garbage never swallows one.
    assert_eq!(s.lost_samples, 0);
    assert!(link_stat(&o, "frames") >= 10_001);
    assert!(s.plant_interruptions == 0, "{:?}", s.plant_report);
}

// ---------------------------------------------------------------------------
// The safety model against the real binaries: `neurostimd rig` misbehaving
// on request, `neurostimd --plant serial` driving it (docs/safety.md).

/// A `neurostimd rig` process (started by this test, stopped by its
/// `--duration`), and its link.
struct BinRig {
    _turn: std::sync::MutexGuard<'static, ()>,
    child: std::process::Child,
    link: PathBuf,
    dir: tempfile::TempDir,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostimd")
}

/// Start `neurostimd rig` for `seconds` with `args`; returns once its link
/// exists (the rig prints the path on stdout when ready).
fn bin_rig(seconds: f64, args: &[&str]) -> BinRig {
    use std::io::BufRead;
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rig");
    let mut child = std::process::Command::new(bin())
        .arg("rig")
        .arg("--link")
        .arg(&link)
        .arg("--duration")
        .arg(seconds.to_string())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(link.exists(), "rig not ready: {line:?}");
    BinRig {
        _turn: turn,
        child,
        link,
        dir,
    }
}

/// What a daemon run printed and how it ended.
struct BinRun {
    code: i32,
    summary: Option<serde_json::Value>,
    stderr: String,
}

impl BinRig {
    /// Run the daemon against this rig for `seconds` with `toml` laid
    /// over a PI policy and no real-time requests.
    fn daemon(&self, seconds: f64, toml: &str) -> BinRun {
        self.daemon_with("pid", seconds, toml)
    }

    /// As [`BinRig::daemon`], with another policy.
    fn daemon_with(&self, policy: &str, seconds: f64, toml: &str) -> BinRun {
        let cfg = self.dir.path().join("daemon.toml");
        std::fs::write(
            &cfg,
            format!(
                "[control]\npolicy = \"{policy}\"\n[control.realtime]\nmlockall = false\npriority = 0\n\
                 cpu = \"none\"\n[run]\nreports = \"{}\"\n{toml}",
                self.dir.path().join("reports").display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(bin())
            .args(["--plant", "serial", "--json", "--port"])
            .arg(&self.link)
            .arg("--duration")
            .arg(seconds.to_string())
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        BinRun {
            code: out.status.code().unwrap_or(-1),
            summary: serde_json::from_str(&stdout).ok(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Wait for the rig's own end; its statistics.
    fn finish(mut self) -> serde_json::Value {
        let out = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().unwrap(),
        )
        .wait_with_output()
        .unwrap();
        let _ = self.child.wait();
        let err = String::from_utf8_lossy(&out.stderr);
        let json = err
            .lines()
            .find_map(|l| l.strip_prefix("rig stopped: "))
            .unwrap_or_else(|| panic!("no rig statistics in {err}"));
        serde_json::from_str(json).unwrap()
    }
}

fn link_of(s: &serde_json::Value, key: &str) -> u64 {
    let l = &s["plant_report"]["link"];
    l[key]
        .as_u64()
        .or_else(|| l["frames"][key].as_u64())
        .unwrap_or_else(|| panic!("{key} missing in {l}"))
}

/// The limiter counted at least the charge the rig applied (to within
/// 2%: the first and last commands' edges), and not grossly more. It
/// counts each command as delivered for a period (held ones until their
/// expiry); a daemon that falls behind (a loaded test machine: it runs
/// without real-time priority here) sends its commands in bursts, and the
/// rig, holding the last one meanwhile, lets some expire and applies only
/// the newest of a burst: the limiter then over-counts (1.1-1.7x measured
/// under load), the safe side. Twice the applied charge would be a
/// double count.
fn assert_charge_counted(run: &BinRun, rig: &serde_json::Value) {
    let s = run
        .summary
        .as_ref()
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let counted = s["charge_delivered_nc_cm2"].as_f64().unwrap();
    let applied = rig["charge_applied_nc_cm2"].as_f64().unwrap();
    eprintln!(
        "limiter counted {counted:.1} nC/cm2, rig applied {applied:.1} nC/cm2 (ratio {:.3}); \
         lost samples {}, commands the rig let expire {}",
        counted / applied,
        s["lost_samples"],
        rig["expired"]
    );
    assert!(applied > 100.0, "the PI drove the cell: {rig}");
    assert!(
        counted >= 0.98 * applied,
        "the limiter counted {counted} of {applied} nC/cm2 the rig applied"
    );
    assert!(counted <= 2.0 * applied, "{counted} vs {applied}");
}

#[test]
fn frame_losses_are_charged_as_the_held_command_delivered() {
    let rig = bin_rig(4.0, &["--drop", "0.2", "--seed", "3"]);
    let run = rig.daemon(1.0, "");
    let stats = rig.finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.summary.as_ref().unwrap();
    assert!(s["lost_samples"].as_u64().unwrap() > 1_000, "{s}");
    // A healthy rig under losses is never taken for a misapplying one.
    assert_eq!(s["interventions"]["rig_misapplied"], 0, "{s}");
    eprintln!("applied mismatches: {}", link_of(s, "applied_mismatches"));
    assert_charge_counted(&run, &stats);
}

#[test]
fn a_long_valid_for_is_charged_until_the_successor_or_expiry() {
    let rig = bin_rig(4.0, &["--drop", "0.2", "--seed", "4"]);
    let run = rig.daemon(1.0, "[plant.serial]\nvalid_for = \"1000 ms\"\n");
    let stats = rig.finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_charge_counted(&run, &stats);
}

#[test]
fn a_coarse_current_scale_never_exceeds_the_amplitude_limit() {
    // 2.2 uA/cm2 per count: 10 uA/cm2 is 4.55 counts; rounded it would be
    // 5 counts = 11 uA/cm2, above the limit. An open-loop square wave at
    // the limit asks for exactly that.
    let rig = bin_rig(4.0, &["--i-scale", "2.2"]);
    let run = rig.daemon_with(
        "open",
        1.0,
        "[safety]\nmax_amplitude = \"10 uA/cm2\"\n\
         [open]\namplitude = \"10 uA/cm2\"\nperiod = \"10 ms\"\n",
    );
    let stats = rig.finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let max = stats["max_abs_current"].as_f64().unwrap();
    eprintln!("largest current applied: {max} uA/cm2");
    assert!(max > 0.0 && max <= 10.0, "{stats}");
}

#[test]
fn a_scale_too_coarse_for_the_limit_is_refused_at_the_handshake() {
    let rig = bin_rig(3.0, &["--i-scale", "3"]);
    let run = rig.daemon(0.5, "[safety]\nmax_amplitude = \"10 uA/cm2\"\n");
    rig.finish();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("i_scale = 3")
            && run.stderr.contains("safety.max_amplitude = 10")
            && run.stderr.contains("at least 4 whole counts"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_rig_reboot_restarts_the_sequence_within_eight_frames() {
    let rig = bin_rig(4.0, &["--reboot-at", "1.3"]);
    let run = rig.daemon(1.5, "");
    let stats = rig.finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(stats["reboots"], 1, "{stats}");
    let s = run.summary.as_ref().unwrap();
    // The rig booted while the daemon ran (the daemon's run started
    // before 1.3 s of rig time and lasted 1.5 s).
    assert_eq!(link_of(s, "sequence_restarts"), 1, "{s}");
    // Before the fix every frame after the reboot looked stale until the
    // rig's numbering caught up: thousands dropped, the link stalled.
    let stale = link_of(s, "stale_frames");
    assert!(stale <= 8, "{stale} frames dropped after the reboot");
    assert_eq!(s["plant_interruptions"], 0, "{s}");
    assert_eq!(s["stop"], "duration_reached", "{s}");
}

#[test]
fn a_mid_run_rate_change_stops_the_run_at_zero() {
    let rig = bin_rig(
        4.0,
        &["--rate-change-at", "1.0", "--rate-change-hz", "5000"],
    );
    let run = rig.daemon(2.5, "");
    let stats = rig.finish();
    assert_eq!(stats["rate_changes"], 1, "{stats}");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("changed its sample rate mid-run (10000 Hz to 5000 Hz)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_same_rate_hello_mid_run_is_a_fresh_handshake() {
    let rig = bin_rig(
        4.0,
        &["--rate-change-at", "1.0", "--rate-change-hz", "10000"],
    );
    let run = rig.daemon(1.5, "");
    rig.finish();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.summary.as_ref().unwrap();
    // The rig's Hello restarted the numbering (a stall on a loaded
    // machine makes the daemon say Hello again, and the rig's answer is
    // one more restart).
    let restarts = link_of(s, "sequence_restarts");
    assert!(restarts >= 1, "{s}");
    assert!(
        restarts <= 1 + s["plant_interruptions"].as_u64().unwrap(),
        "{s}"
    );
    // And nothing was dropped as stale for it.
    assert!(link_of(s, "stale_frames") <= 8, "{s}");
    assert_eq!(s["stop"], "duration_reached", "{s}");
}

#[test]
fn a_rig_that_misapplies_current_is_a_counted_fault_at_zero() {
    // From 0.5 s of rig time the output is 30% too strong.
    let rig = bin_rig(4.0, &["--misapply", "0.3", "--misapply-at", "0.5"]);
    let run = rig.daemon(2.5, "");
    rig.finish();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("the rig reported applying")
            && run.stderr.contains("5 samples in a row"),
        "{}",
        run.stderr
    );
    let s = run
        .summary
        .as_ref()
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(s["stop"], "plant_fault", "{s}");
    assert_eq!(s["interventions"]["rig_misapplied"], 1, "{s}");
    assert!(link_of(s, "applied_mismatches") >= 5, "{s}");
}
