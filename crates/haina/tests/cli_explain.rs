//! `haina explain` on a volume staged and published with kubelet's path
//! layout: the healthy chain as the kernel shows it, then the same chain
//! broken by hand (a target unmounted, the staging mount lazily unmounted
//! under its target, a device left unmounted, the image deleted) and
//! flagged with exit code 1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use haina_csi::v1 as csi;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MIB: i64 = 1 << 20;

struct Kubelet {
    root: PathBuf,
    staging: PathBuf,
    target: PathBuf,
}

/// Kubelet's paths for a CSI volume, with its vol_data.json files.
fn kubelet_layout(server: &Server, id: &str, pv: &str) -> Kubelet {
    let root = server.path("kubelet");
    let sha: String = Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let staging = root
        .join("plugins/kubernetes.io/csi/haina.csi.dev")
        .join(sha)
        .join("globalmount");
    let pod = root
        .join("pods/7d1a-pod/volumes/kubernetes.io~csi")
        .join(pv);
    let vol_data = json!({"driverName": "haina.csi.dev", "volumeHandle": id, "specVolID": pv});
    for d in [staging.parent().unwrap(), pod.as_path()] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("vol_data.json"), vol_data.to_string()).unwrap();
    }
    std::fs::create_dir_all(&staging).unwrap();
    Kubelet {
        root,
        staging,
        target: pod.join("mount"),
    }
}

fn explain(server: &Server, k: &Kubelet, what: &str, json_out: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haina"));
    cmd.args(["explain", what, "--data-dir"])
        .arg(server.data_dir())
        .arg("--kubelet-dir")
        .arg(&k.root)
        .env_remove("HAINA_CONFIG");
    if json_out {
        cmd.args(["--output", "json"]);
    }
    cmd.output().expect("running haina explain")
}

