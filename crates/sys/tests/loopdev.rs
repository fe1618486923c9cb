//! Loop devices against the real kernel (root only).

mod common;

use std::path::PathBuf;

use common::{LoopGuard, root_or_skip, scratch, sparse_file};
use haina_sys::loopdev::{self, AttachOptions, LoopError};

const MIB: u64 = 1 << 20;

#[test]
fn lifecycle_attach_find_adopt_grow_detach() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("vol.img"), 64 * MIB);
    let opts = AttachOptions {
        direct_io: true,
        read_only: false,
    };

    let (dev, new) = loopdev::attach_or_find(&image, &opts).unwrap();
    let _guard = LoopGuard(dev, image.canonicalize().unwrap());
    assert!(new);
    assert!(dev.path().exists());
    assert_eq!(dev.backing_file(), Some(image.canonicalize().unwrap()));
    assert_eq!(dev.size_bytes().unwrap(), 64 * MIB);
    assert!(dev.direct_io(), "dio flag visible in sysfs");
    assert!(!dev.read_only());
    let (major, _) = dev.dev_t().unwrap();
    assert_eq!(major, 7);
    assert_eq!(
        haina_sys::fs::block_device_size(&dev.path()).unwrap(),
        64 * MIB
    );

    assert_eq!(loopdev::find_by_backing_file(&image).unwrap(), vec![dev]);
    assert!(
        loopdev::list()
            .unwrap()
            .contains(&(dev, image.canonicalize().unwrap()))
    );

    // A restarted plugin re-adopts instead of attaching a second device.
    let (again, new) = loopdev::attach_or_find(&image, &opts).unwrap();
    assert_eq!((again, new), (dev, false));
    assert_eq!(loopdev::find_by_backing_file(&image).unwrap().len(), 1);

    sparse_file(&image, 96 * MIB);
    assert_eq!(loopdev::refresh_capacity(&dev).unwrap(), 96 * MIB);
    assert_eq!(dev.size_bytes().unwrap(), 96 * MIB);

    assert_eq!(loopdev::detach_by_backing_file(&image).unwrap(), vec![dev]);
    assert!(loopdev::find_by_backing_file(&image).unwrap().is_empty());
    // Releasing an image that has no device is success (idempotent unstage).
    assert!(loopdev::detach_by_backing_file(&image).unwrap().is_empty());
}

#[test]
fn detach_by_index() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("idx.img"), 8 * MIB);
    let dev = loopdev::attach(&image, &AttachOptions::default()).unwrap();
    let _guard = LoopGuard(dev, image.canonicalize().unwrap());
    loopdev::detach(&dev).unwrap();
    assert!(loopdev::find_by_backing_file(&image).unwrap().is_empty());
}

#[test]
fn detach_of_busy_device_is_deferred() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("busy.img"), 8 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    let holder = std::fs::File::open(dev.path()).unwrap();
    // The kernel only sets autoclear while someone holds the device open...
    assert_eq!(
        loopdev::detach_by_backing_file(&image).unwrap(),
        vec![dev.0]
    );
    assert_eq!(loopdev::find_by_backing_file(&image).unwrap(), vec![dev.0]);
    // ...and tears it down on the last close.
    drop(holder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loopdev::find_by_backing_file(&image).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "autoclear never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn read_only_and_buffered() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("ro.img"), 8 * MIB);
    let dev = LoopGuard::attach(
        &image,
        AttachOptions {
            direct_io: false,
            read_only: true,
        },
    );
    assert!(dev.0.read_only());
    assert!(!dev.0.direct_io());
    // The kernel lets a read-only disk be opened for writing but refuses the write.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev.path())
        .unwrap();
    let err = std::io::Write::write_all(&mut f, &[1u8; 4096]).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(haina_sys::Errno::PERM.raw_os_error()),
        "{err}"
    );
}

#[test]
fn missing_image_is_a_backing_error() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let missing = dir.path().join("nope.img");
    assert!(loopdev::find_by_backing_file(&missing).unwrap().is_empty());
    match loopdev::attach_or_find(&missing, &AttachOptions::default()) {
        Err(LoopError::Backing { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deleted_image_is_not_found_by_path() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let image = sparse_file(&dir.path().join("gone.img"), 8 * MIB);
    let dev = LoopGuard::attach(&image, AttachOptions::default());
    std::fs::remove_file(&image).unwrap();
    // Same name, different file: the old device does not serve it.
    sparse_file(&image, 8 * MIB);
    assert_eq!(dev.0.backing_file(), Some(image.canonicalize().unwrap()));
    assert!(loopdev::find_by_backing_file(&image).unwrap().is_empty());
    // A teardown still finds the stale device by its old path, and clears it.
    assert_eq!(
        loopdev::find_any_by_backing_file(&image).unwrap(),
        vec![(dev.0, true)]
    );
    assert_eq!(
        loopdev::detach_by_backing_file(&image).unwrap(),
        vec![dev.0]
    );
    assert!(dev.0.backing_file().is_none());
}

#[test]
fn concurrent_attaches_get_distinct_devices() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch();
    let images: Vec<PathBuf> = (0..10)
        .map(|i| sparse_file(&dir.path().join(format!("c{i}.img")), 4 * MIB))
        .collect();
    let guards: Vec<LoopGuard> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|img| s.spawn(move || LoopGuard::attach(img, AttachOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut indexes: Vec<u32> = guards.iter().map(|g| g.0.index).collect();
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 10);
    for (g, img) in guards.iter().zip(&images) {
        assert_eq!(loopdev::find_by_backing_file(img).unwrap(), vec![g.0]);
    }
}
