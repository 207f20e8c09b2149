//! The edge-fuzz corpus (`tests/fixtures/fuzz/`, written by its seeded
//! `generate.py`): config values, CLI numbers, trace CSVs and damaged
//! recordings fed to the real binary. Every case must end in exit 0, 1 or
//! 2 within its timeout, never a panic (101), an abort (134) or a hang,
//! and a failure must name what is wrong (the key, flag or file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurostimd")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `neurostimd args` in `cwd`; exit code (None: killed after the
/// timeout) and stderr.
fn run(args: &[String], cwd: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st.code().unwrap_or(-1));
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (code, reader.join().unwrap())
}

/// A small valid run: its recording and report, made once.
fn base(dir: &Path) -> (PathBuf, PathBuf) {
    let rec = dir.join("rec");
    let report = dir.join("report");
    let args: Vec<String> = [
        "--duration",
        "0.05",
        "--policy",
        "pid",
        "--clock",
        "free",
        "--record",
        rec.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--trace-out",
        report.join("trace.csv").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, err) = run(&args, dir);
    assert_eq!(code, Some(0), "the base run failed: {err}");
    (rec, report)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

/// Apply one mutation (see generate.py) under the recording's node
/// directory.
fn mutate(node: &Path, m: &serde_json::Value) {
    let op = m[0].as_str().unwrap();
    let path = node.join(m[1].as_str().unwrap());
    match op {
        "json" | "json_del" => {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let keys = m[2].as_array().unwrap();
            let (last, parents) = keys.split_last().unwrap();
            let mut at = &mut v;
            for k in parents {
                at = match k.as_u64() {
                    Some(i) => match at.get_mut(i as usize) {
                        Some(x) => x,
                        // The path names an element the file lacks: the
                        // mutation has nothing to damage.
                        None => return,
                    },
                    None => &mut at[k.as_str().unwrap()],
                };
            }
            match (op, last.as_u64()) {
                ("json", Some(i)) => match at.as_array_mut() {
                    Some(a) if (i as usize) < a.len() => a[i as usize] = m[3].clone(),
                    Some(a) => a.push(m[3].clone()),
                    None => return,
                },
                ("json", None) => at[last.as_str().unwrap()] = m[3].clone(),
                (_, _) => {
                    at.as_object_mut().unwrap().remove(last.as_str().unwrap());
                }
            }
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        "truncate" => {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(m[2].as_u64().unwrap()).unwrap();
        }
        "flip" => {
            let mut b = std::fs::read(&path).unwrap();
            let at = m[2].as_u64().unwrap() as usize;
            b[at] ^= m[3].as_u64().unwrap() as u8;
            std::fs::write(&path, b).unwrap();
        }
        "write" => std::fs::write(&path, m[2].as_str().unwrap()).unwrap(),
        "delete" => std::fs::remove_file(&path).unwrap(),
        "npy_header" => {
            // Replace the header text of a version 1.0 file, keeping its
            // length (the data stays where it was).
            let mut b = std::fs::read(&path).unwrap();
            let len = u16::from_le_bytes([b[8], b[9]]) as usize;
            let text = m[2].as_str().unwrap().as_bytes();
            let mut h = vec![b' '; len];
            h[..text.len().min(len - 1)].copy_from_slice(&text[..text.len().min(len - 1)]);
            h[len - 1] = b'\n';
            b[10..10 + len].copy_from_slice(&h);
            std::fs::write(&path, b).unwrap();
        }
        other => panic!("unknown mutation {other}"),
    }
}

#[test]
fn no_generated_input_panics_aborts_or_hangs() {
    let corpus = root().join("tests/fixtures/fuzz");
    let text = std::fs::read_to_string(corpus.join("cases.jsonl")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (rec, report) = base(work.path());
    let model = root().join("models/ca1_lstm.onnx");
    let only = std::env::var("FUZZ_ONLY").ok();
    let mut failures = Vec::new();
    let mut seen = 0;
    for (n, line) in text.lines().enumerate() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = c["name"].as_str().unwrap();
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        seen += 1;
        let tmp = work.path().join(format!("case{n}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let fixture = c["fixture"].as_str().map(|f| corpus.join(f));
        let rec_copy = tmp.join("rec");
        if let Some(muts) = c["recording"].as_array() {
            copy_dir(&rec, &rec_copy);
            let node = neurostimd::record::Recording::folder(&rec_copy);
            for m in muts {
                mutate(&node, m);
            }
        }
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let mut s = a.as_str().unwrap().to_string();
                for (k, v) in [
                    ("{tmp}", tmp.as_path()),
                    ("{rec}", rec_copy.as_path()),
                    ("{report}", report.as_path()),
                    ("{model}", model.as_path()),
                ] {
                    s = s.replace(k, v.to_str().unwrap());
                }
                if let Some(f) = &fixture {
                    s = s.replace("{fixture}", f.to_str().unwrap());
                }
                s
            })
            .collect();
        let (code, err) = run(&args, &tmp);
        let last = err.lines().last().unwrap_or("").to_string();
        match code {
            None => failures.push(format!("{name}: hung (killed after {TIMEOUT:?})")),
            Some(0) => {}
            Some(1 | 2) => {
                if let Some(want) = c["expect"].as_str() {
                    if !err.contains(want) {
                        failures.push(format!(
                            "{name}: exit {code:?} without naming `{want}`: {last}"
                        ));
                    }
                }
            }
            Some(other) => failures.push(format!("{name}: exit {other}: {last}")),
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
    eprintln!("{seen} cases, {} failures", failures.len());
    assert!(seen > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
