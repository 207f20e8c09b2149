//! The `neurostimd` binary: parses the command line and hands each command
//! to its module in `cli`, which builds the validated configuration and
//! calls the library. Errors are printed with their whole context; exit
//! codes are 0 ok, 1 runtime failure, 2 usage or configuration error.

mod cli;

use clap::{Parser, Subcommand};
use cli::{
    adapt, calibrate, ctl, model, plot, recover, report, rig, run, scenarios, simulate, train,
};
use neurostimd::service;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "neurostimd",
    version,
    about = "Closed-loop neurostimulation controller daemon",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

// The commands' one-line help stays here, in the order `--help` lists them;
// their flags sit beside their code in `cli`.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the CA1 simulator alone (open loop) and write traces and spike times.
    Simulate(Box<simulate::SimulateArgs>),
    /// Summarise runs' reports (directories written with --report) side by side.
    Report(report::ReportArgs),
    /// Train a forecaster on simulated data ([train] in the config) and export it.
    Train(train::TrainArgs),
    /// Reproduce the seed paper's claims with our trainer: train every variant
    /// (output head and order, training horizon, 1 vs 2 layers) on the same data
    /// and seeds, score all on the same fresh windows, write the tables and plot
    /// data (docs/paper-reproduction.md).
    PaperStudy(train::PaperStudyArgs),
    /// Emulate a bench rig on a pseudo-terminal (the CA1 simulator behind the wire
    /// protocol, paced in real time) and print the path to give `--port`.
    Rig(Box<rig::RigArgs>),
    /// Run the control-quality scenarios (`--only` lists them) with MPC and every
    /// baseline the scenario names on the same seeds, free clock, and print the table.
    Scenarios(scenarios::ScenariosArgs),
    /// Fit a forecaster to a new cell: live (a seeded excitation through the
    /// safety limiter, recorded) or from a trace CSV or recording; held-out
    /// evaluation against persistence and AR, and the gate (docs/calibration.md).
    Calibrate(Box<calibrate::CalibrateArgs>),
    /// Inspect, run and time forecaster models (ONNX + model card).
    Model(model::ModelArgs),
    /// Make a recording readable after a crash: cut every stream to the
    /// samples all of them hold and rewrite the .npy headers.
    Recover(recover::RecoverArgs),
    /// The adaptation scenario: regular spiking, a switch to bursting, drift
    /// detection, onboard retraining and the guarded model swap (paced).
    Adapt(adapt::AdaptArgs),
    /// Draw a run: rate vs target, membrane with forecasts, stimulation, spikes and
    /// latency histograms, from a report directory (and its trace) to SVG or PNG.
    Plot(plot::PlotArgs),
    /// Steer a running daemon through its control API (Unix socket).
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The printing commands behave like any Unix filter: a closed stdout
    // (`| head`) ends the process quietly instead of panicking on the
    // failed write. The daemon and the rig keep Rust's default (SIGPIPE
    // ignored): they write to sockets and pseudo-terminals whose peers may
    // leave at any time, and a departed client must end its own
    // connection, never the experiment.
    let long_running = matches!(cli.command, None | Some(Command::Rig(_)));
    #[cfg(unix)]
    if !long_running {
        // SAFETY: restoring the default disposition of SIGPIPE before any
        // thread starts; no handler code is involved.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging();
    cli::exit_code(match cli.command {
        Some(Command::Simulate(a)) => simulate::cmd_simulate(*a),
        Some(Command::Report(a)) => report::cmd_report(a),
        Some(Command::Train(a)) => train::cmd_train(a),
        Some(Command::PaperStudy(a)) => train::cmd_paper_study(a),
        Some(Command::Rig(a)) => rig::cmd_rig(*a),
        Some(Command::Scenarios(a)) => scenarios::cmd_scenarios(a),
        Some(Command::Calibrate(a)) => calibrate::cmd_calibrate(*a),
        Some(Command::Model(a)) => model::cmd_model(a),
        Some(Command::Recover(a)) => recover::cmd_recover(a),
        Some(Command::Adapt(a)) => adapt::cmd_adapt(a),
        Some(Command::Plot(a)) => plot::cmd_plot(a),
        Some(Command::Ctl(a)) => ctl::cmd_ctl(a),
        None => run::cmd_run(cli.run),
    })
}

/// Logs go to stderr, so stdout carries only a command's result (tables,
/// JSON, the rig's pty path) for pipes and scripts.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if service::logging::stderr_is_journal() {
        // Under systemd: priority-prefixed lines, the journal adds the time.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(filter)
            .event_format(service::logging::JournalFormat)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .compact()
            .init();
    }
}
