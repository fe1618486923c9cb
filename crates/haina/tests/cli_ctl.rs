//! `haina ctl` against a real `haina serve`: every RPC family from the
//! command line, JSON output parsed, table output read, and the exit code
//! contract (the gRPC status code; UNAVAILABLE when nothing answers).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const MIB: i64 = 1 << 20;
const SECRET: &str = "AQBsupersecretkey==";

fn ctl(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haina"))
        .arg("ctl")
        .arg("--endpoint")
        .arg(format!("unix://{}", server.socket.display()))
        .args(args)
        .output()
        .expect("running haina ctl")
}

#[track_caller]
fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "a secret was printed"
    );
    stdout
}

#[track_caller]
fn json(out: Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Asserts the run failed with gRPC `code` (exit status and message); returns stderr.
#[track_caller]
fn fails(out: Output, code: i32, name: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!("ERROR {name}: ")),
        "stderr: {stderr}"
    );
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_drives_the_whole_lifecycle() {
    let server = Server::start().await;
    let node = server.node_id.clone();

    // Identity.
    let info = json(ctl(&server, &["plugin-info", "-o", "json"]));
    assert_eq!(info["name"], "haina.csi.dev");
    assert_eq!(json(ctl(&server, &["probe", "-o", "json"]))["ready"], true);
    let caps = json(ctl(&server, &["plugin-capabilities", "-o", "json"]));
    assert!(
        caps["capabilities"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"service": "CONTROLLER_SERVICE"})),
        "{caps}"
    );
    let caps = ok(ctl(&server, &["controller-capabilities"]));
    assert!(
        caps.lines().any(|l| l == "rpc CREATE_DELETE_VOLUME"),
        "{caps}"
    );
    let caps = json(ctl(&server, &["node-capabilities", "-o", "json"]));
    assert!(caps.to_string().contains("STAGE_UNSTAGE_VOLUME"), "{caps}");
    let ni = json(ctl(&server, &["node-info", "-o", "json"]));
    assert_eq!(ni["node_id"], node.as_str());
    assert_eq!(
        ni["accessible_topology"]["segments"]["topology.haina.dev/node"],
        node.as_str()
    );

    // CreateVolume with every kind of flag; secrets go in, never come out.
    let secrets = server.path("secrets.env");
    std::fs::write(&secrets, format!("# test\nuserKey={SECRET}\n")).unwrap();
    let requisite = format!("topology.haina.dev/node={node}");
    let created = json(ctl(
        &server,
        &[
            "create-volume",
            "pvc-ctl",
            "--size",
            "64Mi",
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
            "--param",
            "fsType=ext4",
            "--secrets-file",
            s(&secrets),
            "--requisite",
            &requisite,
            "--preferred",
            &requisite,
            "-o",
            "json",
        ],
    ));
    let vol = &created["volume"];
    let id = vol["volume_id"].as_str().unwrap().to_string();
    assert_eq!(id, "default.pvc-ctl");
    assert_eq!(vol["capacity_bytes"], 64 * MIB);
    assert_eq!(
        vol["accessible_topology"][0]["segments"]["topology.haina.dev/node"],
        node.as_str()
    );

    // Reads: JSON and the table view agree.
    let page = json(ctl(
        &server,
        &["list-volumes", "--max-entries", "1", "-o", "json"],
    ));
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["volume"]["volume_id"], id.as_str());
    let table = ok(ctl(&server, &["list-volumes"]));
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("64 MiB"), "{table}");
    let got = ok(ctl(&server, &["get-volume", &id]));
    assert!(
        got.contains("volume.volume_id:") && got.contains(&id),
        "{got}"
    );
    let valid = json(ctl(
        &server,
        &[
            "validate-capabilities",
            &id,
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
            "-o",
            "json",
        ],
    ));
    assert!(valid["confirmed"].is_object(), "{valid}");
    let cap = json(ctl(
        &server,
        &[
            "get-capacity",
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
            "-o",
            "json",
        ],
    ));
    assert!(cap["available_capacity"].as_i64().unwrap() > 0, "{cap}");

    // Publish, stage, publish on the node.
    let ctx = json(ctl(
        &server,
        &[
            "controller-publish",
            &id,
            "--node-id",
            &node,
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
            "-o",
            "json",
        ],
    ));
    assert_eq!(ctx["publish_context"]["pool"], "default");
    let staging = server.path("staging");
    let target = server.path("pods/p1/mount");
    std::fs::create_dir_all(&staging).unwrap();
    let out = ok(ctl(
        &server,
        &[
            "node-stage",
            &id,
            "--staging-path",
            s(&staging),
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
            "--publish-context",
            "pool=default",
            "--volume-context",
            "pool=default",
        ],
    ));
    assert_eq!(out, "OK\n");
    ok(ctl(
        &server,
        &[
            "node-publish",
            &id,
            "--staging-path",
            s(&staging),
            "--target-path",
            s(&target),
            "--cap",
            "mount,ext4,SINGLE_NODE_WRITER",
        ],
    ));
    assert!(is_mount_point(&target));
    let stats = json(ctl(
        &server,
        &["node-stats", &id, "--volume-path", s(&target), "-o", "json"],
    ));
    assert_eq!(stats["usage"][0]["unit"], "BYTES");
    assert_eq!(stats["volume_condition"]["abnormal"], false);
    let table = ok(ctl(
        &server,
        &["node-stats", &id, "--volume-path", s(&target)],
    ));
    assert!(
        table.starts_with("UNIT") && table.contains("INODES"),
        "{table}"
    );

    // Snapshots.
    let snap = json(ctl(
        &server,
        &[
            "create-snapshot",
            "snap-ctl",
            "--source-volume",
            &id,
            "-o",
            "json",
        ],
    ));
    let snap_id = snap["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(snap["snapshot"]["ready_to_use"], true);
    let list = json(ctl(
        &server,
        &["list-snapshots", "--source-volume", &id, "-o", "json"],
    ));
    assert_eq!(
        list["entries"][0]["snapshot"]["snapshot_id"],
        snap_id.as_str()
    );
    let got = json(ctl(&server, &["get-snapshot", &snap_id, "-o", "json"]));
    assert_eq!(got["snapshot"]["source_volume_id"], id.as_str());
    ok(ctl(&server, &["delete-snapshot", &snap_id]));

    // Expansion: the controller part always works; the node part needs the
    // kernel's online resize, which some sandboxes refuse: either way the
    // CLI must report it properly.
    let exp = json(ctl(
        &server,
        &["expand-volume", &id, "--size", "128Mi", "-o", "json"],
    ));
    assert_eq!(exp["capacity_bytes"], 128 * MIB);
    assert_eq!(exp["node_expansion_required"], true);
    let out = ctl(
        &server,
        &[
            "node-expand",
            &id,
            "--volume-path",
            s(&target),
            "-o",
            "json",
        ],
    );
    if out.status.success() {
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["capacity_bytes"], 128 * MIB);
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code().unwrap();
        assert!(
            stderr.starts_with("ERROR ") && (1..=16).contains(&code),
            "{stderr}"
        );
    }

    // Errors: the exit code is the gRPC code.
    fails(
        ctl(&server, &["get-volume", "default.nope"]),
        5,
        "NOT_FOUND",
    );
    fails(
        ctl(
            &server,
            &["node-stage", "a/b", "--staging-path", s(&staging)],
        ),
        3,
        "INVALID_ARGUMENT",
    );
    fails(
        ctl(
            &server,
            &["modify-volume", &id, "--mutable-param", "bogus=1"],
        ),
        3,
        "INVALID_ARGUMENT",
    );
    // DeleteVolume of a volume still published: FAILED_PRECONDITION.
    fails(
        ctl(&server, &["delete-volume", &id]),
        9,
        "FAILED_PRECONDITION",
    );

    // Tear down.
    ok(ctl(
        &server,
        &["node-unpublish", &id, "--target-path", s(&target)],
    ));
    ok(ctl(
        &server,
        &["node-unstage", &id, "--staging-path", s(&staging)],
    ));
    ok(ctl(
        &server,
        &["controller-unpublish", &id, "--node-id", &node],
    ));
    ok(ctl(
        &server,
        &["delete-volume", &id, "--secrets-file", s(&secrets)],
    ));
    let page = json(ctl(&server, &["list-volumes", "-o", "json"]));
    assert_eq!(page["entries"], serde_json::json!([]));
    server.assert_no_leaks();
}

