//! `neurostimd rig`: an emulated bench rig on a pseudo-terminal, with the
//! CA1 simulator behind it paced in real time, speaking the wire protocol
//! (`docs/protocol.md`), so hardware-in-the-loop runs and their fault tests
//! need no hardware. It can misbehave on purpose: drop, corrupt, duplicate
//! and reorder frames, add latency and jitter, stall, disconnect, spray
//! garbage, or claim another protocol version.
//!
//! The pty's path changes when the rig "reconnects" (a new pty pair), so the
//! rig can also keep a symlink at a fixed path pointing to the current one;
//! the daemon opens the link and finds the new pty after a disconnect.

use crate::config::SimConfig;
use crate::plant::{Plant, SimPlant};
use crate::protocol::{encode, Body, Decoder, Frame, Hello, SampleFrame, MAX_WIRE, VERSION};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serialport::{SerialPort, TTYPort};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Misbehaviour to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a sample frame is not sent.
    pub drop: f64,
    /// Probability that one byte of a sample frame is flipped.
    pub corrupt: f64,
    /// Probability that a sample frame is sent twice.
    pub duplicate: f64,
    /// Probability that a sample frame swaps places with the next.
    pub reorder: f64,
    /// Added latency and its uniform jitter, µs.
    pub latency_us: u64,
    pub jitter_us: u64,
    /// Stop talking (the cell carries on) for `stall_ms` from `stall_at_s`.
    pub stall_at_s: Option<f64>,
    pub stall_ms: f64,
    /// Drop the link at this time, and come back (a new pty) after
    /// `reconnect_ms`.
    pub disconnect_at_s: Option<f64>,
    pub reconnect_ms: f64,
    /// Probability per sample of a burst of 1–64 random bytes.
    pub garbage: f64,
}

/// What the rig is and does.
#[derive(Clone, Debug)]
pub struct RigOptions {
    pub sim: SimConfig,
    /// Keep a symlink here to the current pty.
    pub link: Option<PathBuf>,
    pub rig_id: u32,
    /// The protocol version announced (a wrong one tests refusal).
    pub version: u16,
    /// mV and µA/cm² per count.
    pub v_scale: f32,
    pub i_scale: f32,
    pub faults: Faults,
    /// Stop after this much time, s (`None`: until `stop`).
    pub duration_s: Option<f64>,
    pub seed: u64,
}

impl RigOptions {
    pub fn new(sim: SimConfig) -> RigOptions {
        RigOptions {
            sim,
            link: None,
            rig_id: 1,
            version: VERSION,
            v_scale: 0.001,
            i_scale: 0.001,
            faults: Faults::default(),
            duration_s: None,
            seed: 1,
        }
    }
}

/// What the rig did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RigStats {
    pub samples: u64,
    pub frames_sent: u64,
    pub commands: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub garbage_bytes: u64,
    pub disconnects: u64,
    /// Commands that expired before a newer one came (the rig went to zero
    /// on its own).
    pub expired: u64,
    pub decode_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(String),
    #[error("{path}: cannot publish the link: {error}")]
    Link { path: String, error: std::io::Error },
}

fn open_pair(link: Option<&Path>) -> Result<(TTYPort, TTYPort, PathBuf), RigError> {
    let (mut master, slave) = TTYPort::pair().map_err(|e| RigError::Pty(e.to_string()))?;
    master
        .set_timeout(Duration::from_millis(0))
        .map_err(|e| RigError::Pty(e.to_string()))?;
    let name = PathBuf::from(slave.name().unwrap_or_default());
    if let Some(l) = link {
        let tmp = l.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp)
            .and_then(|()| std::fs::rename(&tmp, l))
            .map_err(|error| RigError::Link {
                path: l.display().to_string(),
                error,
            })?;
    }
    Ok((master, slave, name))
}

/// Write all of `bytes`. The master is non-blocking (reads must not wait);
/// a full pty buffer (a daemon that is behind) is waited out for up to
/// 50 ms, like a UART's FIFO back-pressure, rather than dropping the frame.
/// False if the link is gone or still full.
fn send(master: &mut TTYPort, mut bytes: &[u8]) -> bool {
    let until = Instant::now() + Duration::from_millis(50);
    while !bytes.is_empty() {
        match master.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(_) => return false,
        }
    }
    true
}

