//! Real-time measures for the control thread: memory locking, SCHED_FIFO,
//! CPU pinning and pre-faulting. Each is asked for and reported; none is
//! fatal when refused (CI runners, laptops and containers usually refuse
//! SCHED_FIFO), because a run without them still works and its latency
//! report shows the cost.

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
}

impl RtReport {
    /// One line for the log.
    pub fn line(&self) -> String {
        format!(
            "mlockall: {}; SCHED_FIFO: {}; pinning: {}; pre-faulted {} KiB of stack",
            self.mlockall,
            self.sched_fifo,
            self.pinned,
            self.prefaulted_bytes / 1024
        )
    }
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Number of CPUs this process may run on.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Apply `cfg` to the calling thread. Allocates (reports); call before the
/// loop.
pub fn apply(cfg: &RealtimeConfig) -> RtReport {
    let mut r = RtReport::default();
    #[cfg(target_os = "linux")]
    {
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
        let cpu = match cfg.cpu {
            CpuChoice::None => None,
            CpuChoice::Last => Some(cpu_count().saturating_sub(1)),
            CpuChoice::Index(i) => Some(i),
        };
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
        r.prefaulted_bytes = prefault_stack(cfg.prefault_kib * 1024);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cfg;
        r.mlockall = "unsupported on this OS".into();
        r.sched_fifo = "unsupported on this OS".into();
        r.pinned = "unsupported on this OS".into();
    }
    r
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

/// Keep the calling thread (the planner) off `cpu`, if other CPUs exist.
pub fn exclude_cpu(cpu: usize) -> bool {
    let others: Vec<usize> = (0..cpu_count()).filter(|&c| c != cpu).collect();
    !others.is_empty() && pin_to(&others).is_ok()
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
        let r = apply(&RealtimeConfig {
            mlockall: false,
            priority: 0,
            cpu: CpuChoice::None,
            prefault_kib: 64,
        });
        assert_eq!(r.mlockall, "not asked");
        assert_eq!(r.sched_fifo, "not asked");
        assert_eq!(r.pinned_cpu, None);
        assert_eq!(r.prefaulted_bytes, 64 * 1024);
        assert!(r.line().contains("SCHED_FIFO"));
    }
}
