//! `[service]`: the control socket, the metrics port, arming at start;
//! raw and validated.

use super::{ConfigError, Cx, ServiceConfig, SocketChoice};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) socket: String,
    pub(super) socket_mode: String,
    pub(super) metrics: String,
    pub(super) metrics_public: bool,
    pub(super) start_armed: bool,
}

impl RawService {
    pub(super) fn validate(&self, cx: &Cx) -> Result<ServiceConfig, ConfigError> {
        let s = self;
        let socket = match s.socket.as_str() {
            "auto" => SocketChoice::Auto,
            "" => SocketChoice::Off,
            p => SocketChoice::Path(p.into()),
        };
        if let SocketChoice::Path(p) = &socket {
            // sockaddr_un holds 108 bytes including the terminating NUL.
            if p.as_os_str().len() > 107 {
                return Err(cx.err(
                    "service.socket",
                    format!(
                        "`{}` is longer than the 107 bytes a Unix socket path may have",
                        p.display()
                    ),
                ));
            }
        }
        let mode = u32::from_str_radix(s.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                cx.err(
                    "service.socket_mode",
                    format!(
                        "`{}` is not an octal file mode such as \"0660\"",
                        s.socket_mode
                    ),
                )
            })?;
        if mode & 0o002 != 0 {
            return Err(cx.err(
                "service.socket_mode",
                format!("{mode:04o} lets every local user steer the stimulation; drop the world-write bit (e.g. \"0660\": owner and group)"),
            ));
        }
        if mode & 0o600 != 0o600 {
            return Err(cx.err(
                "service.socket_mode",
                format!("{mode:04o} keeps the daemon's own user out; the owner needs read and write (0600 at least)"),
            ));
        }
        let metrics = match s.metrics.as_str() {
            "" => None,
            a => {
                let addr: std::net::SocketAddr = a.parse().map_err(|_| {
                    cx.err(
                        "service.metrics",
                        format!("`{a}` is not an address:port such as \"127.0.0.1:9187\" (\"\" turns metrics off)"),
                    )
                })?;
                if !addr.ip().is_loopback() && !s.metrics_public {
                    return Err(cx.err(
                        "service.metrics",
                        format!("{addr} is reachable from other machines; metrics stay on loopback unless service.metrics_public = true"),
                    ));
                }
                Some(addr)
            }
        };
        Ok(ServiceConfig {
            socket,
            socket_mode: mode,
            metrics,
            start_armed: s.start_armed,
        })
    }
}
