//! `neurostimd rig`: an emulated bench rig on a pseudo-terminal, with the
//! CA1 simulator behind it paced in real time, speaking the wire protocol
//! (`docs/protocol.md`), so hardware-in-the-loop runs and their fault tests
//! need no hardware. It can misbehave on purpose: drop, corrupt, duplicate
//! and reorder frames, add latency and jitter, stall, disconnect, spray
//! garbage, claim another protocol version or a coarse current scale,
//! reboot (its sequence numbers start again), announce another sample rate
//! mid-run, or apply a current other than the one commanded (a gain
//! error), which the daemon must notice from the applied current each
//! sample reports.
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
    /// Gain error of the current output: the cell gets (and the samples
    /// report) the commanded current × (1 + `misapply`), from
    /// `misapply_at_s` on.
    pub misapply: f64,
    pub misapply_at_s: f64,
    /// Reboot at this time: sequence numbers start again from 0, the
    /// command in force and its echo are forgotten, and streaming goes on
    /// without a new Hello.
    pub reboot_at_s: Option<f64>,
    /// Announce this sample rate in an unsolicited Hello at
    /// `rate_change_at_s` (the rig's own rate: a fresh handshake).
    pub rate_change_at_s: Option<f64>,
    pub rate_change_hz: u32,
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
    /// Total |charge| the rig applied to the cell, nC/cm², and the largest
    /// |current|, µA/cm²: what the daemon's limiter must have counted and
    /// bounded.
    pub charge_applied_nc_cm2: f64,
    pub max_abs_current: f64,
    pub reboots: u64,
    pub rate_changes: u64,
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
/// Once a wait has run out nobody is reading (the daemon went away), and
/// `patient` turns off: frames are then dropped at once until a write
/// goes through again, so the rig keeps its own clock (and ends at its
/// `--duration`) instead of spending 50 ms on every frame. False if the
/// link is gone or full.
fn send(master: &mut TTYPort, mut bytes: &[u8], patient: &mut bool) -> bool {
    let until = Instant::now() + Duration::from_millis(if *patient { 50 } else { 0 });
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
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) {
                    *patient = false;
                }
                return false;
            }
        }
    }
    *patient = true;
    true
}

/// Run the rig until `stop`, its duration, or an error. `ready` is told the
/// path a daemon should open (the link if there is one) once it exists.
pub fn run(
    opts: &RigOptions,
    stop: &AtomicBool,
    ready: impl FnOnce(&Path),
) -> Result<RigStats, RigError> {
    let (master, slave, name) = open_pair(opts.link.as_deref())?;
    ready(opts.link.as_deref().unwrap_or(&name));
    let mut sim = SimPlant::new(&opts.sim);
    let period_us = (opts.sim.sample_period_ms * 1000.0).round() as u64;
    let mut rig = Rig {
        opts,
        stats: RigStats::default(),
        pty: Some((master, slave)),
        rng: Xoshiro256PlusPlus::seed_from_u64(opts.seed),
        rate: (1e6 / period_us as f64).round() as u32,
        decoder: Decoder::new(),
        seq: 0,
        handshake: false,
        current: 0.0,
        expires_us: 0,
        echo_us: 0,
        cmd_seq: 0,
        outbox: VecDeque::new(),
        held: None,
        disconnected_until: None,
        patient: true,
        buf: [0u8; 512],
    };
    let f = &opts.faults;
    let start = Instant::now();
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
        rig.disconnect_or_reconnect(t_us)?;
        let linked = rig.pty.is_some();
        let stalled = f.stall_at_s.is_some_and(|at| {
            t_us as f64 / 1e6 >= at && (t_us as f64 / 1e6) < at + f.stall_ms / 1000.0
        });
        rig.reboot_or_announce(t_us);
        rig.receive(t_us, stalled);
        // The cell: the command holds until it expires.
        if rig.current != 0.0 && t_us >= rig.expires_us {
            rig.current = 0.0;
            rig.stats.expired += 1;
        }
        let gain = if t_us as f64 / 1e6 >= f.misapply_at_s {
            1.0 + f.misapply
        } else {
            1.0
        };
        let applied = rig.current * gain;
        rig.stats.charge_applied_nc_cm2 += applied.abs() * period_us as f64 / 1000.0;
        rig.stats.max_abs_current = rig.stats.max_abs_current.max(applied.abs());
        let _ = sim.write(applied);
        let s = match sim.read() {
            Ok(s) => s,
            Err(_) => break,
        };
        rig.stats.samples += 1;
        if !(linked && rig.handshake) || stalled {
            continue;
        }
        rig.send_sample(t_us, s.v_mv, s.i_applied);
    }
    Ok(rig.stats)
}

