//! Prometheus metrics and the health endpoint (`--metrics-address`).
//!
//! - `haina_rpc_requests_total{method}`, `haina_rpc_errors_total{method,code}`
//!   and `haina_rpc_duration_seconds{method}` are recorded by the one RPC
//!   wrapper ([`crate::grpc`]'s `run`), so every call is counted once.
//! - `haina_volumes{pool}`, `haina_attachments{pool}`, `haina_pool_healthy{pool,kind}`
//!   and `haina_mounter_available{mounter}` are read from the pools and the
//!   kernel at scrape time, so they can never drift from the truth.
//!
//! `/healthz` answers 200 only when every pool is usable and the CSI socket
//! accepts connections; Probe answers from the same check.
//!
//! The HTTP side is a deliberately tiny HTTP/1.1 responder: two GET paths,
//! one request per connection.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::Driver;

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    volumes: Family<Labels, Gauge>,
    attachments: Family<Labels, Gauge>,
    pool_healthy: Family<Labels, Gauge>,
    mounter_available: Family<Labels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("haina");
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let volumes = Family::<Labels, Gauge>::default();
        let attachments = Family::<Labels, Gauge>::default();
        let pool_healthy = Family::<Labels, Gauge>::default();
        let mounter_available = Family::<Labels, Gauge>::default();
        registry.register(
            "rpc_requests",
            "CSI RPCs served, by method",
            requests.clone(),
        );
        registry.register(
            "rpc_errors",
            "CSI RPCs that failed, by method and gRPC code",
            errors.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "CSI RPC latency, by method",
            duration.clone(),
        );
        registry.register("volumes", "Volumes per pool", volumes.clone());
        registry.register(
            "attachments",
            "Volumes attached on this node, per pool",
            attachments.clone(),
        );
        registry.register(
            "pool_healthy",
            "1 when the pool is usable",
            pool_healthy.clone(),
        );
        registry.register(
            "mounter_available",
            "1 when this node can attach with the mounter",
            mounter_available.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            duration,
            volumes,
            attachments,
            pool_healthy,
            mounter_available,
        }
    })
}

/// Records one finished RPC.
pub fn observe(method: &'static str, code: tonic::Code, elapsed: Duration) {
    let m = metrics();
    let by_method: Labels = vec![("method", method.to_string())];
    m.requests.get_or_create(&by_method).inc();
    m.duration
        .get_or_create(&by_method)
        .observe(elapsed.as_secs_f64());
    if code != tonic::Code::Ok {
        m.errors
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }
}

/// Which attach methods the kernel offers here.
pub fn mounters() -> Vec<(&'static str, bool)> {
    let exists = |p: &str| std::path::Path::new(p).exists();
    vec![
        ("loop", exists("/dev/loop-control")),
        ("fuse", exists("/dev/fuse")),
        ("krbd", exists("/sys/bus/rbd")),
        ("nbd", exists("/sys/block/nbd0")),
    ]
}

/// Renders the text exposition, refreshing the gauges from the pools.
pub fn render(d: &Driver) -> String {
    let m = metrics();
    for backend in d.pools.values() {
        let pool: Labels = vec![("pool", backend.name().to_string())];
        if let Ok(v) = backend.list_volumes(&crate::volume::Secrets::default()) {
            m.volumes.get_or_create(&pool).set(v.len() as i64);
        }
        if d.services.node
            && let Ok(n) = backend.attachments()
        {
            m.attachments.get_or_create(&pool).set(n.len() as i64);
        }
        let healthy = backend.health().is_ok();
        m.pool_healthy
            .get_or_create(&vec![
                ("pool", backend.name().to_string()),
                ("kind", backend.kind().to_string()),
            ])
            .set(healthy as i64);
    }
    for (name, ok) in mounters() {
        m.mounter_available
            .get_or_create(&vec![("mounter", name.to_string())])
            .set(ok as i64);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &m.registry);
    out
}

/// Readiness: pools usable and the CSI socket answering.
pub async fn ready(d: &Arc<Driver>, socket: &std::path::Path) -> Result<(), String> {
    let d2 = d.clone();
    tokio::task::spawn_blocking(move || crate::health::check(&d2).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())??;
    tokio::net::UnixStream::connect(socket)
        .await
        .map(drop)
        .map_err(|e| format!("CSI socket {}: {e}", socket.display()))
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, driver: Arc<Driver>, socket: PathBuf) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let driver = driver.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    let d = driver.clone();
                    let body = tokio::task::spawn_blocking(move || render(&d))
                        .await
                        .unwrap_or_default();
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    )
                }
                "/healthz" | "/readyz" => match ready(&driver, &socket).await {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
                    Err(e) => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not ready: {e}\n"),
                    ),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /healthz\n".to_string(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
