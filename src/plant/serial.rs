//! A bench rig over a serial port (DESIGN §2, §6; `docs/protocol.md`).
//!
//! The rig clocks the loop: `read` blocks until the next Sample frame.
//! Every command goes back tagged with the sample it answers and a short
//! validity, so a rig whose daemon falls silent returns to zero by itself.
//! The plant never trusts the link: malformed frames are counted and
//! skipped; a stall longer than the timeout or a disconnect is reported as
//! [`PlantError::Interrupted`] (the loop writes zero and carries on) while
//! the plant reconnects in the background of its own `read` calls; a rig
//! fault frame or a protocol version mismatch is fatal.
//!
//! Reading uses a fixed buffer and the allocation-free decoder; only
//! (re)opening the port allocates, which happens on faults, not per sample.

use super::{Plant, PlantError, Refusal, Sample};
use crate::protocol::{
    encode, Body, CommandFrame, Decoder, Frame, Hello, SampleFrame, MAX_WIRE, VERSION,
};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to reach the rig (validated `[plant.serial]` / `--port`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SerialConfig {
    pub port: PathBuf,
    pub baud: u32,
    /// No sample for this long is a stall (stimulation to zero), ms.
    pub timeout_ms: f64,
    /// Commands stay valid on the rig for this long, µs.
    pub valid_for_us: u32,
    /// Expected sample period before the rig's Hello says, ms.
    pub sample_period_ms: f64,
    /// `safety.max_amplitude`, µA/cm²: the rig's current scale is checked
    /// against it at the handshake ([`MIN_COUNTS_IN_LIMIT`]).
    pub max_amplitude: f64,
}

/// Link statistics, for the run's summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct LinkStats {
    pub frames: crate::protocol::DecodeStats,
    /// Samples the rig's sequence numbers say never arrived.
    pub sequence_gaps: u64,
    /// Times the rig's numbering started again (a new Hello, or a reboot
    /// seen as a run of older-looking frames).
    pub sequence_restarts: u64,
    /// Samples that arrived out of order or twice (dropped).
    pub stale_frames: u64,
    pub stalls: u64,
    /// Longest delay between a stall's deadline and its detection, µs
    /// (stimulation goes to zero right after detection).
    pub stall_detect_late_us: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Frames that were valid but unexpected (a Command from the rig).
    pub unexpected: u64,
    /// Samples whose reported applied current disagreed with the command
    /// in force beyond the tolerance ([`Reconciler`]); a run of
    /// [`MISAPPLIED_RUN`] of them is a fault.
    pub applied_mismatches: u64,
    /// The largest disagreement seen, counts.
    pub applied_mismatch_max: u64,
}

/// A serial rig.
pub struct SerialPlant {
    cfg: SerialConfig,
    port: Option<serialport::TTYPort>,
    decoder: Decoder,
    hello: Option<Hello>,
    rx: [u8; 256],
    rx_len: usize,
    rx_pos: usize,
    seq_out: u16,
    last_seq: Option<u16>,
    /// A sample has been accepted (a restart continues the index).
    started: bool,
    /// Consecutive frames that looked older than the last.
    stale_run: u32,
    index: u64,
    last_sample: Instant,
    last_attempt: Option<Instant>,
    stalled: bool,
    /// While stalled or disconnected, `read` still returns every timeout
    /// period, so the loop can see a stop request.
    last_interrupt: Instant,
    epoch: Instant,
    /// Round-trip times, ns, from the rig's echo of our command clocks.
    rtt: hdrhistogram::Histogram<u64>,
    /// The commands sent, to check what the rig says it applied.
    recon: Reconciler,
    pub stats: LinkStats,
}

/// Why the rig cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("{port}: cannot open: {error}")]
    Open { port: String, error: String },
    #[error("{port}: no Hello from the rig within {secs} s (is a rig attached and speaking docs/protocol.md?)")]
    NoHello { port: String, secs: f64 },
    #[error("{port}: {refusal}")]
    Refused { port: String, refusal: Refusal },
}

