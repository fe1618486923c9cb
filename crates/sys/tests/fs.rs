//! Filesystems on real loop devices (root only): probe, mkfs, online grow,
//! freeze/thaw.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{
    CAP_SYS_RESOURCE, LoopGuard, MountGuard, has_capability, root_or_skip, scratch, sparse_file,
};
use haina_sys::fs::{self, FreezeGuard, FsType, Probe};
use haina_sys::loopdev::{self, AttachOptions};
use haina_sys::mount;

const MIB: u64 = 1 << 20;

#[test]
fn probe_blank_then_ext4() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("p.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());

    assert_eq!(fs::probe(&dev.path()).unwrap(), Probe::Blank);
    fs::mkfs(&dev.path(), FsType::Ext4, &["-L", "haina"]).unwrap();
    match fs::probe(&dev.path()).unwrap() {
        Probe::Filesystem { fs_type, uuid } => {
            assert_eq!(fs_type, "ext4");
            assert!(uuid.is_some_and(|u| u.len() == 36));
        }
        other => panic!("after mkfs: {other:?}"),
    }
}

#[test]
fn probe_of_detached_device_is_never_blank() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("d.img"), 16 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    let detached = dev.0;
    drop(dev);
    // An unconfigured loop device has size 0: blkid alone would say "nothing found".
    match fs::probe(&detached.path()) {
        Err(fs::FsError::Unprobeable { .. }) => {}
        // A test running in parallel may have grabbed the freed device.
        Ok(_) if detached.backing_file().is_some() => {}
        other => panic!("probe of a detached device: {other:?}"),
    }
}

#[test]
fn xfs_grows_online() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    // mkfs.xfs refuses filesystems below 300 MiB.
    let image = sparse_file(&dir.path().join("x.img"), 320 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Xfs, &[] as &[&str]).unwrap();
    assert!(matches!(fs::probe(&dev.path()).unwrap(),
        Probe::Filesystem { fs_type, .. } if fs_type == "xfs"));

    let mnt = MountGuard::dir(dir.path().join("mnt"));
    mount::mount_fs(
        &dev.path(),
        &mnt.0,
        "xfs",
        haina_sys::MountFlags::empty(),
        "",
    )
    .unwrap();
    let before = fs::statvfs_usage(&mnt.0).unwrap();

    sparse_file(&image, 512 * MIB);
    assert_eq!(loopdev::refresh_capacity(&dev.0).unwrap(), 512 * MIB);
    fs::grow(&dev.path(), &mnt.0, FsType::Xfs).unwrap();
    let after = fs::statvfs_usage(&mnt.0).unwrap();
    assert!(
        after.bytes_total > before.bytes_total + 150 * MIB,
        "{before:?} -> {after:?}"
    );
    assert!(after.bytes_available <= after.bytes_total);
    assert!(after.inodes_free <= after.inodes_total);
}

#[test]
fn ext4_grows_online() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("e.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Ext4, &[] as &[&str]).unwrap();
    let mnt = MountGuard::dir(dir.path().join("mnt"));
    mount::mount_fs(
        &dev.path(),
        &mnt.0,
        "ext4",
        haina_sys::MountFlags::empty(),
        "",
    )
    .unwrap();
    let before = fs::statvfs_usage(&mnt.0).unwrap();

    sparse_file(&image, 128 * MIB);
    loopdev::refresh_capacity(&dev.0).unwrap();
    if !has_capability(CAP_SYS_RESOURCE) {
        // The ext4 resize ioctl needs CAP_SYS_RESOURCE; the error must say what failed.
        let err = fs::grow(&dev.path(), &mnt.0, FsType::Ext4).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("resize2fs /dev/loop") && msg.contains("Permission denied"),
            "{msg}"
        );
        eprintln!("skipping ext4 growth check: no CAP_SYS_RESOURCE ({msg})");
        return;
    }
    fs::grow(&dev.path(), &mnt.0, FsType::Ext4).unwrap();
    let after = fs::statvfs_usage(&mnt.0).unwrap();
    assert!(
        after.bytes_total > before.bytes_total + 50 * MIB,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn freeze_blocks_writes_until_thaw() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("f.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Ext4, &[] as &[&str]).unwrap();
    let mnt = MountGuard::dir(dir.path().join("mnt"));
    mount::mount_fs(
        &dev.path(),
        &mnt.0,
        "ext4",
        haina_sys::MountFlags::empty(),
        "",
    )
    .unwrap();

    let frozen = FreezeGuard::freeze(&mnt.0).unwrap();
    // Freezing twice is EBUSY.
    assert!(matches!(fs::freeze(&mnt.0),
        Err(fs::FsError::Syscall { errno, .. }) if errno == haina_sys::Errno::BUSY));

    let (tx, rx) = mpsc::channel();
    let file = mnt.0.join("during-freeze");
    let writer = std::thread::spawn(move || {
        std::fs::write(&file, b"data").unwrap();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "write completed on a frozen filesystem"
    );
    frozen.thaw().unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("write finishes after thaw");
    writer.join().unwrap();

    // Thawing a thawed filesystem is fine, twice.
    fs::thaw(&mnt.0).unwrap();
    fs::thaw(&mnt.0).unwrap();
    // The guard thaws on drop.
    drop(FreezeGuard::freeze(&mnt.0).unwrap());
    std::fs::write(mnt.0.join("after"), b"ok").unwrap();
}
