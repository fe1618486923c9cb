//! The size a filesystem believes it has, read from its superblock.
//!
//! Staging compares it with the device size to decide, without spawning a
//! tool, whether a restored, cloned or expanded volume needs its
//! filesystem grown.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use haina_sys::fs::FsType;

/// Filesystem size in bytes from a superblock image (`buf` = the first 2 KiB).
pub fn fs_size(fs: FsType, buf: &[u8]) -> Option<u64> {
    let le32 = |o: usize| {
        buf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64)
    };
    let be32 = |o: usize| {
        buf.get(o..o + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as u64)
    };
    let be64 = |o: usize| {
        buf.get(o..o + 8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    match fs {
        FsType::Ext4 => {
            // Superblock at 1024: s_blocks_count_lo @+4, s_log_block_size @+24,
            // s_magic @+56, s_feature_incompat @+96 (64BIT = 0x80), s_blocks_count_hi @+0x150.
            let sb = 1024;
            if buf.get(sb + 56..sb + 58)? != [0x53, 0xEF] {
                return None;
            }
            let lo = le32(sb + 4)?;
            let hi = if le32(sb + 96)? & 0x80 != 0 {
                le32(sb + 0x150)?
            } else {
                0
            };
            let block = 1024u64 << le32(sb + 24)?;
            Some(((hi << 32) | lo) * block)
        }
        FsType::Xfs => {
            // Superblock at 0: "XFSB", sb_blocksize @4 (be32), sb_dblocks @8 (be64).
            if buf.get(0..4)? != b"XFSB" {
                return None;
            }
            Some(be64(8)? * be32(4)?)
        }
    }
}

/// Reads the superblock of `dev` and returns the filesystem size.
pub fn read_fs_size(dev: &Path, fs: FsType) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 2048];
    File::open(dev)?.read_exact_at(&mut buf, 0)?;
    Ok(fs_size(fs, &buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_and_xfs_superblocks() {
        let mut b = vec![0u8; 2048];
        b[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        b[1024 + 4..1024 + 8].copy_from_slice(&262144u32.to_le_bytes());
        b[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        assert_eq!(fs_size(FsType::Ext4, &b), Some(1 << 30));
        b[1024 + 96] = 0x80;
        b[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            fs_size(FsType::Ext4, &b),
            Some(((1u64 << 32) + 262144) * 4096)
        );
        assert_eq!(fs_size(FsType::Xfs, &b), None);

        let mut x = vec![0u8; 2048];
        x[0..4].copy_from_slice(b"XFSB");
        x[4..8].copy_from_slice(&4096u32.to_be_bytes());
        x[8..16].copy_from_slice(&76800u64.to_be_bytes());
        assert_eq!(fs_size(FsType::Xfs, &x), Some(300 << 20));
        assert_eq!(fs_size(FsType::Ext4, &x), None);
    }
}