/// Run the rig until `stop`, its duration, or an error. `ready` is told the
/// path a daemon should open (the link if there is one) once it exists.
pub fn run(
    opts: &RigOptions,
    stop: &AtomicBool,
    ready: impl FnOnce(&Path),
) -> Result<RigStats, RigError> {
    let f = &opts.faults;
    let mut stats = RigStats::default();
    let (master, slave, name) = open_pair(opts.link.as_deref())?;
    ready(opts.link.as_deref().unwrap_or(&name));
    // The pty pair; `None` while "disconnected". The rig keeps the slave
    // open so the pty survives between daemon connections.
    let mut pty = Some((master, slave));
    let mut sim = SimPlant::new(&opts.sim);
    let period_us = (opts.sim.sample_period_ms * 1000.0).round() as u64;
    let rate = (1e6 / period_us as f64).round() as u32;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut decoder = Decoder::new();
    let mut seq: u16 = 0;
    let mut handshake = false;
    let (mut current, mut expires_us, mut echo_us, mut cmd_seq) = (0.0f64, 0u64, 0u64, 0u16);
    // Frames waiting for their (latency-delayed) send time.
    let mut outbox: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut held: Option<Vec<u8>> = None;
    let mut disconnected_until: Option<u64> = None;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for k in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t_us = k * period_us;
        if opts.duration_s.is_some_and(|d| t_us as f64 / 1e6 >= d) {
            break;
        }
        let due = start + Duration::from_micros(t_us);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Disconnect and reconnect.
        if let (Some(at), None) = (f.disconnect_at_s, disconnected_until) {
            if t_us as f64 / 1e6 >= at && stats.disconnects == 0 {
                stats.disconnects += 1;
                pty = None;
                disconnected_until = Some(t_us + (f.reconnect_ms * 1000.0) as u64);
                handshake = false;
            }
        }
        if let Some(until) = disconnected_until {
            if t_us >= until {
                let (m, s, _) = open_pair(opts.link.as_deref())?;
                pty = Some((m, s));
                disconnected_until = None;
                decoder.reset();
                outbox.clear();
            }
        }
        let linked = pty.is_some();
        let stalled = f.stall_at_s.is_some_and(|at| {
            t_us as f64 / 1e6 >= at && (t_us as f64 / 1e6) < at + f.stall_ms / 1000.0
        });
        // Read what the daemon sent.
        if let Some((master, _)) = &mut pty {
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    match decoder.push(b) {
                        Some(Ok(frame)) => match frame.body {
                            Body::Hello(_) => {
                                handshake = true;
                                let hello = Frame {
                                    seq,
                                    body: Body::Hello(Hello {
                                        version: opts.version,
                                        rig_id: opts.rig_id,
                                        sample_rate_hz: rate,
                                        v_unit: 1,
                                        i_unit: 1,
                                        v_scale: opts.v_scale,
                                        i_scale: opts.i_scale,
                                    }),
                                };
                                seq = seq.wrapping_add(1);
                                let mut wire = [0u8; MAX_WIRE];
                                let n = encode(&hello, &mut wire);
                                send(master, &[0]);
                                send(master, &wire[..n]);
                                stats.frames_sent += 1;
                            }
                            Body::Command(c) if !stalled => {
                                stats.commands += 1;
                                current = c.amplitude as f64 * opts.i_scale as f64;
                                expires_us = t_us + u64::from(c.valid_for_us);
                                echo_us = c.daemon_us;
                                cmd_seq = frame.seq;
                            }
                            _ => {}
                        },
                        Some(Err(_)) => stats.decode_errors += 1,
                        None => {}
                    }
                }
            }
        }
        // The cell: the command holds until it expires.
        if current != 0.0 && t_us >= expires_us {
            current = 0.0;
            stats.expired += 1;
        }
        let _ = sim.write(current);
        let s = match sim.read() {
            Ok(s) => s,
            Err(_) => break,
        };
        stats.samples += 1;
        if !(linked && handshake) || stalled {
            continue;
        }
        let frame = Frame {
            seq,
            body: Body::Sample(SampleFrame {
                t_us,
                v: (s.v_mv / opts.v_scale as f64).round() as i32,
                i_applied: (s.i_applied / opts.i_scale as f64).round() as i32,
                echo_us,
                cmd_seq,
            }),
        };
        seq = seq.wrapping_add(1);
        if unit() < f.drop {
            stats.dropped += 1;
            continue;
        }
        let mut wire = [0u8; MAX_WIRE];
        let n = encode(&frame, &mut wire);
        // A leading delimiter: line noise before the frame ends as its own
        // bad frame instead of swallowing this one.
        let mut bytes = Vec::with_capacity(n + 1);
        bytes.push(0);
        bytes.extend_from_slice(&wire[..n]);
        if unit() < f.corrupt {
            let at = 1 + (unit() * (n - 1) as f64) as usize;
            bytes[at] ^= 1 << ((unit() * 8.0) as u32 % 8);
            if bytes[at] == 0 {
                bytes[at] = 0x55;
            }
            stats.corrupted += 1;
        }
        let jitter = if f.jitter_us > 0 {
            (unit() * f.jitter_us as f64) as u64
        } else {
            0
        };
        let send_at = t_us + f.latency_us + jitter;
        if let Some(h) = held.take() {
            outbox.push_back((send_at, bytes.clone()));
            outbox.push_back((send_at, h));
        } else if unit() < f.reorder {
            held = Some(bytes);
            stats.reordered += 1;
        } else {
            if unit() < f.duplicate {
                outbox.push_back((send_at, bytes.clone()));
                stats.duplicated += 1;
            }
            outbox.push_back((send_at, bytes));
        }
        if unit() < f.garbage {
            let len = 1 + (unit() * 63.0) as usize;
            let junk: Vec<u8> = (0..len).map(|_| (unit() * 256.0) as u8).collect();
            stats.garbage_bytes += len as u64;
            outbox.push_back((t_us, junk));
        }
        while outbox.front().is_some_and(|(at, _)| *at <= t_us) {
            let (_, b) = outbox.pop_front().expect("checked");
            if let Some((master, _)) = &mut pty {
                if send(master, &b) {
                    stats.frames_sent += 1;
                }
            }
        }
    }
    Ok(stats)
}
