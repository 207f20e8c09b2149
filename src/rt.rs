//! Real-time measures for the control thread: memory locking, SCHED_FIFO,
//! CPU pinning, pre-faulting and a CPU latency request
//! (`/dev/cpu_dma_latency`, which keeps the CPUs out of deep idle states
//! while it is held). Each is asked for and reported; none is fatal when
//! refused (CI runners, laptops and containers usually refuse SCHED_FIFO),
//! because a run without them still works and its latency report shows the
//! cost.

use crate::config::{CpuChoice, RealtimeConfig};
use serde::Serialize;

/// What the control thread obtained.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RtReport {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)`: "ok", "not asked" or the error.
    pub mlockall: String,
    /// SCHED_FIFO at the configured priority, for this thread only.
    pub sched_fifo: String,
    /// The CPU the thread is pinned to, or why not.
    pub pinned: String,
    pub pinned_cpu: Option<usize>,
    /// Stack bytes touched at start.
    pub prefaulted_bytes: usize,
    /// The planner thread was kept off the control CPU.
    pub planner_excluded: bool,
    /// The process's other threads kept off the control CPU: how many, or
    /// why not. On a kernel without full preemption (`PREEMPT_NONE`, the
    /// usual server default) a thread of ours in a system call on the
    /// loop's CPU (the recorder writing a file) delays the loop's wake-up
    /// until the call returns, however high the loop's priority: measured
    /// as 0.7–9.8 ms wake-ups in docs/deploy.md before they were moved.
    pub others_excluded: String,
    /// The CPU latency request: "held at N us" (with the system's
    /// resulting target when the kernel tells it), "not asked" or why not.
    pub cpu_dma_latency: String,
}

impl RtReport {
    /// One line for the log.
    pub fn line(&self) -> String {
        format!(
            "mlockall: {}; SCHED_FIFO: {}; pinning: {}; other threads off its CPU: {}; pre-faulted {} KiB of stack; CPU latency request: {}",
            self.mlockall,
            self.sched_fifo,
            self.pinned,
            self.others_excluded,
            self.prefaulted_bytes / 1024,
            self.cpu_dma_latency
        )
    }
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// The CPUs this process may run on, read once, on first use, before any
/// loop pinned itself: [`apply`] then moves every other thread off the
/// loop's CPU, and threads spawned later inherit that narrower affinity.
/// Asked again from such a thread (the calling thread's affinity is what
/// `available_parallelism` reports), the answer would be one CPU short, and
/// the next run in the same process (a scenario's second seed, a service's
/// second session) would pin its SCHED_FIFO loop onto the very CPU its
/// planner and everything else had been moved to.
pub fn allowed_cpus() -> &'static [usize] {
    static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ALLOWED.get_or_init(|| {
        let fallback =
            || (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        #[cfg(target_os = "linux")]
        // SAFETY: cpu_set_t is plain data; the calling thread's affinity
        // is queried, and CPU_ISSET indexes within the set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut set) == 0 {
                let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect();
                if !cpus.is_empty() {
                    return cpus;
                }
            }
            fallback()
        }
        #[cfg(not(target_os = "linux"))]
        fallback()
    })
}

/// Number of CPUs this process may run on ([`allowed_cpus`]).
pub fn cpu_count() -> usize {
    allowed_cpus().len()
}

/// The CPU `cpu = "last"` names: the highest one this process may run on
/// (in a container limited to CPUs 4-7 that is 7, not `count - 1`).
pub fn last_cpu() -> usize {
    allowed_cpus().last().copied().unwrap_or(0)
}

/// The CPU a loop with this choice is pinned to, if any: what [`apply`]
/// pins, and what other threads (the retrainer) keep off.
pub fn loop_cpu(choice: CpuChoice) -> Option<usize> {
    match choice {
        CpuChoice::None => None,
        CpuChoice::Last => Some(last_cpu()),
        CpuChoice::Index(i) => Some(i),
    }
}

/// The CPU latency request while it is held: the open
/// `/dev/cpu_dma_latency`. The kernel drops the request when the file is
/// closed, so keep this alive exactly as long as the loop runs and drop it
/// (or let it drop) when the loop ends.
#[derive(Debug, Default)]
pub struct CpuLatencyRequest {
    file: Option<std::fs::File>,
}

impl CpuLatencyRequest {
    /// Whether a request is held.
    pub fn held(&self) -> bool {
        self.file.is_some()
    }
}

/// The device the PM QoS CPU latency request is made through.
pub const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// What is written to `/dev/cpu_dma_latency`: the latency in µs as the
/// kernel's s32, in native byte order (a write of exactly 4 bytes is read
/// as binary; anything else as a hexadecimal string).
pub fn latency_request_bytes(us: u32) -> [u8; 4] {
    // Validation keeps the value within i32 (<= 2,000,000,000 µs).
    i32::try_from(us).unwrap_or(i32::MAX).to_ne_bytes()
}

