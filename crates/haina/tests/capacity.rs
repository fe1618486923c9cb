//! Local-pool capacity on small real filesystems (a loop-mounted ext4 or
//! xfs image per test): the pool never promises more than it has unless the
//! operator opted into overcommit, GetCapacity says exactly what CreateVolume
//! accepts, a volume that fills itself cannot starve its neighbour, and a
//! 100 % full pool can still be emptied through the CO and restarted.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use haina_csi::v1 as csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn pool_config(pools: &[(&str, &Path, &str)]) -> String {
    pools
        .iter()
        .map(|(name, path, extra)| {
            format!(
                "[pools.{name}]\nkind = \"local\"\npath = \"{}\"\n{extra}\n",
                path.display()
            )
        })
        .collect()
}

async fn capacity(c: &mut Clients, pool: &str) -> (i64, i64) {
    let r = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            parameters: params(&[("pool", pool)]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.available_capacity, r.maximum_volume_size.unwrap())
}

fn create_in(pool: &str, name: &str, bytes: i64) -> csi::CreateVolumeRequest {
    let mut r = create_req(name, bytes, mount_cap("ext4", Mode::SingleNodeWriter));
    r.parameters = params(&[("pool", pool)]);
    r
}

/// Image, temp image and record files under `dir`.
fn pool_files(dir: &Path) -> Vec<PathBuf> {
    ["img", "tmp", "json"]
        .iter()
        .flat_map(|e| files_with_ext(dir, e))
        .collect()
}

/// Writes 1 MiB chunks of `byte` to `path` until `limit` bytes or an error;
/// returns what was written (fsync'ed) and the error, if any.
fn fill(path: &Path, byte: u8, limit: u64) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![byte; 1 << 20];
    let mut written = 0u64;
    while written < limit {
        if let Err(e) = f.write_all(&chunk) {
            return (written, Some(e));
        }
        written += chunk.len() as u64;
    }
    match f.sync_all() {
        Ok(()) => (written, None),
        Err(e) => (written, Some(e)),
    }
}

/// Nothing of the pool's left: no images, records or temp files, and no
/// loop device over anything on its filesystem.
fn assert_pool_clean(fs: &ScratchFs, root: &Path) {
    assert!(pool_files(root).is_empty(), "{:?}", pool_files(root));
    let loops = loops_under(&fs.mount);
    assert!(loops.is_empty(), "loop devices leaked: {loops:?}");
}