/// Runs explain with JSON output; returns (exit code, report).
fn report(server: &Server, k: &Kubelet, what: &str) -> (i32, Value) {
    let out = explain(server, k, what, true);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{e}: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

#[track_caller]
fn flagged(r: &(i32, Value), needle: &str) {
    assert_eq!(r.0, 1, "{:#}", r.1);
    assert_eq!(r.1["healthy"], false);
    let problems = r.1["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains(needle)),
        "no problem mentions {needle:?}: {problems:#?}"
    );
}

struct Volume {
    id: String,
    cap: csi::VolumeCapability,
}

async fn staged_and_published(server: &Server, c: &mut Clients, name: &str) -> (Volume, Kubelet) {
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let vol = c
        .controller
        .create_volume(create_req(name, 64 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let v = Volume {
        id: vol.volume_id,
        cap,
    };
    let k = kubelet_layout(server, &v.id, name);
    stage(c, &v, &k).await;
    publish(c, &v, &k).await;
    (v, k)
}

async fn stage(c: &mut Clients, v: &Volume, k: &Kubelet) {
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: k.staging.to_str().unwrap().into(),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn publish(c: &mut Clients, v: &Volume, k: &Kubelet) {
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: k.staging.to_str().unwrap().into(),
            target_path: k.target.to_str().unwrap().into(),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn unpublish_unstage_delete(c: &mut Clients, v: &Volume, k: &Kubelet) {
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: v.id.clone(),
            target_path: k.target.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: k.staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    delete_volume(c, &v.id).await;
}

fn umount(p: &Path, lazy: bool) {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    rustix::mount::unmount(p, flags).unwrap_or_else(|e| panic!("umount {}: {e}", p.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_the_live_chain_and_flags_what_is_broken() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let (v, k) = staged_and_published(&server, &mut c, "pvc-explain").await;
    let loops = loops_under(server.dir.path());
    assert_eq!(loops.len(), 1);
    let (dev, image) = &loops[0];

    // Healthy, by ID: every link matches the kernel.
    let r = report(&server, &k, &v.id);
    assert_eq!(r.0, 0, "{:#}", r.1);
    let rep = &r.1;
    assert_eq!(rep["healthy"], true);
    assert_eq!(rep["state"], "published");
    assert_eq!(rep["staging"]["path"], k.staging.to_str().unwrap());
    assert_eq!(rep["staging"]["fs_type"], "ext4");
    assert_eq!(rep["targets"][0]["path"], k.target.to_str().unwrap());
    assert_eq!(rep["targets"].as_array().unwrap().len(), 1);
    assert_eq!(rep["device"]["path"], dev.as_str());
    assert_eq!(rep["backing"]["kind"], "file");
    assert_eq!(rep["backing"]["path"], image.as_str());
    assert_eq!(rep["mounter"], "loop");
    let chain = rep["chain"][0].as_str().unwrap();
    assert_eq!(
        chain,
        format!(
            "{} <- bind of {} <- ext4 on {dev} <- loop{} over {image}",
            k.target.display(),
            k.staging.display(),
            if rep["backing"]["direct_io"] == true {
                " (direct-io)"
            } else {
                ""
            }
        )
    );

    // By path: the target leads back to the same volume; the table says healthy.
    let r = report(&server, &k, k.target.to_str().unwrap());
    assert_eq!((r.0, r.1["volume_id"].as_str()), (0, Some(v.id.as_str())));
    let out = explain(&server, &k, k.staging.to_str().unwrap(), false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&v.id) && text.trim_end().ends_with("healthy"),
        "{text}"
    );

    // Broken 1: the target unmounted behind kubelet's back (a stale target).
    umount(&k.target, false);
    flagged(&report(&server, &k, &v.id), "stale target");
    flagged(
        &report(&server, &k, k.target.to_str().unwrap()),
        "not a mount point",
    );
    publish(&mut c, &v, &k).await;
    assert_eq!(
        report(&server, &k, &v.id).0,
        0,
        "republished: healthy again"
    );

    // Broken 2: the staging mount lazily unmounted under its target.
    umount(&k.staging, true);
    let r = report(&server, &k, &v.id);
    flagged(&r, "staging mount is gone");
    flagged(&r, "is not a mount point");
    assert!(r.1["staging"].is_null());
    let out = explain(&server, &k, &v.id, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEMS"), "{text}");

    // Teardown still converges; then broken 3: attached, not staged.
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: v.id.clone(),
            target_path: k.target.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    stage(&mut c, &v, &k).await;
    umount(&k.staging, false);
    flagged(&report(&server, &k, &v.id), "device without a mount");
    std::fs::create_dir_all(k.target.parent().unwrap()).unwrap();
    stage(&mut c, &v, &k).await;
    publish(&mut c, &v, &k).await;
    assert_eq!(report(&server, &k, &v.id).0, 0);

    // Usage errors: exit 2.
    for what in [
        "default.no-such-volume",
        "not-an-id",
        "/nonexistent/path",
        "/",
    ] {
        let out = explain(&server, &k, what, false);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    unpublish_unstage_delete(&mut c, &v, &k).await;
    let out = explain(&server, &k, k.root.to_str().unwrap(), true);
    assert_eq!(out.status.code(), Some(2), "not a volume path");
    assert!(out.stdout.is_empty());
    server.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_flags_a_mount_whose_image_was_deleted() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let (v, k) = staged_and_published(&server, &mut c, "pvc-deleted").await;
    let (dev, image) = loops_under(server.dir.path()).remove(0);
    std::fs::remove_file(&image).unwrap();

    for what in [v.id.as_str(), k.target.to_str().unwrap()] {
        let r = report(&server, &k, what);
        flagged(&r, "mount without a device");
        flagged(&r, "deleted");
        assert_eq!(r.1["device"]["path"], dev.as_str(), "{:#}", r.1);
        assert_eq!(r.1["backing"]["deleted"], true);
    }

    // The driver cleans up what the kernel shows is the volume's, even with
    // its image gone: unpublish, unstage, then delete (which refuses while
    // the stale device is attached).
    let delete = csi::DeleteVolumeRequest {
        volume_id: v.id.clone(),
        ..Default::default()
    };
    let e = c
        .controller
        .delete_volume(delete.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    unpublish_unstage_delete(&mut c, &v, &k).await;
    let _ = c.controller.delete_volume(delete).await.unwrap();
    server.assert_no_leaks();
}
