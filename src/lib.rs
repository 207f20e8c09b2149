//! # neurostimd
//!
//! A closed-loop neurostimulation controller: it reads membrane samples from a
//! plant, forecasts the membrane potential with an LSTM, chooses a stimulation
//! current, passes it through a safety limiter and writes it back, recording
//! everything.
//!
//! ## Layout
//! - [`neuron`]: the CA1 pyramidal neuron equations (9 states), integrators,
//!   rate tables, spike and burst detection. Pure computation, no I/O.
//! - [`plant`]: the [`plant::Plant`] trait and its implementations: `sim`,
//!   the embedded neuron (software in the loop), and `serial`, a bench rig
//!   over a serial port (hardware in the loop), and `replay`, a recording
//!   played back open loop.
//! - [`protocol`]: the bench-rig wire format (COBS, CRC-16), no I/O.
//! - [`rig`]: `neurostimd rig`, an emulated bench rig on a pseudo-terminal
//!   with fault injection.
//! - [`forecast`]: the LSTM forecaster: model card, ONNX loading and
//!   checks (tract), the native encode-once evaluator, the sample window.
//! - [`modeltool`]: `neurostimd model info|run|bench`.
//! - [`npy`]: float32 `.npy` files (model bundles, `model run`).
//! - [`report`]: latency reports in HdrHistogram's formats (`.hgrm`,
//!   interval logs) and `summary.json`; `neurostimd report`.
//! - [`safety`]: the safety limiter every command passes (amplitude, slew,
//!   charge per phase, net charge balance, budget, zero on faults).
//! - [`simulate`]: running a plant open-loop with a stimulation waveform
//!   (the `neurostimd simulate` command) and writing traces and spike times.
//! - [`control`]: the real-time control loop, the planner thread and their
//!   hand-offs, real-time measures.
//! - [`plot`]: `neurostimd plot`: a run's membrane, forecasts,
//!   stimulation, spikes and latency in one SVG/PNG figure.
//! - [`policy`]: objectives and their scoring, the MPC planner, the
//!   PI/PID/open baselines.
//! - [`service`]: the daemon's service side: control API on a Unix
//!   socket, Prometheus metrics, systemd notify/watchdog, log formats, and
//!   the `neurostimd ctl` client.
//! - [`session`]: one run of the daemon from a configuration (plant,
//!   forecaster, threads, report).
//! - [`scenarios`]: `neurostimd scenarios`, MPC against its baseline on
//!   every objective.
//! - [`record`]: recordings in the Open Ephys binary layout (written on the
//!   record-consumer thread), reading them back, `neurostimd recover`.
//! - [`retrain`]: onboard retraining: recent data, forecast drift, the
//!   low-priority trainer thread, the guarded swap, model versions and
//!   rollback.
//! - [`adaptation`]: `neurostimd adapt`, the regime-change scenario for
//!   onboard retraining.
//! - [`train`]: training the forecaster: simulated datasets, the LSTM's
//!   gradients, Adam, ONNX export, evaluation against baselines.
//! - [`config`]: the TOML configuration, raw → validated, with errors that
//!   name the file, line and key.
//! - [`units`]: physical quantities in configuration (`"0.1 ms"`).
//!
//! See `shared/DESIGN.md` for the architecture this crate grows into.

pub mod adaptation;
pub mod config;
pub mod control;
pub mod forecast;
pub mod modeltool;
pub mod neuron;
pub mod npy;
pub mod plant;
pub mod plot;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod report;
pub mod retrain;
pub mod rig;
pub mod safety;
pub mod scenarios;
pub mod service;
pub mod session;
pub mod simulate;
pub mod train;
pub mod units;
