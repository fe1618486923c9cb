//! Mounts against the real kernel (root only), checked through mountinfo.

mod common;

use std::path::Path;

use common::{LoopGuard, MountGuard, root_or_skip, scratch, sparse_file};
use haina_sys::fs::{self, FsType};
use haina_sys::loopdev::AttachOptions;
use haina_sys::mount::{self, parse_mount_options};
use haina_sys::mountinfo::MountTable;
use haina_sys::{Errno, MountFlags};

const MIB: u64 = 1 << 20;

#[test]
fn stage_bind_readonly_unmount() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let root = dir.path().canonicalize().unwrap();
    let image = sparse_file(&root.join("m.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Ext4, &[] as &[&str]).unwrap();

    // Staging mount with user options; the name has a space to exercise escaping.
    let staging = MountGuard::dir(root.join("staging dir"));
    let (flags, data) = parse_mount_options(&["noatime,nodev", "nosuid", "errors=remount-ro"]);
    mount::mount_fs(&dev.path(), &staging.0, "ext4", flags, &data).unwrap();
    let table = MountTable::read().unwrap();
    let entry = table.at(&staging.0).expect("staging mount in mountinfo");
    assert_eq!(entry.fs_type, "ext4");
    assert_eq!(entry.source, dev.path().to_str().unwrap());
    assert_eq!((entry.major, entry.minor), dev.0.dev_t().unwrap());
    for opt in ["rw", "noatime", "nodev", "nosuid"] {
        assert!(
            entry.mount_options.iter().any(|o| o == opt),
            "{opt}: {entry:?}"
        );
    }
    assert!(entry.super_options.iter().any(|o| o == "errors=remount-ro"));

    // Bind a subdirectory, then make only the bind read-only.
    std::fs::create_dir(staging.0.join("sub")).unwrap();
    let publish = MountGuard::dir(root.join("publish"));
    mount::bind(&staging.0.join("sub"), &publish.0).unwrap();
    mount::remount_bind_readonly(&publish.0).unwrap();

    let table = MountTable::read().unwrap();
    let bind = table.at(&publish.0).expect("bind mount");
    assert_eq!(bind.root, Path::new("/sub"));
    assert!(bind.is_read_only());
    assert!(
        bind.mount_options.iter().any(|o| o == "nodev"),
        "remount kept nodev: {bind:?}"
    );
    assert!(!table.at(&staging.0).unwrap().is_read_only());
    let (major, minor) = dev.0.dev_t().unwrap();
    assert_eq!(table.mounts_of_dev(major, minor).len(), 2);
    let err = std::fs::write(publish.0.join("x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
    std::fs::write(staging.0.join("sub/y"), b"y").unwrap();
    assert_eq!(std::fs::read(publish.0.join("y")).unwrap(), b"y");

    mount::unmount(&publish.0).unwrap();
    mount::unmount(&staging.0).unwrap();
    let table = MountTable::read().unwrap();
    assert!(!table.is_mount_point(&publish.0));
    assert!(!table.is_mount_point(&staging.0));
    assert!(table.mounts_of_dev(major, minor).is_empty());

    // Unmounting what is not mounted is EINVAL, and names the target.
    let err = mount::unmount(&staging.0).unwrap_err();
    assert_eq!(err.errno, Errno::INVAL);
    assert!(err.to_string().contains("staging dir"), "{err}");
}

#[test]
fn busy_unmount_then_lazy() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let root = dir.path().canonicalize().unwrap();
    let image = sparse_file(&root.join("b.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Ext4, &[] as &[&str]).unwrap();
    let mnt = MountGuard::dir(root.join("mnt"));
    mount::mount_fs(&dev.path(), &mnt.0, "ext4", MountFlags::empty(), "").unwrap();

    let held = std::fs::File::create(mnt.0.join("held")).unwrap();
    let err = mount::unmount(&mnt.0).unwrap_err();
    assert_eq!(err.errno, Errno::BUSY, "{err}");
    mount::unmount_lazy(&mnt.0).unwrap();
    assert!(!MountTable::read().unwrap().is_mount_point(&mnt.0));
    drop(held);
}

#[test]
fn bad_fs_option_is_reported_with_detail() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let root = dir.path().canonicalize().unwrap();
    let image = sparse_file(&root.join("o.img"), 64 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    fs::mkfs(&dev.path(), FsType::Ext4, &[] as &[&str]).unwrap();
    let mnt = MountGuard::dir(root.join("mnt"));
    let err = mount::mount_fs(
        &dev.path(),
        &mnt.0,
        "ext4",
        MountFlags::empty(),
        "bogus_option",
    )
    .unwrap_err();
    assert_eq!(err.errno, Errno::INVAL);
    let msg = err.to_string();
    assert!(
        msg.contains("bogus_option") && msg.contains("/dev/loop"),
        "{msg}"
    );
    assert!(!MountTable::read().unwrap().is_mount_point(&mnt.0));
}
