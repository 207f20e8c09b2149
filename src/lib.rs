//! # neurostimd
//!
//! A closed-loop neurostimulation controller: it reads membrane samples from a
//! plant, forecasts the membrane potential with an LSTM, chooses a stimulation
//! current, passes it through a safety limiter and writes it back, recording
//! everything.
//!
//! ## Layout
//! - [`neuron`]: the CA1 pyramidal neuron equations (9 states), integrators,
//!   rate tables, spike and burst detection; a second published family
//!   ([`neuron::pospischil`]: Pospischil et al. 2008, RS/FS/IB/LTS). Pure
//!   computation, no I/O.
//! - [`plant`]: the [`plant::Plant`] trait and its implementations: `sim`,
//!   the embedded neuron (software in the loop), and `serial`, a bench rig
//!   over a serial port (hardware in the loop), and `replay`, a recording
//!   played back open loop.
//! - [`protocol`]: the bench-rig wire format (COBS, CRC-16), no I/O.
//! - [`rig`]: `neurostimd rig`, an emulated bench rig on a pseudo-terminal
//!   with fault injection.
//! - [`forecast`]: the LSTM forecaster: model card, ONNX loading and
//!   checks (tract), the native encode-once evaluator, the sample window,
//!   and the shipped model compiled into the binary (`embedded:ca1_lstm`).
//! - [`modeltool`]: `neurostimd model info|run|bench`.
//! - [`npy`]: float32 `.npy` files (model bundles, `model run`).
//! - [`poll`]: receiving from the loop's hand-offs without parking, so the
//!   loop's sends never wake anyone (no lock, no system call).
//! - [`report`]: latency reports in HdrHistogram's formats (`.hgrm`,
//!   interval logs) and `summary.json`; `neurostimd report`.
//! - [`safety`]: the safety limiter every command passes (amplitude, slew,
//!   charge per phase, net charge balance, budget, zero on faults).
//! - [`simulate`]: running a plant open-loop with a stimulation waveform
//!   (the `neurostimd simulate` command) and writing traces and spike times.
//! - [`control`]: the real-time control loop as named steps (start, the
//!   per-sample [`control::decide::Decider`], finish), the planner thread,
//!   the record consumer and their hand-offs.
//! - [`rt`]: real-time measures for a thread (SCHED_FIFO, CPU pinning,
//!   memory locking) and keeping other threads off its CPU.
//! - [`plot`]: `neurostimd plot`: a run's membrane, forecasts,
//!   stimulation, spikes and latency in one SVG/PNG figure.
//! - [`policy`]: objectives and their scoring, the MPC planner, the
//!   PI/PID/open baselines.
//! - [`service`]: the daemon's service side: control API on a Unix
//!   socket, Prometheus metrics, systemd notify/watchdog, log formats, and
//!   the `neurostimd ctl` client.
//! - [`calibrate`]: `neurostimd calibrate` and `--calibrate`: fit a model
//!   to a new cell (live excitation through the limiter, or a trace or
//!   recording), held-out evaluation, the gate, the registry.
//! - [`session`]: one run of the daemon from a configuration (plant,
//!   forecaster, threads, report).
//! - [`scenarios`]: `neurostimd scenarios`, MPC against its baseline on
//!   every objective.
//! - [`record`]: recordings in the Open Ephys binary layout (written on the
//!   record-consumer thread), reading them back, `neurostimd recover`;
//!   the sample [`record::Record`] and the [`record::Note`]s everyone hands
//!   to the recorder.
//! - [`retrain`]: onboard retraining: recent data, forecast drift, the
//!   low-priority trainer thread, the guarded swap, model versions and
//!   rollback.
//! - [`adaptation`]: `neurostimd adapt`, the regime-change scenario for
//!   onboard retraining.
//! - [`train`]: training the forecaster: simulated datasets, the LSTM's
//!   gradients, Adam, ONNX export, evaluation against baselines; its
//!   validated settings ([`train::settings::TrainConfig`]).
//! - [`config`]: the TOML configuration, raw → validated per section (one
//!   file per section in `src/config/`), with errors that name the file,
//!   line and key.
//! - [`units`]: physical quantities in configuration (`"0.1 ms"`).
//!
//! `docs/architecture.md` is the map: which layer may import which, the
//! threads and their hand-offs, a sample's and a plan's path.
//! `scripts/check_shape.py` (CI) checks the layering.

pub mod adaptation;
pub mod calibrate;
pub mod config;
pub mod control;
pub mod forecast;
pub mod modeltool;
pub mod neuron;
pub mod npy;
pub mod plant;
pub mod plot;
pub mod policy;
pub mod poll;
pub mod protocol;
pub mod record;
pub mod report;
pub mod retrain;
pub mod rig;
pub mod rt;
pub mod safety;
pub mod scenarios;
pub mod service;
pub mod session;
pub mod simulate;
pub mod train;
pub mod units;