/// Ask for a CPU wake-up latency of at most `us` µs through `path` and
/// hold it; `None`: do not ask. Never fails: the text says what happened.
pub fn hold_cpu_latency(path: &str, us: Option<u32>) -> (String, CpuLatencyRequest) {
    let Some(us) = us else {
        return ("not asked".into(), CpuLatencyRequest::default());
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            return (
                format!("not held ({path}: {e})"),
                CpuLatencyRequest::default(),
            )
        }
    };
    let bytes = latency_request_bytes(us);
    match std::io::Write::write(&mut &file, &bytes) {
        Ok(4) => {}
        Ok(n) => {
            return (
                format!("not held ({path}: short write of {n} bytes)"),
                CpuLatencyRequest::default(),
            )
        }
        Err(e) => {
            return (
                format!("not held ({path}: {e})"),
                CpuLatencyRequest::default(),
            )
        }
    }
    // Reading the device gives the system-wide target now in force (the
    // lowest of all held requests).
    let mut now = [0u8; 4];
    let text = match read_at_start(&file, &mut now) {
        Some(4) => format!(
            "held at {us} us (system target {} us)",
            i32::from_ne_bytes(now)
        ),
        _ => format!("held at {us} us"),
    };
    (text, CpuLatencyRequest { file: Some(file) })
}

#[cfg(unix)]
fn read_at_start(f: &std::fs::File, buf: &mut [u8]) -> Option<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, 0).ok()
}

#[cfg(not(unix))]
fn read_at_start(_f: &std::fs::File, _buf: &mut [u8]) -> Option<usize> {
    None
}

/// Apply `cfg` to the calling thread. Allocates (reports) and opens
/// `/dev/cpu_dma_latency`; call before the loop, and keep the returned
/// request until the loop has ended.
pub fn apply(cfg: &RealtimeConfig) -> (RtReport, CpuLatencyRequest) {
    let mut r = RtReport::default();
    #[cfg(target_os = "linux")]
    let request = {
        r.mlockall = if cfg.mlockall {
            // SAFETY: plain flags.
            if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
                "ok".into()
            } else {
                format!("refused ({})", errno_text())
            }
        } else {
            "not asked".into()
        };
        r.sched_fifo = if cfg.priority > 0 {
            let param = libc::sched_param {
                sched_priority: cfg.priority,
            };
            // SAFETY: the calling thread's handle and a valid parameter.
            let rc = unsafe {
                libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
            };
            if rc == 0 {
                format!("ok (priority {})", cfg.priority)
            } else {
                format!(
                    "refused ({}); running SCHED_OTHER",
                    std::io::Error::from_raw_os_error(rc)
                )
            }
        } else {
            "not asked".into()
        };
        let cpu = loop_cpu(cfg.cpu);
        r.pinned = match cpu {
            None => "not asked".into(),
            Some(c) => match pin_to(&[c]) {
                Ok(()) => {
                    r.pinned_cpu = Some(c);
                    format!("ok (CPU {c})")
                }
                Err(e) => format!("refused for CPU {c} ({e})"),
            },
        };
        r.others_excluded = match r.pinned_cpu {
            None => "not asked (not pinned)".into(),
            Some(c) => match exclude_cpu_for_other_threads(c) {
                Ok(n) => format!("ok ({n} threads)"),
                Err(e) => format!("refused ({e})"),
            },
        };
        r.prefaulted_bytes = prefault_stack(cfg.prefault_kib * 1024);
        let (text, request) = hold_cpu_latency(CPU_DMA_LATENCY, cfg.cpu_dma_latency_us);
        r.cpu_dma_latency = text;
        request
    };
    #[cfg(not(target_os = "linux"))]
    let request = {
        let _ = cfg;
        r.mlockall = "unsupported on this OS".into();
        r.sched_fifo = "unsupported on this OS".into();
        r.pinned = "unsupported on this OS".into();
        r.others_excluded = "unsupported on this OS".into();
        r.cpu_dma_latency = "unsupported on this OS".into();
        CpuLatencyRequest::default()
    };
    (r, request)
}

/// Restrict the calling thread to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_to(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET indexes within it (checked).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(format!("CPU {c} is out of range"));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
            Ok(())
        } else {
            Err(errno_text())
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn pin_to(_cpus: &[usize]) -> Result<(), String> {
    Err("unsupported on this OS".into())
}

/// Keep the calling thread (the planner) off `cpu`, if other CPUs exist,
/// and run it at normal priority: it is spawned by the control thread and
/// would otherwise inherit its SCHED_FIFO, which the configuration grants
/// the control thread only (a busy real-time planner can starve the other
/// CPU's ordinary threads, which the balancer then moves onto the loop's).
pub fn exclude_cpu(cpu: usize) -> bool {
    normal_priority();
    let others: Vec<usize> = allowed_cpus()
        .iter()
        .copied()
        .filter(|&c| c != cpu)
        .collect();
    !others.is_empty() && pin_to(&others).is_ok()
}

/// Let the calling thread run on every CPU this process may use, at
/// normal priority again: work that follows a loop on the same thread (calibration's
/// training after its live excitation) is not real-time work and must not
/// stay on the loop's CPU, where it competes with whatever else is pinned
/// there. The next loop applies its own settings again.
pub fn release_calling_thread() {
    #[cfg(target_os = "linux")]
    {
        let _ = pin_to(allowed_cpus());
    }
    normal_priority();
}

/// Drop the calling thread to SCHED_OTHER (a no-op if it already is).
pub fn normal_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the calling thread's handle and a valid parameter.
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_OTHER, &param) };
    }
}

