//! The HTTP endpoint Prometheus scrapes: `GET /metrics` answers the recorder's families plus the
//! proxy's scrape-time state. A few lines of HTTP/1 on the tokio listener pgshard already has,
//! instead of the exporter's hyper server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::snapshot_text::{self, PoolGauges};
use super::{
    CLIENT_CONNECTIONS, CLIENT_CONNECTIONS_TOTAL, ERRORS_TOTAL, FAILOVER_BUFFERED_TOTAL,
    SESSION_PINS_TOTAL,
};
use crate::config::MetricsConfig;
use crate::proxy::Proxy;

/// Longest request head accepted; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often recorded histogram samples are folded in when nobody scrapes, so they do not pile up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot set up the Prometheus recorder: {0}")]
    Build(#[from] BuildError),
    #[error("another metrics recorder is already installed in this process")]
    RecorderTaken,
}

/// The process-wide recorder's handle: the `metrics` facade has one global recorder, so proxies
/// started in one process (tests) share it.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder on first use and returns its handle.
fn recorder_handle() -> Result<PrometheusHandle, EndpointError> {
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    // Query durations and pool waits are not the exporter's: see `record::hot_text`.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| EndpointError::RecorderTaken)?;
    super::record::recorder_installed();
    describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

/// HELP texts of the recorded families.
fn describe() {
    metrics::describe_gauge!(CLIENT_CONNECTIONS, "Client connections open now.");
    metrics::describe_counter!(CLIENT_CONNECTIONS_TOTAL, "Client connections accepted.");
    metrics::describe_counter!(
        ERRORS_TOTAL,
        "ErrorResponses sent to clients, by SQLSTATE class."
    );
    metrics::describe_counter!(
        SESSION_PINS_TOTAL,
        "Times a client kept a server connection past its transaction, by reason."
    );
    metrics::describe_counter!(
        FAILOVER_BUFFERED_TOTAL,
        "Statements held while their shard had no primary, by outcome (resumed, expired)."
    );
    metrics::describe_histogram!(
        super::REBALANCE_HOLD,
        metrics::Unit::Seconds,
        "Cut-over holds of rebalancing jobs: how long this proxy held new requests."
    );
    metrics::describe_gauge!(
        super::REBALANCE_ROWS_COPIED,
        "Rows of a rebalancing step on its destination, by job and step."
    );
    metrics::describe_gauge!(
        super::REBALANCE_LAG_BYTES,
        "WAL bytes a rebalancing step's destination is behind its source, by job and step."
    );
}

/// A running metrics endpoint.
pub struct MetricsEndpoint {
    /// The address it listens on (the port is known even when the config said 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Waits for the endpoint to stop (after the shutdown signal).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Installs the recorder (once per process), binds `config.listen` and serves scrapes until
/// `shutdown` turns true.
pub async fn start(
    config: &MetricsConfig,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
) -> Result<MetricsEndpoint, EndpointError> {
    let handle = recorder_handle()?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| EndpointError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EndpointError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let task = tokio::spawn(serve(listener, proxy, handle, shutdown));
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(MetricsEndpoint { addr, task })
}

async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    handle: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let proxy = proxy.clone();
                    let handle = handle.clone();
                    tokio::spawn(async move { answer(stream, &proxy, &handle).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = upkeep.tick() => handle.run_upkeep(),
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Reads one request and answers it; the connection is closed afterwards.
async fn answer(mut stream: TcpStream, proxy: &Proxy, handle: &PrometheusHandle) {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let response = match request_target(&head) {
        Some(("GET", "/metrics")) => {
            let mut body = handle.render();
            body.push_str(&super::record::hot_text());
            body.push_str(&scrape_time_text(proxy));
            response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        Some(("GET", _)) => response("404 Not Found", "text/plain", "try /metrics\n"),
        Some(_) => response("405 Method Not Allowed", "text/plain", "only GET\n"),
        None => response("400 Bad Request", "text/plain", "bad request\n"),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn scrape_time_text(proxy: &Proxy) -> String {
    let snapshot = proxy.replica_metrics.snapshot(&proxy.topology);
    let pools: Vec<PoolGauges> = proxy
        .pools
        .status()
        .into_iter()
        .map(|(server, s)| PoolGauges {
            server,
            open: s.size,
            idle: s.available,
            max: s.max_size,
            waiting: s.waiting,
        })
        .collect();
    snapshot_text::render(&snapshot, &pools)
}

/// The request head (up to the blank line), or `None` if the client closed early or sent too much.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
}

/// Method and path (without a query string) of the request line.
fn request_target(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_target("GET /metrics HTTP/1.1\r\nHost: x"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_target("GET /metrics?x=1 HTTP/1.0"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target("POST / HTTP/1.1"), Some(("POST", "/")));
        assert_eq!(request_target("GET /metrics"), None);
        assert_eq!(request_target("GET /metrics SPDY/3"), None);
        assert_eq!(request_target(""), None);
    }

    #[test]
    fn response_has_length_and_closes() {
        let r = response("200 OK", "text/plain", "abc");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nabc"));
    }
}
