//! Space accounting for a local pool: what every volume may still write,
//! and whether a new promise fits beside it.
//!
//! Images are sparse, so a volume takes pool space only as it writes. A
//! write into a block the image owns exclusively overwrites it in place; a
//! write anywhere else (a hole, or on a reflink pool an extent FIEMAP
//! reports as shared with a snapshot or a clone) allocates. So every volume
//! has a *demand*, the space it may still take:
//!
//! ```text
//! demand(volume) = size − owned        owned = exclusively allocated bytes
//! available      = (free − margin) × overcommit − Σ demand − in-flight reservations
//! ```
//!
//! where `free` is what the pool filesystem gives an unprivileged writer
//! (`f_bavail`: haina runs without CAP_SYS_RESOURCE, and ext4's reserved
//! blocks are not ours) and `margin` keeps room for what is not volume
//! data (records, publications, extent-tree blocks of fragmented images).
//! A new volume, clone or restore costs its capacity (a clone on a reflink
//! pool also the blocks of its source that become shared); a snapshot costs
//! the source's owned blocks (reflink: they become shared) or its allocated
//! bytes (sparse copy); an expansion costs its growth. Without overcommit
//! (the default) a volume therefore never loses a write because another
//! volume filled the pool.
//!
//! Kernel quirks: `st_blocks` also counts extent-tree blocks, so `owned` is a
//! slight over-estimate on a sparse pool (the margin covers it); FIEMAP is
//! asked without FIEMAP_FLAG_SYNC (no flush per stat), and delayed-allocation
//! extents count as owned, as statfs already counts them as used.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::volume::{GIB, MIB};

/// One image's use of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageUse {
    /// The image's length: the volume's size.
    pub size: u64,
    /// Bytes allocated to the image (`st_blocks`), shared or not.
    pub allocated: u64,
    /// Bytes allocated to this image alone, at most `size`.
    pub owned: u64,
}

impl ImageUse {
    /// What the volume may still take from the pool.
    pub fn demand(&self) -> u64 {
        self.size.saturating_sub(self.owned)
    }
}

/// Measures an image. With `shared_aware`, extents shared with another file
/// (reflink) are not owned; otherwise every allocated byte is.
pub fn image_use(path: &Path, shared_aware: bool) -> io::Result<ImageUse> {
    let f = File::open(path)?;
    let meta = f.metadata()?;
    let allocated = meta.blocks() * 512;
    let owned = if shared_aware {
        exclusive_bytes(&f)?
    } else {
        allocated
    };
    Ok(ImageUse {
        size: meta.len(),
        allocated,
        owned: owned.min(meta.len()),
    })
}

/// The pool as a decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    /// Free bytes for an unprivileged writer (`f_bavail × f_frsize`).
    pub free: u64,
    /// The filesystem's data size (`f_blocks × f_frsize`).
    pub total: u64,
    /// Σ demand of the pool's volumes.
    pub demand: u64,
    /// Space promised to operations in flight.
    pub reserved: u64,
}

/// Room kept free for what is not volume data: 1/128 of the filesystem,
/// at least 16 MiB and at most 8 GiB.
pub fn margin(total: u64) -> u64 {
    (total / 128).clamp(16 * MIB, 8 * GIB)
}

fn scale(bytes: u64, ratio: f64) -> u64 {
    if ratio <= 1.0 {
        bytes
    } else {
        // f64 keeps 53 bits: exact to well under a MiB at these sizes.
        (bytes as f64 * ratio).min(u64::MAX as f64) as u64
    }
}

impl PoolSpace {
    /// What new promises may take right now.
    pub fn available(&self, overcommit: f64) -> u64 {
        scale(self.free.saturating_sub(margin(self.total)), overcommit)
            .saturating_sub(self.demand)
            .saturating_sub(self.reserved)
    }

    /// The largest volume this pool could ever hold, were it empty.
    pub fn ever(&self, overcommit: f64) -> u64 {
        scale(self.total.saturating_sub(margin(self.total)), overcommit)
    }
}

/// Whether a promise of `cost` bytes (for an object of `size` bytes) fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fits,
    /// Not now: only `available` bytes are free for new promises.
    NotNow {
        available: u64,
    },
    /// Never: the object is larger than the pool could ever hold.
    Never {
        ever: u64,
    },
}

pub fn admit(space: &PoolSpace, overcommit: f64, cost: u64, size: u64) -> Verdict {
    let ever = space.ever(overcommit);
    if size > ever {
        return Verdict::Never { ever };
    }
    let available = space.available(overcommit);
    if cost > available {
        return Verdict::NotNow { available };
    }
    Verdict::Fits
}

// ---- FIEMAP (linux/fiemap.h)