impl SerialPlant {
    /// Open the port now (a missing port is an error at start; later
    /// disconnects are recovered).
    pub fn open(cfg: SerialConfig) -> Result<SerialPlant, SerialError> {
        let mut p = SerialPlant {
            port: None,
            decoder: Decoder::new(),
            hello: None,
            rx: [0; 256],
            rx_len: 0,
            rx_pos: 0,
            seq_out: 0,
            last_seq: None,
            started: false,
            stale_run: 0,
            index: 0,
            last_sample: Instant::now(),
            last_attempt: None,
            stalled: false,
            last_interrupt: Instant::now(),
            epoch: Instant::now(),
            rtt: crate::report::new_histogram(),
            recon: Reconciler::new(),
            stats: LinkStats::default(),
            cfg,
        };
        let port = p.connect().map_err(|error| SerialError::Open {
            port: p.cfg.port.display().to_string(),
            error,
        })?;
        p.port = Some(port);
        p.handshake(Duration::from_secs(3))?;
        Ok(p)
    }

    /// Say Hello until the rig answers (so the sample period is known
    /// before the loop starts), refusing another protocol version.
    fn handshake(&mut self, within: Duration) -> Result<(), SerialError> {
        let port = self.cfg.port.display().to_string();
        let until = Instant::now() + within;
        let mut last_hello: Option<Instant> = None;
        while Instant::now() < until {
            if last_hello.is_none_or(|t| t.elapsed() > Duration::from_millis(250)) {
                last_hello = Some(Instant::now());
                self.send_hello();
            }
            match self.next_byte() {
                Ok(Some(b)) => {
                    if let Some(Ok(Frame {
                        body: Body::Hello(h),
                        ..
                    })) = self.decoder.push(b)
                    {
                        if let Err(refusal) = check_hello(&h, self.cfg.max_amplitude) {
                            return Err(SerialError::Refused { port, refusal });
                        }
                        self.hello = Some(h);
                        self.last_sample = Instant::now();
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(()) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Err(SerialError::NoHello {
            port,
            secs: within.as_secs_f64(),
        })
    }

    /// Round-trip times so far (ns).
    pub fn rtt(&self) -> &hdrhistogram::Histogram<u64> {
        &self.rtt
    }

    /// What the rig said about itself.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    fn connect(&self) -> Result<serialport::TTYPort, String> {
        let path = self.cfg.port.display().to_string();
        // Resolve symlinks (an emulated rig publishes a stable link).
        let real = std::fs::canonicalize(&self.cfg.port)
            .map(|p| p.display().to_string())
            .unwrap_or(path);
        let port = serialport::new(real, self.cfg.baud)
            .timeout(Duration::from_millis(1))
            .open_native()
            .map_err(|e| e.to_string())?;
        // Whatever queued up while nobody listened is stale.
        let _ = serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input);
        Ok(port)
    }

    fn send(&mut self, body: Body) {
        let frame = Frame {
            seq: self.seq_out,
            body,
        };
        self.seq_out = self.seq_out.wrapping_add(1);
        // A leading delimiter (docs/protocol.md): noise before the frame
        // cannot swallow it.
        let mut wire = [0u8; MAX_WIRE + 1];
        let mut tail = [0u8; MAX_WIRE];
        let n = encode(&frame, &mut tail);
        wire[1..=n].copy_from_slice(&tail[..n]);
        if let Some(port) = &mut self.port {
            if port.write_all(&wire[..=n]).is_err() {
                self.drop_link();
            }
        }
    }

    fn send_hello(&mut self) {
        self.send(Body::Hello(Hello {
            version: VERSION,
            rig_id: 0,
            sample_rate_hz: 0,
            v_unit: 0,
            i_unit: 0,
            v_scale: 0.0,
            i_scale: 0.0,
        }));
    }

    fn drop_link(&mut self) {
        if self.port.take().is_some() {
            self.stats.disconnects += 1;
        }
        self.hello = None;
        self.decoder.reset();
        self.rx_len = 0;
        self.rx_pos = 0;
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The next byte, waiting up to the port timeout; `Ok(None)` if none.
    fn next_byte(&mut self) -> Result<Option<u8>, ()> {
        if self.rx_pos < self.rx_len {
            let b = self.rx[self.rx_pos];
            self.rx_pos += 1;
            return Ok(Some(b));
        }
        let stall_at = Duration::from_secs_f64(self.cfg.timeout_ms / 1000.0);
        let remaining = stall_at.saturating_sub(self.last_sample.elapsed());
        let Some(port) = &self.port else {
            return Err(());
        };
        // Wake up no later than the stall deadline (so a stall is noticed
        // within a poll wake-up of it, not a millisecond later), and at
        // least every millisecond to resend Hellos and reconnect. Plain
        // ppoll and read on the descriptor: the serial crate's timed read
        // builds a boxed error on every timeout, an allocation per idle
        // wait in the real-time loop.
        let wait = remaining.clamp(Duration::from_micros(20), Duration::from_millis(1));
        let fd = std::os::fd::AsRawFd::as_raw_fd(port);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if ready == 0 {
            return Ok(None);
        }
        if ready < 0 {
            let interrupted = std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
            return if interrupted { Ok(None) } else { Err(()) };
        }
        if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 && pfd.revents & libc::POLLIN == 0 {
            return Err(());
        }
        // SAFETY: reading into our own buffer, within its length.
        let n = unsafe { libc::read(fd, self.rx.as_mut_ptr().cast(), self.rx.len()) };
        match n {
            n if n > 0 => {
                self.rx_len = n as usize;
                self.rx_pos = 1;
                Ok(Some(self.rx[0]))
            }
            0 => Err(()),
            _ => {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EAGAIN) || e == Some(libc::EINTR) {
                    Ok(None)
                } else {
                    Err(())
                }
            }
        }
    }

    /// The rig's numbering starts again (a new Hello, or a run of frames
    /// that all look older than the last): the next frame continues our
    /// sample index instead of being dropped as stale for seconds.
    fn restart_sequence(&mut self) {
        if self.last_seq.is_some() {
            self.last_seq = None;
            self.stats.sequence_restarts += 1;
        }
        self.stale_run = 0;
        // A rig that restarted applies nothing until it is told again.
        self.recon.forget();
    }

    fn accept_sample(&mut self, seq: u16, s: SampleFrame, h: Hello) -> Option<Sample> {
        match self.last_seq {
            Some(last) => {
                let step = seq.wrapping_sub(last);
                if step == 0 || step > u16::MAX / 2 {
                    // A duplicate or an older frame: drop it. Many in a
                    // row mean the rig rebooted and counts from 0 again.
                    self.stats.stale_frames += 1;
                    self.stale_run += 1;
                    if self.stale_run >= RESTART_AFTER_STALE {
                        self.restart_sequence();
                    }
                    return None;
                }
                self.stats.sequence_gaps += u64::from(step - 1);
                self.index += u64::from(step);
            }
            None if self.started => self.index += 1,
            None => self.index = 0,
        }
        self.started = true;
        self.stale_run = 0;
        self.last_seq = Some(seq);
        if s.echo_us != 0 {
            let rtt = self.now_us().saturating_sub(s.echo_us) * 1000;
            self.rtt.saturating_record(rtt.max(1));
        }
        Some(Sample {
            index: self.index,
            t_ms: s.t_us as f64 / 1000.0,
            v_mv: s.v as f64 * h.v_scale as f64,
            i_applied: s.i_applied as f64 * h.i_scale as f64,
        })
    }
}

/// Consecutive older-looking frames after which the rig is taken to have
/// restarted its sequence numbers (a duplicated or reordered frame is one
/// or two, never this many in a row).
const RESTART_AFTER_STALE: u32 = 8;

/// The amplitude limit must span at least this many whole counts of the
/// rig's current scale. Commands are quantised toward zero, so the rig
/// can never exceed a limit, but it loses up to one count of every
/// command: with four counts in the limit that is at most a quarter of
/// the largest command, and a scale of one count or more above the limit
/// would leave nothing but zero.
pub const MIN_COUNTS_IN_LIMIT: u32 = 4;

/// A Hello this daemon can work with under the amplitude limit
/// `max_amplitude` (µA/cm²).
fn check_hello(h: &Hello, max_amplitude: f64) -> Result<(), Refusal> {
    if h.version != VERSION {
        return Err(Refusal::Version {
            rig: h.version,
            ours: VERSION,
        });
    }
    if h.sample_rate_hz == 0
        || !(h.v_scale.is_finite() && h.v_scale > 0.0)
        || !(h.i_scale.is_finite() && h.i_scale > 0.0)
    {
        return Err(Refusal::BadHello {
            rate: h.sample_rate_hz,
        });
    }
    let i_scale = f64::from(h.i_scale);
    if i_scale * f64::from(MIN_COUNTS_IN_LIMIT) > max_amplitude {
        return Err(Refusal::CoarseScale {
            i_scale,
            max_amplitude,
            min_counts: MIN_COUNTS_IN_LIMIT,
        });
    }
    Ok(())
}

/// Commands remembered for reconciliation: the rig's echo trails the
/// newest command by the round trip, which on a loaded host reached 67
/// commands (6.7 ms at 10 kHz; the reference firmware's host build, in
/// `scripts/ci_firmware.sh`): 1,024 (0.1 s at 10 kHz, 8 KiB) keeps every
/// command a report can refer to. A report whose commands have left the
/// ring is not checked rather than misjudged.
const SENT_RING: usize = 1024;

/// Disagreement between the reported and the commanded current that is
/// not a fault, in counts: the rig's converters may be a count off either
/// way, and a count more is rounding of the reported value.
pub const APPLIED_TOLERANCE_COUNTS: i64 = 2;

/// Consecutive disagreeing samples that make a fault. A healthy rig never
/// disagrees (the check below does not depend on timing), so five in a
/// row (0.5 ms at 10 kHz) leaves room only for a glitch in a converter.
pub const MISAPPLIED_RUN: u32 = 5;

/// What the rig may have applied, from what it says it applied: every
/// `Sample` frame echoes the sequence number of the last command the rig
/// took (`cmd_seq`, with its `echo_us`), and reports the current over the
/// interval ending at the sample (`i_applied`). Over that interval the
/// rig's output was the echoed command, or one it took since the previous
/// frame's echo (a burst from a late daemon, or the previous command when
/// the new one came during the interval: the reference firmware reports
/// the output before this tick's command), or zero (expired, zeroed on a
/// malformed stream, clamped toward zero by the rig's own limit). So the
/// check needs no model of transit times, which differ between the
/// emulated rig, the reference firmware and a loaded host: a report is
/// allowed anywhere from zero to the furthest of those commands, and
/// delivering more than any of them, or the wrong sign, beyond the
/// tolerance, is a fault. Holding a command past `valid_for` is the rig's
/// own duty (the firmware's `hold_max_us`); the limiter counts it as held
/// until then. A fixed ring: never allocates.
#[derive(Clone, Debug)]
struct Reconciler {
    /// (frame sequence, counts) of the commands sent, oldest overwritten.
    sent: [(u16, i32); SENT_RING],
    len: usize,
    head: usize,
    /// The command the previous frame echoed (`None`: none yet).
    last_echo: Option<u16>,
    run: u32,
}

impl Reconciler {
    fn new() -> Reconciler {
        Reconciler {
            sent: [(0, 0); SENT_RING],
            len: 0,
            head: 0,
            last_echo: None,
            run: 0,
        }
    }

    /// A restarted rig applies nothing it was told before.
    fn forget(&mut self) {
        self.len = 0;
        self.run = 0;
        self.last_echo = None;
    }

    fn push(&mut self, seq: u16, counts: i32) {
        self.sent[self.head] = (seq, counts);
        self.head = (self.head + 1) % SENT_RING;
        self.len = (self.len + 1).min(SENT_RING);
    }

    /// The range of currents (counts) the rig may report when it echoes
    /// `echo`; `None` if that command is not among those remembered (sent
    /// before a restart, or too long ago): nothing to check against.
    fn allowed(&self, echo: Option<u16>) -> Option<(i64, i64)> {
        let Some(q) = echo else {
            return Some((0, 0));
        };
        let newest = (1..=self.len).map(|k| self.sent[(self.head + SENT_RING - k) % SENT_RING]);
        // Commands from the previous frame's echo up to this one: their
        // distance back from `q` in sequence numbers (which wrap).
        let span = self.last_echo.map_or(0, |p| q.wrapping_sub(p));
        let span = if span > u16::MAX / 2 { 0 } else { span };
        // Every command from `span` back to the echoed one must still be
        // in the ring, or the range would miss the one in force.
        let mut found = false;
        let mut complete = false;
        let (mut lo, mut hi) = (0i64, 0i64);
        for (seq, counts) in newest {
            let back = q.wrapping_sub(seq);
            if back > u16::MAX / 2 {
                continue; // sent after the echoed one: not yet taken
            }
            if back > span {
                complete = true;
                break;
            }
            found |= back == 0;
            complete |= back == span;
            lo = lo.min(i64::from(counts));
            hi = hi.max(i64::from(counts));
        }
        (found && complete).then_some((lo, hi))
    }

    /// Check one sample's reported current (counts); a fault once
    /// [`MISAPPLIED_RUN`] samples in a row disagree.
    fn check(&mut self, s: &SampleFrame, stats: &mut LinkStats) -> Result<(), Refusal> {
        let echo = (s.echo_us != 0).then_some(s.cmd_seq);
        let allowed = self.allowed(echo);
        self.last_echo = echo;
        let Some((lo, hi)) = allowed else {
            self.run = 0;
            return Ok(());
        };
        let got = i64::from(s.i_applied);
        let off = (lo - got).max(got - hi).max(0);
        if off <= APPLIED_TOLERANCE_COUNTS {
            self.run = 0;
            return Ok(());
        }
        stats.applied_mismatches += 1;
        stats.applied_mismatch_max = stats.applied_mismatch_max.max(off as u64);
        self.run += 1;
        if self.run < MISAPPLIED_RUN {
            return Ok(());
        }
        let expected = if got > hi { hi } else { lo };
        Err(Refusal::Misapplied {
            reported: s.i_applied,
            expected: expected.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            tolerance: APPLIED_TOLERANCE_COUNTS as i32,
            samples: self.run,
        })
    }
}

impl Plant for SerialPlant {
    /// The rig holds each command for `valid_for` (or until the next).
    fn command_hold_samples(&self) -> u64 {
        let period_us = self.sample_period_ms() * 1000.0;
        (f64::from(self.cfg.valid_for_us) / period_us).ceil() as u64
    }

    fn kind(&self) -> &'static str {
        "serial"
    }

    fn sample_period_ms(&self) -> f64 {
        match &self.hello {
            Some(h) if h.sample_rate_hz > 0 => 1000.0 / h.sample_rate_hz as f64,
            _ => self.cfg.sample_period_ms,
        }
    }

    fn clocked(&self) -> bool {
        true
    }

    fn report(&self) -> Option<serde_json::Value> {
        let pct = |q: f64| self.rtt.value_at_quantile(q) as f64 / 1000.0;
        Some(serde_json::json!({
            "port": self.cfg.port.display().to_string(),
            "hello": self.hello.map(|h| serde_json::json!({
                "version": h.version, "rig_id": h.rig_id, "sample_rate_hz": h.sample_rate_hz,
                "v_scale": h.v_scale, "i_scale": h.i_scale,
            })),
            "link": self.stats,
            "round_trip_us": (!self.rtt.is_empty()).then(|| serde_json::json!({
                "count": self.rtt.len(), "p50": pct(0.5), "p99": pct(0.99),
                "p999": pct(0.999), "max": self.rtt.max() as f64 / 1000.0,
            })),
        }))
    }

    fn read(&mut self) -> Result<Sample, PlantError> {
        let timeout = Duration::from_secs_f64(self.cfg.timeout_ms / 1000.0);
        loop {
            if self.port.is_none() {
                // Reconnect, at most every 100 ms.
                if self
                    .last_attempt
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(100))
                {
                    self.last_attempt = Some(Instant::now());
                    if let Ok(p) = self.connect() {
                        self.port = Some(p);
                        self.stats.reconnects += 1;
                        self.send_hello();
                        continue;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
                if self.last_interrupt.elapsed() > timeout {
                    self.stalled = true;
                    self.last_interrupt = Instant::now();
                    return Err(PlantError::Interrupted {
                        what: "rig disconnected",
                    });
                }
                continue;
            }
            match self.next_byte() {
                Err(()) => {
                    self.drop_link();
                    self.stalled = true;
                    self.last_interrupt = Instant::now();
                    return Err(PlantError::Interrupted {
                        what: "rig disconnected",
                    });
                }
                Ok(None) => {
                    let since = self.last_sample.elapsed();
                    if since > timeout && !self.stalled {
                        self.stalled = true;
                        self.last_interrupt = Instant::now();
                        self.stats.stalls += 1;
                        let late = (since - timeout).as_micros() as u64;
                        self.stats.stall_detect_late_us = self.stats.stall_detect_late_us.max(late);
                        return Err(PlantError::Interrupted {
                            what: "no sample from the rig within the timeout",
                        });
                    }
                    if self.stalled && self.last_interrupt.elapsed() > timeout {
                        // Still stalled: hand control back to the loop.
                        self.last_interrupt = Instant::now();
                        return Err(PlantError::Interrupted {
                            what: "no sample from the rig within the timeout",
                        });
                    }
                    // No Hello yet, or a stall: a rig that rebooted waits
                    // for our Hello before it streams again.
                    if (self.hello.is_none() || self.stalled)
                        && self
                            .last_attempt
                            .is_none_or(|t| t.elapsed() > Duration::from_millis(250))
                    {
                        self.last_attempt = Some(Instant::now());
                        self.send_hello();
                    }
                }
                Ok(Some(b)) => {
                    let Some(result) = self.decoder.push(b) else {
                        continue;
                    };
                    self.stats.frames = self.decoder.stats;
                    let Ok(frame) = result else { continue };
                    match frame.body {
                        Body::Hello(h) => {
                            check_hello(&h, self.cfg.max_amplitude).map_err(PlantError::Refused)?;
                            if let Some(was) = self.hello {
                                if was.sample_rate_hz != h.sample_rate_hz {
                                    return Err(PlantError::Refused(Refusal::RateChanged {
                                        was: was.sample_rate_hz,
                                        now: h.sample_rate_hz,
                                    }));
                                }
                            }
                            // A fresh handshake (a rig that restarted):
                            // its sequence numbers start again.
                            self.hello = Some(h);
                            self.restart_sequence();
                        }
                        Body::Sample(s) => {
                            let Some(h) = self.hello else {
                                self.stats.unexpected += 1;
                                continue;
                            };
                            if let Some(sample) = self.accept_sample(frame.seq, s, h) {
                                self.last_sample = Instant::now();
                                self.stalled = false;
                                self.recon
                                    .check(&s, &mut self.stats)
                                    .map_err(PlantError::Refused)?;
                                return Ok(sample);
                            }
                        }
                        Body::Fault { code, detail } => {
                            return Err(PlantError::Refused(Refusal::RigFault { code, detail }));
                        }
                        Body::Heartbeat { .. } => {}
                        Body::Command(_) => self.stats.unexpected += 1,
                    }
                }
            }
        }
    }

    fn write(&mut self, command: f64) -> Result<(), PlantError> {
        if !command.is_finite() {
            return Err(PlantError::BadCommand);
        }
        let Some(h) = self.hello else {
            return Ok(());
        };
        // Toward zero, never away from it: a rounded-up count on a coarse
        // `i_scale` would exceed the limit the command was limited to.
        let counts = (command / h.i_scale as f64)
            .trunc()
            .clamp(i32::MIN as f64, i32::MAX as f64) as i32;
        let body = Body::Command(CommandFrame {
            answers: self.last_seq.unwrap_or(0),
            amplitude: counts,
            valid_for_us: self.cfg.valid_for_us,
            daemon_us: self.now_us().max(1),
        });
        self.recon.push(self.seq_out, counts);
        self.send(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i_applied: i32, cmd_seq: u16) -> SampleFrame {
        SampleFrame {
            t_us: 0,
            v: 0,
            i_applied,
            echo_us: u64::from(cmd_seq != 0),
            cmd_seq,
        }
    }

    /// Commands with frame seq 1..=n, 1000 + k counts each.
    fn sent(n: u16) -> Reconciler {
        let mut r = Reconciler::new();
        for k in 1..=n {
            r.push(k, 1000 + i32::from(k));
        }
        r
    }

    #[test]
    fn a_rig_that_applies_what_it_is_told_is_never_a_fault() {
        let mut r = sent(30);
        let mut st = LinkStats::default();
        // Nothing taken yet: zero.
        r.check(&sample(0, 0), &mut st).unwrap();
        for k in 1..=10u16 {
            // The echoed command, within the 2-count tolerance.
            r.check(&sample(1002 + i32::from(k), k), &mut st).unwrap();
        }
        // The firmware's convention: the output before this tick's
        // command (the previous echo's), while echoing the new one.
        r.check(&sample(1010, 11), &mut st).unwrap();
        // A late daemon's burst (12..=20 in one tick) and a lost frame:
        // anything from the previous echo (11) to this one (20).
        r.check(&sample(1015, 20), &mut st).unwrap();
        // Expired or clamped by the rig toward zero: never a fault.
        r.check(&sample(0, 21), &mut st).unwrap();
        r.check(&sample(400, 22), &mut st).unwrap();
        assert_eq!(st.applied_mismatches, 0);
        // Sequence numbers wrap.
        let mut r = Reconciler::new();
        for (k, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            r.push(seq, 100 * (k as i32 + 1));
        }
        r.check(&sample(200, 65535), &mut st).unwrap();
        r.check(&sample(400, 1), &mut st).unwrap();
        assert_eq!(st.applied_mismatches, 0);
    }

    #[test]
    fn a_report_whose_commands_left_the_ring_is_not_judged() {
        let mut r = Reconciler::new();
        for k in 1..=2000u16 {
            r.push(k, 10 * i32::from(k));
        }
        let mut st = LinkStats::default();
        // The previous echo (100) has left the 1,024-command ring: the
        // command in force over the interval is unknown, so not a fault.
        r.last_echo = Some(100);
        r.check(&sample(1000, 1500), &mut st).unwrap();
        assert_eq!(st.applied_mismatches, 0);
        // From there on the window is known again and checked.
        r.check(&sample(99_999, 1501), &mut st).unwrap();
        assert_eq!(st.applied_mismatches, 1);
    }

    #[test]
    fn a_gain_error_is_a_fault_after_five_samples() {
        let mut r = Reconciler::new();
        for k in 1..=30u16 {
            r.push(k, 1000);
        }
        let mut st = LinkStats::default();
        for k in 1..=4u16 {
            r.check(&sample(1300, k), &mut st).unwrap();
        }
        let e = r.check(&sample(1300, 5), &mut st).unwrap_err();
        assert_eq!(
            e,
            Refusal::Misapplied {
                reported: 1300,
                expected: 1000,
                tolerance: 2,
                samples: 5
            }
        );
        assert_eq!(st.applied_mismatches, 5);
        // 1,300 reported against 1,000 in force: 300 counts off.
        assert_eq!(st.applied_mismatch_max, 300);
    }

    #[test]
    fn the_wrong_sign_or_current_before_any_command_disagrees_and_one_good_sample_resets_the_run() {
        let mut r = Reconciler::new();
        r.push(1, 500);
        let mut st = LinkStats::default();
        // Current before any command was taken.
        r.check(&sample(300, 0), &mut st).unwrap();
        // The opposite sign of everything sent.
        for _ in 0..3 {
            r.check(&sample(-500, 1), &mut st).unwrap();
        }
        r.check(&sample(500, 1), &mut st).unwrap();
        for _ in 0..4 {
            r.check(&sample(-500, 1), &mut st).unwrap();
        }
        assert_eq!(st.applied_mismatches, 8);
        // A restart forgets every command: an echo of one of them cannot
        // be checked (not a fault), and zero is what is expected.
        r.forget();
        r.check(&sample(500, 1), &mut st).unwrap();
        r.check(&sample(0, 0), &mut st).unwrap();
        assert_eq!(st.applied_mismatches, 8);
    }

    #[test]
    fn the_scale_must_leave_four_counts_in_the_limit() {
        let hello = |i_scale: f32| Hello {
            version: VERSION,
            rig_id: 1,
            sample_rate_hz: 10_000,
            v_unit: 1,
            i_unit: 1,
            v_scale: 0.001,
            i_scale,
        };
        assert!(check_hello(&hello(2.5), 10.0).is_ok());
        let e = check_hello(&hello(3.0), 10.0).unwrap_err();
        assert!(matches!(e, Refusal::CoarseScale { min_counts: 4, .. }));
        let text = e.to_string();
        assert!(
            text.contains("i_scale = 3") && text.contains("max_amplitude = 10"),
            "{text}"
        );
        assert!(check_hello(&hello(f32::NAN), 10.0).is_err());
    }
}
