//! The safety rules of issue 9 against a real server, real loop devices and
//! real mounts: hostile paths and IDs never unmount what is not the
//! volume's, a formatting record never beats a filesystem someone else
//! made, and every path stage or publish accepts can be torn down.
//! (The same rules, with a fault at every step, run as unit tests on a fake
//! kernel in `src/node/tests.rs`.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn create(c: &mut Clients, name: &str, cap: &csi::VolumeCapability) -> String {
    c.controller
        .create_volume(create_req(name, 64 * MIB, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

fn unpublish_req(id: &str, target: &str) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
    }
}

fn stage_req(id: &str, staging: &Path, cap: &csi::VolumeCapability) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    cap: &csi::VolumeCapability,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_str().unwrap().into(),
        target_path: target.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    }
}

fn unstage_req(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_str().unwrap().into(),
    }
}

fn root_is_read_write() -> bool {
    let st = rustix::fs::statvfs("/").unwrap();
    !st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY)
}

/// Deletes the volume and checks nothing of the test is left.
async fn delete_and_check(server: &Server, c: &mut Clients, id: String) {
    delete_volume(c, &id).await;
    server.assert_no_leaks();
}

/// A server whose first stage of a fresh volume aborts at `failpoint`
/// (no cleanup at all, like kill -9): the stopped server, the volume's ID
/// and its staging path.
async fn stage_aborted_at(
    failpoint: &str,
    name: &str,
    cap: &csi::VolumeCapability,
) -> (Server, String, std::path::PathBuf) {
    let mut server =
        Server::start_with(&[("HAINA_FAILPOINTS", &format!("{failpoint}=abort"))]).await;
    let mut c = server.clients().await;
    let id = create(&mut c, name, cap).await;
    let staging = server.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    c.node
        .node_stage_volume(stage_req(&id, &staging, cap))
        .await
        .expect_err("the failpoint aborts the server");
    assert!(!server.wait_exit().success());
    (server, id, staging)
}

/// Item 1: NodeUnpublishVolume unmounts only what the volume put there.
#[tokio::test(flavor = "multi_thread")]
async fn unpublish_never_unmounts_what_is_not_the_volumes() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let a = create(&mut c, "safety-a", &cap).await;
    let b = create(&mut c, "safety-b", &cap).await;
    let a_target = mount_volume(&mut c, &server, &a, &cap, "a").await;
    let b_target = mount_volume(&mut c, &server, &b, &cap, "b").await;
    // A foreign tmpfs where a pod path could be.
    let foreign = server.path("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=1m",
        "tmpfs",
        foreign.to_str().unwrap(),
    ]);
    std::fs::write(foreign.join("keep"), "x").unwrap();

    for (id, target) in [
        (b.as_str(), foreign.to_str().unwrap()),
        (b.as_str(), a_target.to_str().unwrap()),
        (b.as_str(), server.path("a/staging").to_str().unwrap()),
        (b.as_str(), "/dev/shm"),
        ("default.no-such-volume", b_target.to_str().unwrap()),
        ("not-ours", b_target.to_str().unwrap()),
    ] {
        c.node
            .node_unpublish_volume(unpublish_req(id, target))
            .await
            .unwrap_or_else(|e| panic!("{id} at {target}: {e}"));
    }
    // `/` can never hold a volume: refused before any umount(2).
    expect_code(
        c.node.node_unpublish_volume(unpublish_req(&b, "/")).await,
        Code::InvalidArgument,
    );
    assert!(root_is_read_write(), "/ was remounted read-only");
    for p in [&foreign, &a_target, &b_target, &server.path("a/staging")] {
        assert!(is_mount_point(p), "{} was unmounted", p.display());
    }
    assert!(is_mount_point(Path::new("/dev/shm")));
    assert!(foreign.join("keep").exists());

    sh(&["umount", foreign.to_str().unwrap()]);
    unmount_volume(&mut c, &server, &a, "a").await;
    unmount_volume(&mut c, &server, &b, "b").await;
    for id in [a, b] {
        delete_volume(&mut c, &id).await;
    }
    server.assert_no_leaks();
}

