//! systemd's notification protocol (sd_notify(3)): a datagram of
//! `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET`. A few lines
//! over a Unix datagram socket; no crate needed.
//!
//! The watchdog rule (DESIGN §9): `WATCHDOG=1` is sent only while the
//! control loop's heartbeat advances, from the service thread, never from
//! the real-time thread. A hung loop therefore stops feeding the watchdog
//! and systemd restarts the daemon (`Restart=on-failure`), while a busy
//! service thread alone cannot hide a dead loop.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, from the environment systemd sets.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    /// Half the watchdog timeout (systemd's advice), if one is set for us.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty());
        let socket = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Notifier { socket, watchdog }
    }

    /// Not under systemd (or not `Type=notify`).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to consider feeding the watchdog, if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Send `state` (e.g. `READY=1`). Failures are returned for logging;
    /// systemd going away must not stop the daemon.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some((sock, path)) = &self.socket else {
            return Ok(());
        };
        if let Some(name) = path.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
                return Ok(());
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other("abstract sockets need Linux"));
            }
        }
        sock.send_to(state.as_bytes(), path)?;
        Ok(())
    }
}

/// Feed the watchdog for this tick? Only if the heartbeat moved since the
/// last feed and the loop has not ended.
pub fn should_feed(last_fed: Option<u64>, heartbeat: u64, finished: bool) -> bool {
    !finished && last_fed != Some(heartbeat) && heartbeat > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
            watchdog: Some(Duration::from_millis(100)),
        };
        n.notify("READY=1\nSTATUS=running").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(100)));
        assert!(!Notifier::disabled().enabled());
        assert!(Notifier::disabled().notify("READY=1").is_ok());
    }

    #[test]
    fn watchdog_is_fed_only_while_the_heartbeat_advances() {
        assert!(!should_feed(None, 0, false), "not started");
        assert!(should_feed(None, 5, false));
        assert!(!should_feed(Some(5), 5, false), "stalled loop");
        assert!(should_feed(Some(5), 9, false));
        assert!(!should_feed(Some(5), 9, true), "loop ended");
    }
}
