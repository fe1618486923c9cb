//! Ceph credentials travel with each request, never as "the last ones
//! used": a request whose secrets cannot write never writes through another
//! request's connection, calls without any credentials say what to
//! configure (never "absent" or an empty list), a wrong key is told quickly
//! and plainly, unreachable monitors are UNAVAILABLE and make Probe not
//! ready.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::expect_code;
use haina_csi::v1 as csi;
use rbd::*;
use tonic::Code;

fn secrets_of(user: &str, key: &str) -> HashMap<String, String> {
    HashMap::from([
        ("userID".to_string(), user.to_string()),
        ("userKey".to_string(), key.to_string()),
    ])
}

/// A well-formed key that is nobody's.
const WRONG_KEY: &str = "AQBzd3ZoAAAAABAAkSLmLkcvrgBqJZIbEiyZ1A==";

async fn create_vol(ceph: &Ceph, c: &mut common::Clients, name: &str) -> String {
    c.controller
        .create_volume(create(ceph, "ceph", name, 16 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_unpublish_after_controller_restart_uses_the_request_secrets() {
    let Some(ceph) =
        Ceph::from_env("rbd_unpublish_after_controller_restart_uses_the_request_secrets")
    else {
        return;
    };
    let first = Plugin::start(&ceph, "controller").await;
    let mut c = first.clients().await;
    let name = first.unique("pvc-secrets");
    let id = create_vol(&ceph, &mut c, &name).await;
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "node-gone".into(),
            volume_capability: Some(ext4()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(c);
    drop(first);

    // A new controller process: no connection yet, no keyring configured.
    let second = Plugin::start(&ceph, "controller").await;
    let mut c = second.clients().await;
    unpublish(&ceph, &mut c, &id, "node-gone").await;
    let img = ceph
        .connect()
        .open_read_only(&format!("csi-vol-{name}"))
        .unwrap();
    let pubs = img
        .metadata_list()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "haina.publications");
    assert!(pubs.is_none(), "the publication survived: {pubs:?}");
    drop(img);
    delete(&ceph, &mut c, &id).await;
}

/// Without secrets and without a keyring, every read says what to
/// configure, even after requests with secrets made a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_reads_without_credentials_fail_precondition() {
    let Some(ceph) = Ceph::from_env("rbd_reads_without_credentials_fail_precondition") else {
        return;
    };
    let p = Plugin::start(&ceph, "controller,node").await;
    let mut c = p.clients().await;
    let name = p.unique("pvc-nocreds");
    let id = create_vol(&ceph, &mut c, &name).await;
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: p.unique("snap-nocreds"),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;

    let says_what_to_configure = |m: &str| {
        assert!(
            m.contains("userID") && m.contains("userKey") && m.contains("keyring"),
            "{m}"
        );
    };
    let m = expect_code(
        c.controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: id.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    says_what_to_configure(&m);
    let m = expect_code(
        c.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        Code::FailedPrecondition,
    );
    says_what_to_configure(&m);
    let m = expect_code(
        c.controller
            .get_capacity(csi::GetCapacityRequest {
                parameters: HashMap::from([("pool".into(), "ceph".into())]),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    says_what_to_configure(&m);
    let m = expect_code(
        c.controller
            .list_snapshots(csi::ListSnapshotsRequest::default())
            .await,
        Code::FailedPrecondition,
    );
    says_what_to_configure(&m);
    // A node plugin asked about a volume it has not attached.
    let m = expect_code(
        c.node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: p.dir.path().to_str().unwrap().into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    says_what_to_configure(&m);

    // With the secrets (where the call has them) the same reads work.
    let listed = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .entries
            .iter()
            .any(|e| e.snapshot.as_ref().unwrap().snapshot_id == snap)
    );

    // And a controller with a keyring answers the secret-less calls.
    let k = Plugin::start_with_keyring(&ceph, "controller").await;
    let mut kc = k.clients().await;
    let got = kc
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().volume_id, id);
    let all = kc
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        all.entries
            .iter()
            .any(|e| e.volume.as_ref().unwrap().volume_id == id)
    );

    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap,
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    delete(&ceph, &mut c, &id).await;
}

/// Two users at once: a read-only user's publishes always fail (it cannot
/// write the publication record) however the other user's requests
/// interleave with them; the writer's all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_concurrent_requests_use_their_own_credentials() {
    let Some(ceph) = Ceph::from_env("rbd_concurrent_requests_use_their_own_credentials") else {
        return;
    };
    let ro_key = ceph.user(
        "haina-ro",
        &format!("profile rbd-read-only pool={}", ceph.pool),
    );
    let p = Plugin::start(&ceph, "controller").await;
    let mut c = p.clients().await;
    let a = create_vol(&ceph, &mut c, &p.unique("pvc-writer")).await;
    let b = create_vol(&ceph, &mut c, &p.unique("pvc-reader")).await;

    let ctl = c.controller.clone();
    let publish = move |id: String, node: String, secrets: HashMap<String, String>| {
        let mut c = ctl.clone();
        async move {
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id,
                node_id: node,
                volume_capability: Some(ext4()),
                secrets,
                ..Default::default()
            })
            .await
        }
    };
    let ctl = c.controller.clone();
    let unpublish_as = move |id: String, node: String, secrets: HashMap<String, String>| {
        let mut c = ctl.clone();
        async move {
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id,
                node_id: node,
                secrets,
            })
            .await
        }
    };
    for round in 0..12 {
        let writer = {
            let (a, s) = (a.clone(), ceph.secrets());
            let (publish, unpublish_as) = (publish.clone(), unpublish_as.clone());
            tokio::spawn(async move {
                let node = format!("node-w{round}");
                publish(a.clone(), node.clone(), s.clone()).await?;
                unpublish_as(a, node, s).await
            })
        };
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let fut = publish(
                    b.clone(),
                    format!("node-r{round}-{i}"),
                    secrets_of("haina-ro", &ro_key),
                );
                tokio::spawn(fut)
            })
            .collect();
        writer
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the writer's request failed: {e}"));
        for r in readers {
            let r = r.await.unwrap();
            assert!(
                r.is_err(),
                "round {round}: a read-only user's publish succeeded (another request's \
                 credentials were used)"
            );
        }
    }
    let img = ceph
        .connect()
        .open_read_only(&format!("csi-vol-{}", b.split_once('.').unwrap().1));
    let pubs = img
        .unwrap()
        .metadata_list()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "haina.publications");
    assert!(pubs.is_none(), "read-only requests recorded {pubs:?}");
    delete(&ceph, &mut c, &a).await;
    delete(&ceph, &mut c, &b).await;
}

