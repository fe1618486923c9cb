//! `haina flexvolume` invoked the way kubelet invokes a FlexVolume driver:
//! every op, the JSON reply checked, real mounts and loop devices checked
//! against the kernel, and bad options refused with nothing mounted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const MIB: i64 = 1 << 20;

/// Runs `haina flexvolume <args>` with the data dir in the environment, as
/// the installed wrapper script does; returns (exit code, reply).
fn flex(data_dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_haina"))
        .arg("flexvolume")
        .args(args)
        .env("HAINA_DATA_DIR", data_dir)
        .env_remove("HAINA_CONFIG")
        .output()
        .expect("running haina flexvolume");
    // Kubelet parses stdout and stderr together: stderr must stay empty.
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code().unwrap(), v)
}

#[track_caller]
fn success(r: (i32, Value)) -> Value {
    assert_eq!(r.0, 0, "{}", r.1);
    assert_eq!(r.1["status"], "Success", "{}", r.1);
    r.1
}

/// kubelet's options for a FlexVolume PV (its own keys plus the PV's).
fn options(volume_id: &str, pod_uid: &str, rw: &str) -> String {
    json!({
        "kubernetes.io/fsType": "ext4",
        "kubernetes.io/readwrite": rw,
        "kubernetes.io/pod.name": "app",
        "kubernetes.io/pod.namespace": "default",
        "kubernetes.io/pod.uid": pod_uid,
        "kubernetes.io/pvOrVolumeName": "data",
        "kubernetes.io/serviceAccount.name": "default",
        "volumeID": volume_id,
    })
    .to_string()
}

/// The mount dir kubelet passes: `pods/<uid>/volumes/<vendor~driver>/<name>`,
/// created by kubelet before it calls `mount`.
fn pod_dir(server: &Server, pod_uid: &str) -> PathBuf {
    let d = server.path(&format!(
        "kubelet/pods/{pod_uid}/volumes/haina.dev~haina/data"
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mounts_under(root: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| p.starts_with(root.to_str().unwrap()))
        })
        .map(String::from)
        .collect()
}