/// The rig's state between samples: the link, the protocol's counters,
/// the command in force and the frames the faults hold back.
struct Rig<'a> {
    opts: &'a RigOptions,
    stats: RigStats,
    /// The pty pair; `None` while "disconnected". The rig keeps the slave
    /// open so the pty survives between daemon connections.
    pty: Option<(TTYPort, TTYPort)>,
    rng: Xoshiro256PlusPlus,
    /// Announced in the rig's hello, Hz.
    rate: u32,
    decoder: Decoder,
    seq: u16,
    handshake: bool,
    current: f64,
    expires_us: u64,
    echo_us: u64,
    cmd_seq: u16,
    /// Frames waiting for their (latency-delayed) send time.
    outbox: VecDeque<(u64, Vec<u8>)>,
    held: Option<Vec<u8>>,
    disconnected_until: Option<u64>,
    /// Whether a full link is waited out (see [`send`]).
    patient: bool,
    buf: [u8; 512],
}

impl Rig<'_> {
    /// Uniform in [0, 1): every fault draws from the one seeded stream, so
    /// a seed replays the same misbehaviour.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The disconnect fault: drop the link once, and come back on a new pty.
    fn disconnect_or_reconnect(&mut self, t_us: u64) -> Result<(), RigError> {
        let f = &self.opts.faults;
        if let (Some(at), None) = (f.disconnect_at_s, self.disconnected_until) {
            if t_us as f64 / 1e6 >= at && self.stats.disconnects == 0 {
                self.stats.disconnects += 1;
                self.pty = None;
                self.disconnected_until = Some(t_us + (f.reconnect_ms * 1000.0) as u64);
                self.handshake = false;
            }
        }
        if let Some(until) = self.disconnected_until {
            if t_us >= until {
                let (m, s, _) = open_pair(self.opts.link.as_deref())?;
                self.pty = Some((m, s));
                self.disconnected_until = None;
                self.decoder.reset();
                self.outbox.clear();
            }
        }
        Ok(())
    }

    /// The reboot and rate-change faults, each once.
    fn reboot_or_announce(&mut self, t_us: u64) {
        let f = &self.opts.faults;
        let t = t_us as f64 / 1e6;
        if f.reboot_at_s.is_some_and(|at| t >= at) && self.stats.reboots == 0 {
            self.stats.reboots += 1;
            self.seq = 0;
            self.current = 0.0;
            self.expires_us = 0;
            self.echo_us = 0;
            self.cmd_seq = 0;
            self.decoder.reset();
            self.outbox.clear();
            self.held = None;
        }
        if f.rate_change_at_s.is_some_and(|at| t >= at) && self.stats.rate_changes == 0 {
            self.stats.rate_changes += 1;
            if self.handshake {
                self.send_hello(f.rate_change_hz);
            }
        }
    }

    /// Send a Hello announcing `rate` Hz.
    fn send_hello(&mut self, rate: u32) {
        let opts = self.opts;
        let Some((master, _)) = &mut self.pty else {
            return;
        };
        let hello = Frame {
            seq: self.seq,
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
        self.seq = self.seq.wrapping_add(1);
        let mut wire = [0u8; MAX_WIRE];
        let n = encode(&hello, &mut wire);
        send(master, &[0], &mut self.patient);
        send(master, &wire[..n], &mut self.patient);
        self.stats.frames_sent += 1;
    }

    /// Read what the daemon sent: answer its hello, take its commands
    /// (ignored while stalled).
    fn receive(&mut self, t_us: u64, stalled: bool) {
        let opts = self.opts;
        loop {
            let Some((master, _)) = &mut self.pty else {
                return;
            };
            let n = match master.read(&mut self.buf) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            for k in 0..n {
                match self.decoder.push(self.buf[k]) {
                    Some(Ok(frame)) => match frame.body {
                        Body::Hello(_) => {
                            self.handshake = true;
                            self.send_hello(self.rate);
                        }
                        Body::Command(c) if !stalled => {
                            self.stats.commands += 1;
                            self.current = c.amplitude as f64 * opts.i_scale as f64;
                            self.expires_us = t_us + u64::from(c.valid_for_us);
                            self.echo_us = c.daemon_us;
                            self.cmd_seq = frame.seq;
                        }
                        _ => {}
                    },
                    Some(Err(_)) => self.stats.decode_errors += 1,
                    None => {}
                }
            }
        }
    }

    /// Send a sample frame through the faults (drop, corrupt, delay,
    /// reorder, duplicate, garbage), then whatever is due from the outbox.
    /// A dropped sample sends nothing this period, not even what is due.
    fn send_sample(&mut self, t_us: u64, v_mv: f64, i_applied: f64) {
        let opts = self.opts;
        let f = &opts.faults;
        let frame = Frame {
            seq: self.seq,
            body: Body::Sample(SampleFrame {
                t_us,
                v: (v_mv / opts.v_scale as f64).round() as i32,
                i_applied: (i_applied / opts.i_scale as f64).round() as i32,
                echo_us: self.echo_us,
                cmd_seq: self.cmd_seq,
            }),
        };
        self.seq = self.seq.wrapping_add(1);
        if self.unit() < f.drop {
            self.stats.dropped += 1;
            return;
        }
        let mut wire = [0u8; MAX_WIRE];
        let n = encode(&frame, &mut wire);
        // A leading delimiter: line noise before the frame ends as its own
        // bad frame instead of swallowing this one.
        let mut bytes = Vec::with_capacity(n + 1);
        bytes.push(0);
        bytes.extend_from_slice(&wire[..n]);
        if self.unit() < f.corrupt {
            let at = 1 + (self.unit() * (n - 1) as f64) as usize;
            bytes[at] ^= 1 << ((self.unit() * 8.0) as u32 % 8);
            if bytes[at] == 0 {
                bytes[at] = 0x55;
            }
            self.stats.corrupted += 1;
        }
        let jitter = if f.jitter_us > 0 {
            (self.unit() * f.jitter_us as f64) as u64
        } else {
            0
        };
        let send_at = t_us + f.latency_us + jitter;
        if let Some(h) = self.held.take() {
            self.outbox.push_back((send_at, bytes.clone()));
            self.outbox.push_back((send_at, h));
        } else if self.unit() < f.reorder {
            self.held = Some(bytes);
            self.stats.reordered += 1;
        } else {
            if self.unit() < f.duplicate {
                self.outbox.push_back((send_at, bytes.clone()));
                self.stats.duplicated += 1;
            }
            self.outbox.push_back((send_at, bytes));
        }
        if self.unit() < f.garbage {
            let len = 1 + (self.unit() * 63.0) as usize;
            let junk: Vec<u8> = (0..len).map(|_| (self.unit() * 256.0) as u8).collect();
            self.stats.garbage_bytes += len as u64;
            self.outbox.push_back((t_us, junk));
        }
        while self.outbox.front().is_some_and(|(at, _)| *at <= t_us) {
            let (_, b) = self.outbox.pop_front().expect("checked");
            if let Some((master, _)) = &mut self.pty {
                if send(master, &b, &mut self.patient) {
                    self.stats.frames_sent += 1;
                }
            }
        }
    }
}