/// A wrong key is UNAUTHENTICATED, says so, and does not cost a 30 s
/// timeout per call; a good request of the same user is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_wrong_key_is_refused_plainly() {
    let Some(ceph) = Ceph::from_env("rbd_wrong_key_is_refused_plainly") else {
        return;
    };
    let p = Plugin::start(&ceph, "controller").await;
    let mut c = p.clients().await;
    // A live connection of the same user exists first.
    let id = create_vol(&ceph, &mut c, &p.unique("pvc-key")).await;
    let mut req = create(&ceph, "ceph", &p.unique("pvc-badkey"), 16 * MIB, ext4());
    req.secrets = secrets_of(&ceph.user, WRONG_KEY);
    for attempt in 0..2 {
        let start = Instant::now();
        let m = expect_code(
            c.controller.create_volume(req.clone()).await,
            Code::Unauthenticated,
        );
        assert!(
            m.contains(&format!("client.{}", ceph.user)) && m.contains("key"),
            "{m}"
        );
        assert!(!m.contains(WRONG_KEY), "the key leaked: {m}");
        // Generous bounds proving "did not wait out librados' 30 s".
        let bound = if attempt == 0 { 9 } else { 3 };
        assert!(
            start.elapsed() < Duration::from_secs(bound),
            "attempt {attempt} took {:?}",
            start.elapsed()
        );
    }
    assert!(!p.logs().contains(WRONG_KEY), "the key reached the log");
    // The good key still works.
    delete(&ceph, &mut c, &id).await;
}

/// A pool whose monitors cannot be reached: UNAVAILABLE at once, and Probe
/// is not ready (while the reachable pools keep working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_unreachable_monitors_are_unavailable_and_probe_not_ready() {
    let Some(ceph) = Ceph::from_env("rbd_unreachable_monitors_are_unavailable_and_probe_not_ready")
    else {
        return;
    };
    // Port 1 on loopback: nothing listens there. And a "monitor" whose
    // kernel accepts connections but which never answers (a hung one).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    let config = ceph.config()
        + "[pools.dead]\nkind = \"rbd\"\nmonitors = [\"127.0.0.1:1\"]\nrados_pool = \"haina\"\n"
        + &format!(
            "[pools.hung]\nkind = \"rbd\"\nmonitors = [\"{hung_addr}\"]\nrados_pool = \"haina\"\n"
        );
    let p = Plugin::start_with_config(&ceph, "controller", &[], &config).await;
    let mut c = p.clients().await;
    let probe = c.identity.probe(csi::ProbeRequest {}).await.unwrap();
    assert_eq!(probe.into_inner().ready, Some(false), "Probe is ready");
    let start = Instant::now();
    let m = expect_code(
        c.controller
            .create_volume(create(
                &ceph,
                "dead",
                &p.unique("pvc-dead"),
                16 * MIB,
                ext4(),
            ))
            .await,
        Code::Unavailable,
    );
    assert!(m.contains("127.0.0.1:1"), "{m}");
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let m = expect_code(
        c.controller
            .create_volume(create(
                &ceph,
                "hung",
                &p.unique("pvc-hung"),
                16 * MIB,
                ext4(),
            ))
            .await,
        Code::Unavailable,
    );
    assert!(
        m.contains(&hung_addr.to_string()) && m.contains("no banner"),
        "{m}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    // Probe stays fast while it is so (its answer is cached briefly).
    for _ in 0..3 {
        let start = Instant::now();
        let probe = c.identity.probe(csi::ProbeRequest {}).await.unwrap();
        assert_eq!(probe.into_inner().ready, Some(false));
        assert!(
            start.elapsed() < Duration::from_secs(9),
            "{:?}",
            start.elapsed()
        );
    }
    // The healthy pool next to it works.
    let id = create_vol(&ceph, &mut c, &p.unique("pvc-alive")).await;
    delete(&ceph, &mut c, &id).await;
}
