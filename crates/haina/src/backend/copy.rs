//! Copying image files without paying for what is not there.
//!
//! - **reflink** (`FICLONE`, xfs with reflink=1, btrfs): the copy shares
//!   every block with its source, costs constant time and no space until
//!   blocks diverge.
//! - **sparse**: walk the data extents with `SEEK_DATA`/`SEEK_HOLE` and copy
//!   only those with `copy_file_range` (which the filesystem may itself
//!   offload); holes stay holes.
//!
//! A pool probes once which method its filesystem supports.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use rustix::fs::SeekFrom;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reflink => "reflink",
            Self::Sparse => "sparse",
        }
    }

    /// Tries a reflink between two empty scratch files in `dir`: FICLONE of
    /// an empty file succeeds exactly where reflinks work (EOPNOTSUPP on
    /// ext4 or xfs without reflink=1), and writes no data, so the probe
    /// needs no free blocks (creating two inodes can still fail on a full
    /// filesystem: the caller decides what to do then).
    pub fn probe(dir: &Path) -> io::Result<Self> {
        let a = dir.join(".reflink-probe-a");
        let b = dir.join(".reflink-probe-b");
        let result = (|| {
            File::create(&a)?;
            let src = File::open(&a)?;
            let dst = File::create(&b)?;
            Ok(match rustix::fs::ioctl_ficlone(&dst, &src) {
                Ok(()) => Self::Reflink,
                Err(_) => Self::Sparse,
            })
        })();
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        result
    }
}

/// Copies `src` to a new file `dst` (created or truncated) with `method`,
/// then fsyncs it. The copy has the same length as the source.
pub fn copy_file(src: &Path, dst: &Path, method: CopyMethod) -> io::Result<()> {
    let from = File::open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    match method {
        CopyMethod::Reflink => rustix::fs::ioctl_ficlone(&to, &from)?,
        CopyMethod::Sparse => sparse_copy(&from, &to)?,
    }
    to.sync_all()
}

fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data))?.min(len);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = (hole - off_in) as usize;
            let n =
                rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank during copy",
                ));
            }
        }
        pos = hole;
    }
    to.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_leaves_nothing_and_tmpfs_has_no_reflink() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        assert_eq!(CopyMethod::probe(dir.path()).unwrap(), CopyMethod::Sparse);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(io::SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[7u8; 65536]).unwrap();
        f.seek(io::SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        f.sync_all().unwrap();
        let dst = dir.path().join("dst.img");
        copy_file(&src, &dst, CopyMethod::Sparse).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        File::open(&src).unwrap().read_to_end(&mut a).unwrap();
        File::open(&dst).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b, "contents differ");
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < 4 << 20,
            "copy filled holes: {blocks} bytes allocated"
        );
    }
}