fn mount_line(p: &Path) -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted", p.display()))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn flexvolume_ops_as_kubelet_calls_them() {
    let server = Server::start().await;
    let data = server.data_dir();
    let mut c = server.clients().await;
    let vol = c
        .controller
        .create_volume(create_req(
            "flex-vol",
            64 * MIB,
            mount_cap("ext4", Mode::SingleNodeWriter),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();

    // init: attach is done by mount, on the node.
    let init = success(flex(&data, &["init"]));
    assert_eq!(init["capabilities"], json!({"attach": false}));
    let name = success(flex(&data, &["getvolumename", &options(&id, "u0", "rw")]));
    assert_eq!(name["volumeName"], id.as_str());

    // mount: stage + publish; twice is still fine (kubelet retries).
    let t1 = pod_dir(&server, "u1");
    for _ in 0..2 {
        success(flex(
            &data,
            &["mount", t1.to_str().unwrap(), &options(&id, "u1", "rw")],
        ));
    }
    assert!(is_mount_point(&t1));
    let staging = data.join("flexvolume/staging").join(&id);
    assert!(is_mount_point(&staging), "staged under the data dir");
    assert_eq!(loops_under(server.dir.path()).len(), 1);
    std::fs::write(t1.join("hello.txt"), "written through flexvolume").unwrap();

    // A second pod, read-only: the same filesystem, bound read-only.
    let t2 = pod_dir(&server, "u2");
    success(flex(
        &data,
        &["mount", t2.to_str().unwrap(), &options(&id, "u2", "ro")],
    ));
    let line = mount_line(&t2);
    assert!(
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(t2.join("hello.txt")).unwrap(),
        "written through flexvolume"
    );

    // unmount: the first pod goes, the volume stays staged for the second.
    success(flex(&data, &["unmount", t1.to_str().unwrap()]));
    assert!(!is_mount_point(&t1));
    assert!(is_mount_point(&staging));
    success(flex(&data, &["unmount", t2.to_str().unwrap()]));
    success(flex(&data, &["unmount", t2.to_str().unwrap()]));
    assert!(
        mounts_under(server.dir.path()).is_empty(),
        "{:?}",
        mounts_under(server.dir.path())
    );
    assert!(loops_under(server.dir.path()).is_empty());

    // The ops that attach:false makes kubelet skip answer "Not supported".
    let dev = "/dev/loop999";
    let json_opts = options(&id, "u3", "rw");
    let t3 = pod_dir(&server, "u3");
    let t3s = t3.to_str().unwrap();
    for call in [
        vec!["attach", &json_opts, "node-a"],
        vec!["detach", &id, "node-a"],
        vec!["waitforattach", dev, &json_opts],
        vec!["isattached", &json_opts, "node-a"],
        vec!["mountdevice", t3s, dev, &json_opts],
        vec!["unmountdevice", t3s],
        vec!["expandvolume", &json_opts, "1Gi", "2Gi"],
    ] {
        let (code, reply) = flex(&data, &call);
        assert_eq!(code, 0, "{call:?}: {reply}");
        assert_eq!(reply["status"], "Not supported", "{call:?}: {reply}");
    }

    // Bad options: Failure naming the problem, and nothing mounted.
    let bad = [
        ("{\"volumeID\": ".to_string(), "JSON"),
        (
            json!({"kubernetes.io/fsType": "ext4"}).to_string(),
            "volumeID",
        ),
        (json!({"volumeID": "no-pool-part"}).to_string(), "volumeID"),
        (
            json!({"volumeID": id, "kubernetes.io/fsType": "btrfs"}).to_string(),
            "fsType",
        ),
        (
            json!({"volumeID": id, "kubernetes.io/readwrite": "rx"}).to_string(),
            "readwrite",
        ),
        (
            json!({"volumeID": id, "mountOptoins": "noatime"}).to_string(),
            "mountOptoins",
        ),
        (
            json!({"volumeID": id, "kubernetes.io/fsGroup": 1000}).to_string(),
            "fsGroup",
        ),
        (
            json!({"volumeID": "default.does-not-exist"}).to_string(),
            "does not exist",
        ),
        (json!({"volumeID": "otherpool.x"}).to_string(), "otherpool"),
        // The volume holds ext4 now: asking for xfs must not reformat it.
        (
            json!({"volumeID": id, "kubernetes.io/fsType": "xfs"}).to_string(),
            "refusing",
        ),
    ];
    for (opts, names) in &bad {
        let (code, reply) = flex(&data, &["mount", t3s, opts]);
        assert_eq!(code, 1, "{opts}: {reply}");
        assert_eq!(reply["status"], "Failure", "{opts}: {reply}");
        let msg = reply["message"].as_str().unwrap();
        assert!(msg.contains(names), "{opts}: {msg}");
        assert!(
            mounts_under(server.dir.path()).is_empty(),
            "{opts}: mounted something"
        );
        assert!(
            loops_under(server.dir.path()).is_empty(),
            "{opts}: attached something"
        );
    }
    let (code, reply) = flex(&data, &["mount", t3s]);
    assert_eq!(
        (code, reply["status"].as_str()),
        (1, Some("Failure")),
        "{reply}"
    );

    // The data survived all of it.
    success(flex(&data, &["mount", t3s, &options(&id, "u3", "rw")]));
    assert_eq!(
        std::fs::read_to_string(t3.join("hello.txt")).unwrap(),
        "written through flexvolume"
    );

    // An unmount interrupted after the unbind (kubelet's retry then finds
    // the target unmounted): the next unmount unstages the orphan.
    rustix::mount::unmount(&t3, rustix::mount::UnmountFlags::empty()).unwrap();
    assert!(is_mount_point(&staging));
    success(flex(&data, &["unmount", t3s]));
    assert!(mounts_under(server.dir.path()).is_empty());
    assert!(loops_under(server.dir.path()).is_empty());
    assert!(!staging.exists(), "the staging dir is removed");

    c.controller
        .delete_volume(haina_csi::v1::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    server.assert_no_leaks();
}
