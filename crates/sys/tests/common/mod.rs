//! Shared fixtures for the root-only integration tests: scratch dirs, sparse
//! images and Drop guards that detach and unmount even when a test fails.
//! Declare guards in the order scratch → loop → mount so they drop in reverse.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use haina_sys::loopdev::{self, AttachOptions, LoopDevice};
use haina_sys::{mount, mountinfo::MountTable};

/// True if the test may touch real devices; prints why it skips otherwise.
pub fn root_or_skip() -> bool {
    let root = haina_sys::is_root();
    if !root {
        eprintln!("skipping: needs root for loop devices and mounts");
    }
    root
}

/// Whether this process holds capability `bit` (see capabilities(7)), read
/// from `CapEff` in /proc/self/status. Sandboxes may drop some even for root.
pub fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

/// CAP_SYS_RESOURCE: ext4 online resize needs it.
pub const CAP_SYS_RESOURCE: u32 = 24;

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haina-sys-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Creates (or resizes) a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> PathBuf {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("create image");
    f.set_len(size).expect("size image");
    path.to_path_buf()
}

/// A loop device detached on drop, unless it no longer serves our image
/// (a test detached it and a parallel test got the same number).
pub struct LoopGuard(pub LoopDevice, pub PathBuf);

impl LoopGuard {
    pub fn attach(image: &Path, opts: AttachOptions) -> LoopGuard {
        let dev = loopdev::attach(image, &opts).expect("attach");
        LoopGuard(
            dev,
            dev.backing_file()
                .expect("attached device has a backing file"),
        )
    }
    pub fn path(&self) -> PathBuf {
        self.0.path()
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if self.0.backing_file().as_ref() != Some(&self.1) {
            return;
        }
        if let Err(e) = loopdev::detach(&self.0) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A directory that is unmounted (lazily if busy) on drop, as often as
/// something is mounted there.
pub struct MountGuard(pub PathBuf);

impl MountGuard {
    pub fn dir(path: PathBuf) -> MountGuard {
        std::fs::create_dir_all(&path).expect("create mount point");
        MountGuard(path)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..8 {
            match MountTable::read() {
                Ok(t) if t.is_mount_point(&self.0) => {}
                _ => return,
            }
            if mount::unmount(&self.0).is_err() {
                let _ = mount::unmount_lazy(&self.0);
            }
        }
    }
}
