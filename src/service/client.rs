//! `neurostimd ctl`: the control API's client, one request per call over
//! the Unix socket.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The systemd service's socket.
pub const SERVICE_SOCKET: &str = "/run/neurostimd/control.sock";

/// Where `ctl` looks when no `--socket` is given: `$NEUROSTIMD_SOCKET`;
/// else the systemd service's socket if it exists; else the newest
/// `reports/*/control.sock` under the working directory (a daemon started
/// from a shell there); else the service's path (for the error message).
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("NEUROSTIMD_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    let service = PathBuf::from(SERVICE_SOCKET);
    if service.exists() {
        return service;
    }
    newest_run_socket(Path::new("reports")).unwrap_or(service)
}

/// The most recently modified `*/control.sock` under `reports`.
pub fn newest_run_socket(reports: &Path) -> Option<PathBuf> {
    std::fs::read_dir(reports)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("control.sock"))
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?.modified().ok()?;
            Some((m, p))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_run_socket_is_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_run_socket(dir.path()), None);
        for (k, run) in ["run-a", "run-b"].iter().enumerate() {
            let d = dir.path().join(run);
            std::fs::create_dir(&d).unwrap();
            // The socket file stays after its listener is gone.
            drop(std::os::unix::net::UnixListener::bind(d.join("control.sock")).unwrap());
            if k == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::fs::create_dir(dir.path().join("run-c")).unwrap();
        assert_eq!(
            newest_run_socket(dir.path()),
            Some(dir.path().join("run-b/control.sock"))
        );
    }
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {error} (is the daemon running? give --socket or set NEUROSTIMD_SOCKET)")]
    Connect { path: String, error: std::io::Error },
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The answer: HTTP status and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Send one request and wait (at most `timeout`) for the answer.
pub fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    rt.block_on(async {
        tokio::time::timeout(timeout, request(socket, method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    })
}

async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Answer, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect {
            path: socket.display().to_string(),
            error,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "neurostimd");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