const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Extents asked for per call.
const BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; BATCH],
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`, whose fixed header is 32 bytes.
const FS_IOC_FIEMAP: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<[u8; 32]>(b'f', 11);

/// Bytes of `f` in extents not shared with any other file.
fn exclusive_bytes(f: &File) -> io::Result<u64> {
    let mut map = Box::new(Fiemap {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: BATCH as u32,
        reserved: 0,
        extents: [FiemapExtent::default(); BATCH],
    });
    let mut start = 0u64;
    let mut owned = 0u64;
    loop {
        map.start = start;
        map.length = u64::MAX - start;
        map.flags = 0;
        map.mapped_extents = 0;
        map.extent_count = BATCH as u32;
        // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed
        // by `extent_count` extents, which is exactly `Fiemap`.
        unsafe {
            let req = rustix::ioctl::Updater::<FS_IOC_FIEMAP, Fiemap>::new(&mut map);
            rustix::ioctl::ioctl(f, req)?;
        }
        let n = (map.mapped_extents as usize).min(BATCH);
        if n == 0 {
            return Ok(owned);
        }
        for e in &map.extents[..n] {
            if e.flags & FIEMAP_EXTENT_SHARED == 0 {
                owned += e.length;
            }
        }
        let last = map.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(owned);
        }
        start = last.logical + last.length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn space(free: u64, total: u64, demand: u64, reserved: u64) -> PoolSpace {
        PoolSpace {
            free,
            total,
            demand,
            reserved,
        }
    }

    #[test]
    fn fits_only_what_leaves_every_volume_its_demand() {
        let gib = GIB;
        // 100 GiB filesystem (margin 800 MiB), 50 GiB free, 30 GiB promised.
        let s = space(50 * gib, 100 * gib, 30 * gib, 0);
        assert_eq!(margin(100 * gib), 800 * MIB);
        assert_eq!(s.available(1.0), 50 * gib - 800 * MIB - 30 * gib);
        let room = s.available(1.0);
        assert_eq!(admit(&s, 1.0, room, room), Verdict::Fits);
        assert_eq!(
            admit(&s, 1.0, room + 1, room + 1),
            Verdict::NotNow { available: room }
        );
        // In-flight reservations count like demand.
        let busy = space(50 * gib, 100 * gib, 30 * gib, 10 * gib);
        assert_eq!(busy.available(1.0), room - 10 * gib);
        // Larger than the pool could ever hold: never.
        assert_eq!(
            admit(&s, 1.0, 0, 100 * gib),
            Verdict::Never {
                ever: 100 * gib - 800 * MIB
            }
        );
        // Promised more than is free (e.g. after an operator filled the
        // filesystem): nothing fits, and nothing underflows.
        let over = space(gib, 100 * gib, 30 * gib, 0);
        assert_eq!(over.available(1.0), 0);
        assert_eq!(admit(&over, 1.0, 1, 1), Verdict::NotNow { available: 0 });
    }

    #[test]
    fn overcommit_scales_free_space_and_the_ceiling() {
        let s = space(10 * GIB, 20 * GIB, 5 * GIB, 0);
        let m = margin(20 * GIB);
        assert_eq!(s.available(1.0), 10 * GIB - m - 5 * GIB);
        assert_eq!(s.available(1.5), (10 * GIB - m) * 3 / 2 - 5 * GIB);
        assert_eq!(s.ever(2.0), (20 * GIB - m) * 2);
        // 14 GiB fits only when the operator opted in.
        assert_eq!(admit(&s, 2.0, 14 * GIB, 14 * GIB), Verdict::Fits);
        assert!(matches!(
            admit(&s, 1.0, 14 * GIB, 14 * GIB),
            Verdict::NotNow { .. }
        ));
        // 30 GiB: never without overcommit, not now with it.
        assert!(matches!(
            admit(&s, 1.0, 30 * GIB, 30 * GIB),
            Verdict::Never { .. }
        ));
        assert!(matches!(
            admit(&s, 2.0, 30 * GIB, 30 * GIB),
            Verdict::NotNow { .. }
        ));
        // A ratio below 1 is never "more careful than none": it is none.
        assert_eq!(s.available(0.5), s.available(1.0));
    }

    #[test]
    fn margin_is_bounded() {
        assert_eq!(margin(0), 16 * MIB);
        assert_eq!(margin(256 * MIB), 16 * MIB);
        assert_eq!(margin(1 << 50), 8 * GIB);
    }

    #[test]
    fn sparse_image_demand_is_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.seek(SeekFrom::Start(8 * MIB)).unwrap();
        f.write_all(&vec![1u8; MIB as usize]).unwrap();
        f.sync_all().unwrap();
        for shared_aware in [false, true] {
            let u = image_use(&p, shared_aware).unwrap();
            assert_eq!(u.size, 64 * MIB);
            assert!(u.owned >= MIB && u.owned < 2 * MIB, "{u:?}");
            assert_eq!(u.demand(), 64 * MIB - u.owned);
        }
        let empty = dir.path().join("e.img");
        File::create(&empty).unwrap().set_len(GIB).unwrap();
        let u = image_use(&empty, true).unwrap();
        assert_eq!((u.owned, u.demand()), (0, GIB));
    }
}