#[test]
fn ctl_reports_unreachable_endpoints_and_bad_input() {
    let haina = env!("CARGO_BIN_EXE_haina");
    let dir = tempfile::Builder::new()
        .prefix("haina-ctl-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("nobody.sock");
    let out = Command::new(haina)
        .args(["ctl", "probe", "--endpoint"])
        .arg(format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(14), "{stderr}");
    assert!(stderr.starts_with("ERROR UNAVAILABLE: "), "{stderr}");

    // The endpoint also comes from CSI_ENDPOINT.
    let out = Command::new(haina)
        .args(["ctl", "node-info"])
        .env("CSI_ENDPOINT", format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(14));

    // A malformed secrets file is refused before dialling, without echoing it.
    let secrets = dir.path().join("secrets.json");
    for bad in [
        format!("{{\"userKey\": \"{SECRET}\""),
        format!("{{\"userKey\": 987654321, \"k\": \"{SECRET}\"}}"),
        format!("userKey {SECRET}\n"),
    ] {
        std::fs::write(&secrets, bad).unwrap();
        let out = Command::new(haina)
            .args(["ctl", "delete-volume", "default.x", "--secrets-file"])
            .arg(&secrets)
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.starts_with("ERROR INVALID_ARGUMENT: --secrets-file"),
            "{stderr}"
        );
        assert!(
            !stderr.contains(SECRET) && !stderr.contains("987654321"),
            "{stderr}"
        );
    }

    // Flags are checked by the parser (clap's usage exit code).
    let out = Command::new(haina)
        .args([
            "ctl",
            "create-volume",
            "x",
            "--cap",
            "nfs,SINGLE_NODE_WRITER",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(haina)
        .args(["ctl", "create-volume", "x", "--size", "1.5Gi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
