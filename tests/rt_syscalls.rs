//! The real-time thread only sleeps (issue 19, point 4): the real binary
//! runs a paced MPC loop with recording and a report under `strace -f`, and
//! between the control thread's first and last clock sleep every system call
//! it makes is that sleep. A send to a parked receiver (a crossbeam wake-up:
//! futex), a log line (write), a lock that contends or an allocation that
//! maps memory would all show up here. The simulator plant does no I/O; a
//! serial rig would add its reads and writes.
//!
//! Needs `strace` (Debian package `strace`; `.ci/run` installs it).

use std::process::Command;

/// The syscall a strace line is about (`name(`, `<... name resumed>`).
fn syscall_of(rest: &str) -> Option<&str> {
    if let Some(r) = rest.strip_prefix("<... ") {
        return r.split_whitespace().next();
    }
    let end = rest.find('(')?;
    let name = &rest[..end];
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(name)
}

#[test]
fn the_control_thread_makes_no_system_call_but_its_sleep_between_samples() {
    let have = Command::new("strace").arg("-V").output();
    assert!(
        have.is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace)"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[service]\nmetrics = \"\"\nsocket = \"\"\n[control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n",
    )
    .unwrap();
    let trace = dir.path().join("strace.txt");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_neurostimd"))
        .args(["--plant", "sim", "--policy", "mpc", "--duration", "1"])
        .args(["--report", "rep", "--record", "rec", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    // The control thread names itself when it starts.
    let tid = text
        .lines()
        .find(|l| l.contains("PR_SET_NAME") && l.contains("\"control\""))
        .and_then(|l| l.split_whitespace().next())
        .expect("the control thread's PR_SET_NAME in the trace")
        .to_string();
    let calls: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(tid.as_str()))
        .filter_map(|rest| syscall_of(rest.trim_start()))
        .collect();
    let first = calls.iter().position(|c| *c == "clock_nanosleep");
    let last = calls.iter().rposition(|c| *c == "clock_nanosleep");
    let (Some(first), Some(last)) = (first, last) else {
        panic!("the control thread never slept: {calls:?}");
    };
    let between = &calls[first..=last];
    let others: Vec<&&str> = between
        .iter()
        .filter(|c| **c != "clock_nanosleep")
        .collect();
    let sleeps = between.len() - others.len();
    eprintln!(
        "control thread {tid}: {} system calls in all; {sleeps} clock sleeps between its first and last, {} others",
        calls.len(),
        others.len()
    );
    assert!(
        sleeps >= 5_000,
        "a 1 s paced run at 10 kHz sleeps about 10,000 times; saw {sleeps}"
    );
    assert!(
        others.is_empty(),
        "system calls other than the sleep between samples: {others:?}"
    );
}
