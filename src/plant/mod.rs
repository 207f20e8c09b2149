//! Plants: where membrane samples come from and where commands go.
//!
//! The control loop sees only the [`Plant`] trait, so the embedded simulator
//! (`sim`), a bench rig (`serial`) and a replayed recording are
//! interchangeable: software in the loop and hardware in the loop run the
//! same code path.
//!
//! Timing convention: sample `k` is the membrane potential at `t_k = k·T` and
//! the stimulation that was applied over `(t_{k−1}, t_k]`, i.e. the current
//! that led into that V. A command written after reading sample `k` is
//! applied over `(t_k, t_{k+1}]` and reported with sample `k + 1`.

pub mod replay;
pub mod serial;
pub mod sim;

pub use sim::SimPlant;

/// One membrane sample.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Sample number since the plant started.
    pub index: u64,
    /// Plant time of the sample, ms (simulated time, or the rig's clock).
    pub t_ms: f64,
    /// Measured membrane potential, mV.
    pub v_mv: f64,
    /// Stimulation applied over the interval ending at this sample, µA/cm².
    pub i_applied: f64,
}

/// What a plant can fail with. Every variant is a fault that the loop maps
/// to zero stimulation; the message says why for the operator.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PlantError {
    /// The plant produced an impossible value (e.g. a non-finite simulator
    /// state); it cannot continue.
    #[error("plant fault at t = {t_ms:.3} ms: {what}")]
    Fault { t_ms: f64, what: &'static str },
    /// A command that is not a finite number was refused; zero was applied.
    #[error("refused non-finite stimulation command; zero applied")]
    BadCommand,
    /// A finite source (a recording, a fixed-length run) has no more samples.
    #[error("the plant has no more samples")]
    Ended,
    /// The plant is temporarily unusable (a stalled or disconnected rig):
    /// the loop writes zero and keeps calling `read`, which recovers.
    #[error("plant interrupted: {what}")]
    Interrupted { what: &'static str },
    /// The plant cannot be driven at all (a rig that speaks another
    /// protocol version or reports a hardware fault).
    #[error("plant refused: {0}")]
    Refused(Refusal),
}

/// Why a plant refuses to be driven.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq)]
pub enum Refusal {
    #[error("the rig speaks protocol version {rig}, this daemon speaks {ours}")]
    Version { rig: u16, ours: u16 },
    #[error("the rig's Hello is unusable (sample rate {rate} Hz, or a scale that is not a positive number)")]
    BadHello { rate: u32 },
    #[error("the rig reported fault code {code} (detail {detail})")]
    RigFault { code: u16, detail: u32 },
    #[error("the rig changed its sample rate mid-run ({was} Hz to {now} Hz); the limiter's charge accounting assumes one period, so the run stops with stimulation at zero")]
    RateChanged { was: u32, now: u32 },
    #[error("the rig's current scale i_scale = {i_scale} per count is too coarse for safety.max_amplitude = {max_amplitude}: the limit must span at least {min_counts} whole counts (i_scale <= {max_scale})", max_scale = max_amplitude / *min_counts as f64)]
    CoarseScale {
        i_scale: f64,
        max_amplitude: f64,
        min_counts: u32,
    },
    #[error("the rig reported applying {reported} counts where {expected} were commanded (tolerance {tolerance} counts) for {samples} samples in a row: what it delivers is not what the limiter counts, so the run stops with stimulation at zero")]
    Misapplied {
        reported: i32,
        expected: i32,
        tolerance: i32,
        samples: u32,
    },
}

impl PlantError {
    /// The limiter's cause for the zero this error forces, so that a rig
    /// that misapplies current is counted apart from other plant faults.
    pub fn safety_fault(&self) -> crate::safety::Fault {
        match self {
            PlantError::Refused(Refusal::Misapplied { .. }) => crate::safety::Fault::RigMisapplied,
            _ => crate::safety::Fault::PlantFault,
        }
    }
}

/// A source of membrane samples that takes stimulation commands.
///
/// Implementations must not allocate, block on locks or do file I/O inside
/// `read` and `write` unless their nature demands it (a serial port blocks
/// on the device by design); the real-time loop calls them every sample.
pub trait Plant: Send {
    /// Short name for reports (`sim`, `serial`, `replay`).
    fn kind(&self) -> &'static str;
    /// Nominal time between samples, ms.
    fn sample_period_ms(&self) -> f64;
    /// The next sample. Blocks until it exists for clocked plants; the
    /// simulator computes it on demand.
    fn read(&mut self) -> Result<Sample, PlantError>;
    /// The stimulation (µA/cm²) to apply until the next sample.
    fn write(&mut self, command: f64) -> Result<(), PlantError>;
    /// True if `read` blocks until the plant's own clock delivers the next
    /// sample (a rig); the loop then does not sleep between samples.
    fn clocked(&self) -> bool {
        false
    }
    /// Samples a command stays applied when no newer one arrives (a rig
    /// holds it until its validity expires): the limiter counts its charge
    /// over lost samples for this long. 0: the plant applies each command
    /// for exactly one sample.
    fn command_hold_samples(&self) -> u64 {
        0
    }
    /// Plant-specific figures for the run's summary (link statistics,
    /// round-trip times). Called after the loop; may allocate.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
}
