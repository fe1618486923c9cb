//! Metrics, health and logs: a scrape after a lifecycle shows the counts,
//! the error codes and the latency histogram; `/healthz` reflects
//! readiness; JSON logs carry one parseable line per RPC, without secrets.

mod common;

use std::io::{Read, Write};

use common::*;
use haina_csi::v1 as csi;

/// The port the server bound for `127.0.0.1:0`, from its JSON log.
fn bound_port(logs: &str) -> u16 {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|j| j["message"] == "serving /metrics and /healthz")
        .and_then(|j| j["address"].as_str()?.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the logs:\n{logs}"))
}

fn get(port: u16, path: &str) -> (String, String) {
    // A fresh connection per request; retried, since a loaded machine can
    // reset a loopback connection under us.
    let mut last = None;
    for _ in 0..5 {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(out) => {
                let (head, body) = out.split_once("\r\n\r\n").unwrap();
                return (head.lines().next().unwrap().to_string(), body.to_string());
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("GET {path}: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_json_logs() {
    let server = Server::start_with(&[
        ("HAINA_METRICS_ADDRESS", "127.0.0.1:0"),
        ("HAINA_LOG_FORMAT", "json"),
    ])
    .await;
    let port = bound_port(&server.logs());
    let mut c = server.clients().await;
    let (status, body) = get(port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");

    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut r = create_req("observed", 8 << 20, cap.clone());
    r.secrets = params(&[("userKey", "TOPSECRET-metrics")]);
    let v = c
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "m").await;
    assert!(mnt.exists());
    let _ = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "".into(),
            ..Default::default()
        })
        .await;

    let (status, metrics) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for needle in [
        "haina_rpc_requests_total{method=\"CreateVolume\"} 1",
        "haina_rpc_requests_total{method=\"NodeStageVolume\"} 1",
        "haina_rpc_errors_total{method=\"DeleteVolume\",code=\"InvalidArgument\"} 1",
        "haina_rpc_duration_seconds_bucket{le=\"0.001\",method=\"CreateVolume\"}",
        "haina_rpc_duration_seconds_count{method=\"NodePublishVolume\"} 1",
        "haina_volumes{pool=\"default\"} 1",
        "haina_attachments{pool=\"default\"} 1",
        "haina_pool_healthy{pool=\"default\",kind=\"local\"} 1",
        "haina_mounter_available{mounter=\"loop\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
    assert_eq!(get(port, "/nope").0, "HTTP/1.1 404 Not Found");

    unmount_volume(&mut c, &server, &v.volume_id, "m").await;
    delete_volume(&mut c, &v.volume_id).await;

    // /healthz follows readiness: an unwritable pool is not ready.
    let volumes = server.data_dir().join("pools/default/volumes");
    std::fs::rename(&volumes, volumes.with_extension("away")).unwrap();
    let (status, body) = get(port, "/healthz");
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("pool default"), "{body}");
    let probe = c
        .identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
    std::fs::rename(volumes.with_extension("away"), &volumes).unwrap();
    assert_eq!(get(port, "/healthz").0, "HTTP/1.1 200 OK");

    // One JSON line per RPC, with method, id, code and duration.
    let logs = server.logs();
    assert!(!logs.contains("TOPSECRET"), "secret in logs");
    let rpc_lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|j| j["message"] == "rpc")
        .collect();
    let create = rpc_lines
        .iter()
        .find(|j| j["method"] == "CreateVolume")
        .expect("no CreateVolume line");
    assert_eq!(create["id"], "observed");
    assert_eq!(create["code"], "Ok");
    assert!(create["ms"].as_f64().is_some());
    let failed = rpc_lines
        .iter()
        .find(|j| j["method"] == "DeleteVolume" && j["code"] == "InvalidArgument");
    assert!(
        failed.is_some_and(|j| j["error"].as_str().unwrap().contains("volume_id")),
        "{rpc_lines:?}"
    );
}