fn mount_options_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .map(|l| l.split(' ').nth(5).unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_capacity_is_what_create_accepts_and_refusals_leave_nothing() {
    let fs = ScratchFs::new(256, &["mkfs.ext4", "-q"]);
    let root = fs.mount.join("pool");
    let server = Server::start_with_config(&[], &pool_config(&[("small", &root, "")])).await;
    let mut c = server.clients().await;

    let (avail, max) = capacity(&mut c, "small").await;
    assert_eq!(avail, max);
    assert!(
        avail > 64 * MIB && avail < 256 * MIB && avail % MIB == 0,
        "{avail}"
    );
    // No xfs volume (300 MiB at least) fits: GetCapacity says so.
    let xfs = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            parameters: params(&[("pool", "small"), ("fsType", "xfs")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (xfs.available_capacity, xfs.maximum_volume_size),
        (0, Some(0))
    );
    let mut r = create_in("small", "xfs", 0);
    r.parameters.insert("fsType".into(), "xfs".into());
    expect_code(c.controller.create_volume(r).await, Code::OutOfRange);
    // One MiB more than GetCapacity says: not now.
    let m = expect_code(
        c.controller
            .create_volume(create_in("small", "too-big", avail + MIB))
            .await,
        Code::ResourceExhausted,
    );
    assert!(m.contains("capacity_range") && m.contains("small"), "{m}");
    // What the pool could never hold, or what no int64 can carry: out of range.
    for (name, bytes) in [
        ("gib", 1 << 30),
        ("eib", 1 << 60),
        ("max", i64::MAX),
        ("almost-max", i64::MAX - MIB),
    ] {
        let m = expect_code(
            c.controller
                .create_volume(create_in("small", name, bytes))
                .await,
            Code::OutOfRange,
        );
        assert!(m.contains("capacity_range"), "{m}");
    }
    assert!(pool_files(&root).is_empty(), "{:?}", pool_files(&root));

    // Exactly what GetCapacity said fits; then nothing does.
    let v = c
        .controller
        .create_volume(create_in("small", "all", avail))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes, avail);
    assert_eq!(capacity(&mut c, "small").await, (0, 0));
    expect_code(
        c.controller
            .create_volume(create_in("small", "one-more", MIB))
            .await,
        Code::ResourceExhausted,
    );
    // Growing needs room too.
    let expand = |bytes: i64| csi::ControllerExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    expect_code(
        c.controller
            .controller_expand_volume(expand(avail + MIB))
            .await,
        Code::ResourceExhausted,
    );
    expect_code(
        c.controller.controller_expand_volume(expand(1 << 60)).await,
        Code::OutOfRange,
    );
    let files = pool_files(&root);
    assert_eq!(
        files.len(),
        2,
        "only the volume's image and record: {files:?}"
    );
    // The retried create of the same volume is still OK (idempotent).
    c.controller
        .create_volume(create_in("small", "all", avail))
        .await
        .unwrap();
    delete_volume(&mut c, &v.volume_id).await;
    assert_eq!(capacity(&mut c, "small").await, (avail, avail));
    server.assert_no_leaks();
    assert_pool_clean(&fs, &root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_filling_itself_leaves_its_neighbour_writing() {
    // No reserved blocks, which would hide an overcommit from root-owned loop I/O.
    let fs = ScratchFs::new(256, &["mkfs.ext4", "-q", "-m", "0"]);
    let root = fs.mount.join("pool");
    let server = Server::start_with_config(&[], &pool_config(&[("small", &root, "")])).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);

    let quiet = c
        .controller
        .create_volume(create_in("small", "quiet", 48 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let quiet_mnt = mount_volume(&mut c, &server, &quiet.volume_id, &cap, "quiet").await;
    write_synced(&quiet_mnt.join("before"), "written before the flood");

    // The noisy volume takes everything the pool will still promise.
    let (_, max) = capacity(&mut c, "small").await;
    let noisy = c
        .controller
        .create_volume(create_in("small", "noisy", max))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let noisy_mnt = mount_volume(&mut c, &server, &noisy.volume_id, &cap, "noisy").await;
    let (flood, err) = fill(&noisy_mnt.join("flood"), 0xee, u64::MAX);
    let err = err.expect("the noisy volume filled up");
    assert_eq!(err.raw_os_error(), Some(28), "its own ENOSPC: {err}");
    assert!(flood > (max as u64) / 2, "wrote only {flood} bytes");
    rustix::fs::sync();

    // The quiet volume still writes and reads its whole promise (minus its
    // filesystem's own overhead), and stays read-write.
    let (n, err) = fill(&quiet_mnt.join("after"), 0x5a, 32 << 20);
    assert!(
        err.is_none(),
        "the neighbour lost a write after {n} bytes: {err:?}"
    );
    let mut back = Vec::new();
    std::fs::File::open(quiet_mnt.join("after"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back.len() == 32 << 20 && back.iter().all(|b| *b == 0x5a));
    assert_eq!(
        std::fs::read_to_string(quiet_mnt.join("before")).unwrap(),
        "written before the flood"
    );
    let staged = server.path("quiet/staging");
    let opts = mount_options_of(&staged);
    assert!(
        opts.starts_with("rw"),
        "the neighbour went read-only: {opts}"
    );
    let st = rustix::fs::statvfs(&fs.mount).unwrap();
    assert!(st.f_bavail > 0, "the pool filesystem is full");

    for (id, tag) in [(&noisy.volume_id, "noisy"), (&quiet.volume_id, "quiet")] {
        unmount_volume(&mut c, &server, id, tag).await;
        delete_volume(&mut c, id).await;
    }
    server.assert_no_leaks();
    assert_pool_clean(&fs, &root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_ext4_pool_can_be_emptied_through_the_co_and_restarted() {
    // No reserved blocks: "full" is full for everyone.
    full_pool(ScratchFs::new(256, &["mkfs.ext4", "-q", "-m", "0"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_xfs_reflink_pool_can_be_emptied_through_the_co_and_restarted() {
    full_pool(ScratchFs::new(320, &["mkfs.xfs", "-q", "-m", "reflink=1"])).await;
}

async fn full_pool(fs: ScratchFs) {
    let root = fs.mount.join("pool");
    let mut server = Server::start_with_config(&[], &pool_config(&[("small", &root, "")])).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_in("small", "stuck", 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = v.volume_id.clone();
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: server.node_id.clone(),
            volume_capability: Some(cap.clone()),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mnt = mount_volume(&mut c, &server, &id, &cap, "stuck").await;
    write_synced(&mnt.join("data"), "kept");

    // Something else fills the pool filesystem to the last block.
    let (_, err) = fill(&fs.mount.join("filler"), 0xff, u64::MAX);
    assert_eq!(err.map(|e| e.raw_os_error()), Some(Some(28)));
    let mut tail = std::fs::OpenOptions::new()
        .append(true)
        .open(fs.mount.join("filler"))
        .unwrap();
    while tail
        .write_all(&[0u8; 512])
        .and_then(|_| tail.sync_all())
        .is_ok()
    {}
    // (xfs keeps a few blocks back for its own btrees, which no write gets.)
    let st = rustix::fs::statvfs(&fs.mount).unwrap();
    assert!(
        st.f_bavail * st.f_frsize < 64 << 10,
        "{} blocks free",
        st.f_bavail
    );

    // A new volume does not fit, and leaves nothing behind.
    expect_code(
        c.controller
            .create_volume(create_in("small", "no-room", MIB))
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(capacity(&mut c, "small").await, (0, 0));
    // The publication survives a restart on the full pool, and is listed.
    server.kill9();
    server.spawn().await;
    let mut c = server.clients().await;
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0]
            .status
            .as_ref()
            .unwrap()
            .published_node_ids,
        vec![server.node_id.clone()]
    );

    // The CO can take everything down and delete it.
    c.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: server.node_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("ControllerUnpublish on a full pool: {e}"));
    let got = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.status.unwrap().published_node_ids.is_empty());
    unmount_volume(&mut c, &server, &id, "stuck").await;
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("DeleteVolume on a full pool: {e}"));
    assert!(
        c.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .is_empty()
    );
    // And a restart still works while the pool is (again) full.
    let mut top = std::fs::OpenOptions::new()
        .append(true)
        .open(fs.mount.join("filler"))
        .unwrap();
    let _ = fill_rest(&mut top);
    server.kill9();
    server.spawn().await;
    let mut c = server.clients().await;
    c.identity.probe(csi::ProbeRequest {}).await.unwrap();
    assert_eq!(capacity(&mut c, "small").await, (0, 0));
    server.assert_no_leaks();
    assert_pool_clean(&fs, &root);
}

fn fill_rest(f: &mut std::fs::File) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0u8; 512]).and_then(|_| f.sync_all()).is_ok() {}
    f.sync_all()
}

#[tokio::test(flavor = "multi_thread")]
async fn overcommit_is_opt_in() {
    let fs = ScratchFs::new(256, &["mkfs.ext4", "-q"]);
    let strict = fs.mount.join("strict");
    let thin = fs.mount.join("thin");
    let server = Server::start_with_config(
        &[],
        &pool_config(&[("strict", &strict, ""), ("thin", &thin, "overcommit = 4.0")]),
    )
    .await;
    let mut c = server.clients().await;
    let (strict_avail, _) = capacity(&mut c, "strict").await;
    let (thin_avail, thin_max) = capacity(&mut c, "thin").await;
    // Both pools share one filesystem: the thin one promises four times more.
    assert!(
        thin_avail >= 4 * strict_avail - 4 * MIB && thin_avail <= 4 * strict_avail + 4 * MIB,
        "strict {strict_avail}, thin {thin_avail}"
    );
    let big = 2 * strict_avail;
    expect_code(
        c.controller
            .create_volume(create_in("strict", "big", big))
            .await,
        Code::OutOfRange,
    );
    let v = c
        .controller
        .create_volume(create_in("thin", "big", big))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // GetCapacity still tells the truth on the thin pool.
    let (after, max) = capacity(&mut c, "thin").await;
    assert!(after < thin_avail - big + 4 * MIB, "{after}");
    expect_code(
        c.controller
            .create_volume(create_in("thin", "over", max + MIB))
            .await,
        if max + MIB > thin_max {
            Code::OutOfRange
        } else {
            Code::ResourceExhausted
        },
    );
    let w = c
        .controller
        .create_volume(create_in("thin", "rest", max))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for id in [v.volume_id, w.volume_id] {
        delete_volume(&mut c, &id).await;
    }
    server.assert_no_leaks();
    assert_pool_clean(&fs, &strict);
    assert_pool_clean(&fs, &thin);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_do_not_share_headroom() {
    let fs = ScratchFs::new(256, &["mkfs.ext4", "-q"]);
    let root = fs.mount.join("pool");
    // Each create stalls after sizing its temp image, before the rename.
    let server = Server::start_with_config(
        &[("HAINA_FAILPOINTS", "create-image=sleep-1000")],
        &pool_config(&[("small", &root, "")]),
    )
    .await;
    let c = server.clients().await;
    let mut cc = c.controller.clone();
    let (avail, _) = capacity(&mut server.clients().await, "small").await;
    let each = (avail * 6 / 10) / MIB * MIB;
    let calls = ["a", "b"].map(|n| {
        let mut ctl = c.controller.clone();
        tokio::spawn(async move { ctl.create_volume(create_in("small", n, each)).await })
    });
    let mut ok = Vec::new();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => ok.push(r.into_inner().volume.unwrap().volume_id),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                refused += 1;
            }
        }
    }
    assert_eq!((ok.len(), refused), (1, 1), "both took the same headroom");
    let files = pool_files(&root);
    assert_eq!(files.len(), 2, "the refused create left files: {files:?}");
    for id in ok {
        cc.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    server.assert_no_leaks();
    assert_pool_clean(&fs, &root);
}

/// On a reflink pool a snapshot takes no space at once, but the blocks it
/// shares with its source are no longer the source's own: a write there
/// allocates anew. GetCapacity counts them.
#[tokio::test(flavor = "multi_thread")]
async fn reflink_snapshots_count_the_blocks_they_share() {
    let fs = ScratchFs::new(512, &["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let root = fs.mount.join("pool");
    let server = Server::start_with_config(&[], &pool_config(&[("refl", &root, "")])).await;
    let mut c = server.clients().await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let v = c
        .controller
        .create_volume(create_in("refl", "src", 128 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_context["copyMethod"], "reflink");
    let mnt = mount_volume(&mut c, &server, &v.volume_id, &cap, "src").await;
    let (n, err) = fill(&mnt.join("data"), 0x42, 64 << 20);
    assert!(err.is_none() && n == 64 << 20);
    let (before, _) = capacity(&mut c, "refl").await;
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "snap".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let (after, _) = capacity(&mut c, "refl").await;
    // At least the 64 MiB of data became shared: the source may need it again.
    assert!(
        before - after >= 64 * MIB,
        "a snapshot of 64 MiB of data cost only {} MiB of headroom",
        (before - after) / MIB
    );
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    // Once xfs has processed the unlink (inode inactivation runs in the
    // background), the source owns its blocks again.
    let mut freed = 0;
    for _ in 0..50 {
        rustix::fs::sync();
        freed = capacity(&mut c, "refl").await.0;
        if freed >= before - 4 * MIB {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed >= before - 4 * MIB, "{freed} < {before}");
    unmount_volume(&mut c, &server, &v.volume_id, "src").await;
    delete_volume(&mut c, &v.volume_id).await;
    server.assert_no_leaks();
    assert_pool_clean(&fs, &root);
}