/// Item 8: every path stage or publish accepts can be torn down; the rest
/// get the spec's codes.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_are_refused_or_torn_down() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let id = create(&mut c, "safety-paths", &cap).await;

    // A symlink in the staging path: staged at the resolved path, and the
    // same request unstages it.
    let real = server.path("real");
    std::fs::create_dir_all(real.join("staging")).unwrap();
    std::os::unix::fs::symlink(&real, server.path("link")).unwrap();
    let staging = server.path("link/staging");
    c.node
        .node_stage_volume(stage_req(&id, &staging, &cap))
        .await
        .unwrap();
    assert!(is_mount_point(&real.join("staging")));
    // The staging path as (or around) a publish target: refused.
    for target in [staging.clone(), staging.join("sub"), server.path("link")] {
        expect_code(
            c.node
                .node_publish_volume(publish_req(&id, &staging, &target, &cap))
                .await,
            Code::InvalidArgument,
        );
    }
    // A second staging path for the same volume: refused, naming the first.
    let second = server.path("second");
    std::fs::create_dir_all(&second).unwrap();
    let m = expect_code(
        c.node
            .node_stage_volume(stage_req(&id, &second, &cap))
            .await,
        Code::FailedPrecondition,
    );
    assert!(m.contains("real/staging"), "{m}");
    // A raw block publish of a volume staged with a filesystem: refused.
    let blk = server.path("pod/blk");
    std::fs::create_dir_all(blk.parent().unwrap()).unwrap();
    expect_code(
        c.node
            .node_publish_volume(publish_req(
                &id,
                &staging,
                &blk,
                &block_cap(Mode::SingleNodeWriter),
            ))
            .await,
        Code::FailedPrecondition,
    );
    // Unpublish of the staging path never tears the staging mount down.
    c.node
        .node_unpublish_volume(unpublish_req(&id, staging.to_str().unwrap()))
        .await
        .unwrap();
    assert!(is_mount_point(&real.join("staging")));
    c.node
        .node_unstage_volume(unstage_req(&id, &second))
        .await
        .unwrap();
    assert!(is_mount_point(&real.join("staging")));
    c.node
        .node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
    assert!(!is_mount_point(&real.join("staging")));

    // A staging path that is a file, or a symlink itself: INVALID_ARGUMENT.
    let file = server.path("file");
    std::fs::write(&file, "").unwrap();
    expect_code(
        c.node.node_stage_volume(stage_req(&id, &file, &cap)).await,
        Code::InvalidArgument,
    );
    std::os::unix::fs::symlink(&second, server.path("staging-link")).unwrap();
    expect_code(
        c.node
            .node_stage_volume(stage_req(&id, &server.path("staging-link"), &cap))
            .await,
        Code::InvalidArgument,
    );
    delete_and_check(&server, &mut c, id).await;
}

/// Item 4: node A dies in mkfs; the volume is formatted and filled
/// elsewhere; when A stages it again, it must not reformat it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_formatting_record_never_beats_someone_elses_filesystem() {
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let (mut server, id, staging) =
        stage_aborted_at("stage-before-mkfs", "safety-mkfs", &cap).await;
    // Node A is down. "Node B" (here: by hand) formats the volume and
    // writes data to it.
    let (dev, image) = loops_under(server.dir.path()).remove(0);
    detach_loop(&dev);
    let dev = attach_loop(Path::new(&image));
    sh(&["mkfs.ext4", "-q", &dev]);
    let mnt = server.path("node-b");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&["mount", "-t", "ext4", &dev, mnt.to_str().unwrap()]);
    write_synced(&mnt.join("precious"), "written on node B");
    sh(&["umount", mnt.to_str().unwrap()]);
    detach_loop(&dev);

    // Node A comes back and the pod is scheduled on it again.
    server.spawn_with_env(vec![]).await;
    let mut c = server.clients().await;
    c.node
        .node_stage_volume(stage_req(&id, &staging, &cap))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(staging.join("precious")).unwrap(),
        "written on node B",
        "node A reformatted a filesystem node B made"
    );
    c.node
        .node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
    delete_and_check(&server, &mut c, id).await;
}

/// Item 4, the other half: an mkfs this node started and a crash
/// interrupted, before anything was mounted, is made again on retry.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_mkfs_of_ours_is_made_again() {
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let (mut server, id, staging) =
        stage_aborted_at("stage-before-mount", "safety-remkfs", &cap).await;
    server.spawn_with_env(vec![]).await;
    let mut c = server.clients().await;
    c.node
        .node_stage_volume(stage_req(&id, &staging, &cap))
        .await
        .unwrap();
    assert!(is_mount_point(&staging));
    std::fs::write(staging.join("ok"), "x").unwrap();
    c.node
        .node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
    delete_and_check(&server, &mut c, id).await;
}

/// A staging filesystem left frozen (a snapshot cut short by `kill -9`
/// inside its freeze window, or an operator's `fsfreeze`) is thawed before
/// unstage unmounts it: unmounted frozen, its superblock would outlive the
/// mount with no path left to thaw it, and hold the loop device forever.
#[tokio::test(flavor = "multi_thread")]
async fn unstage_thaws_a_filesystem_left_frozen() {
    let server = Server::start().await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let id = create(&mut c, "safety-frozen", &cap).await;
    let target = mount_volume(&mut c, &server, &id, &cap, "frozen").await;
    write_synced(&target.join("data"), "before the freeze");
    let staging = server.path("frozen/staging");
    let dev = sh(&["findmnt", "-n", "-o", "SOURCE", staging.to_str().unwrap()]);
    let loop_name = dev.trim_start_matches("/dev/").to_string();
    let superblock = Path::new("/sys/fs/ext4").join(&loop_name);
    assert!(superblock.exists(), "{dev} holds no ext4");
    haina_sys::fs::freeze(&staging).unwrap();

    unmount_volume(&mut c, &server, &id, "frozen").await;
    assert!(
        !superblock.exists(),
        "the frozen ext4 of {dev} outlived its unmount"
    );
    // And the loop device went with it (no loop over the deleted image).
    delete_and_check(&server, &mut c, id).await;
}