/// Take `cpu` out of the affinity of every other thread of this process
/// (their later children inherit it), leaving a thread alone where `cpu`
/// is its only CPU. Returns how many were moved.
#[cfg(target_os = "linux")]
fn exclude_cpu_for_other_threads(cpu: usize) -> Result<usize, String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is out of range"));
    }
    // SAFETY: no arguments.
    let me = unsafe { libc::gettid() };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())?;
    let mut moved = 0;
    for t in tasks.flatten() {
        let Some(tid) = t
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if tid == me {
            continue;
        }
        // SAFETY: cpu_set_t is plain data; `cpu` is within it (checked).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(tid, size, &mut set) != 0 || !libc::CPU_ISSET(cpu, &set) {
                continue;
            }
            libc::CPU_CLR(cpu, &mut set);
            if libc::CPU_COUNT(&set) > 0 && libc::sched_setaffinity(tid, size, &set) == 0 {
                moved += 1;
            }
        }
    }
    Ok(moved)
}

/// Touch `bytes` of stack so the loop never takes a page fault growing it
/// (with `mlockall(MCL_FUTURE)` the pages then stay).
#[inline(never)]
fn prefault_stack(bytes: usize) -> usize {
    const CHUNK: usize = 16 * 1024;
    #[inline(never)]
    fn touch(depth: usize) -> usize {
        let mut buf = [0u8; CHUNK];
        std::hint::black_box(&mut buf);
        if depth == 0 {
            CHUNK
        } else {
            CHUNK + touch(depth - 1)
        }
    }
    if bytes < CHUNK {
        return 0;
    }
    touch(bytes / CHUNK - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_reported_not_fatal() {
        let (r, request) = apply(&RealtimeConfig {
            mlockall: false,
            priority: 0,
            cpu: CpuChoice::None,
            prefault_kib: 64,
            cpu_dma_latency_us: None,
        });
        assert_eq!(r.mlockall, "not asked");
        assert_eq!(r.sched_fifo, "not asked");
        assert_eq!(r.pinned_cpu, None);
        assert_eq!(r.prefaulted_bytes, 64 * 1024);
        assert_eq!(r.cpu_dma_latency, "not asked");
        assert!(!request.held());
        assert!(r.line().contains("SCHED_FIFO"));
        assert!(r.line().contains("CPU latency request: not asked"));
    }

    #[test]
    fn latency_request_is_the_kernels_s32() {
        assert_eq!(latency_request_bytes(0), [0; 4]);
        assert_eq!(latency_request_bytes(100), 100i32.to_ne_bytes());
        assert_eq!(
            latency_request_bytes(2_000_000_000),
            2_000_000_000i32.to_ne_bytes()
        );
        // Out of i32's range (validation refuses it) saturates, never wraps
        // to a negative request.
        assert_eq!(latency_request_bytes(u32::MAX), i32::MAX.to_ne_bytes());
    }

    #[test]
    fn latency_request_is_held_until_dropped_and_never_fatal() {
        // A missing device: reported, not fatal.
        let (text, request) = hold_cpu_latency("/nonexistent/cpu_dma_latency", Some(0));
        assert!(text.starts_with("not held ("), "{text}");
        assert!(!request.held());
        // A file standing in for the device receives the 4-byte value and
        // stays open while the request lives.
        let path = std::env::temp_dir().join(format!("neurostimd-rt-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let (text, request) = hold_cpu_latency(path.to_str().unwrap(), Some(25));
        assert!(text.starts_with("held at 25 us"), "{text}");
        assert!(request.held());
        assert_eq!(std::fs::read(&path).unwrap(), 25i32.to_ne_bytes());
        drop(request);
        let _ = std::fs::remove_file(&path);
        let (text, request) = hold_cpu_latency("/nonexistent", None);
        assert_eq!(text, "not asked");
        assert!(!request.held());
    }

    #[test]
    fn config_key_cpu_dma_latency_us() {
        use crate::config::Config;
        let rt = |v: &str| {
            Config::from_str_named(
                "t",
                &format!("[control.realtime]\ncpu_dma_latency_us = {v}\n"),
            )
            .map(|c| c.control.realtime.cpu_dma_latency_us)
        };
        // Default: ask for the lowest latency.
        assert_eq!(
            Config::from_str_named("t", "")
                .unwrap()
                .control
                .realtime
                .cpu_dma_latency_us,
            Some(0)
        );
        assert_eq!(rt("0").unwrap(), Some(0));
        assert_eq!(rt("50").unwrap(), Some(50));
        assert_eq!(rt("-1").unwrap(), None);
        for bad in ["-2", "2000000001", "\"0 us\""] {
            let e = rt(bad).unwrap_err().to_string();
            assert!(e.contains("cpu_dma_latency_us"), "{bad}: {e}");
        }
    }
}
