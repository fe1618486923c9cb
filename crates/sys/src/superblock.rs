//! What a filesystem's superblock says about it: type, size, UUID, and
//! whether anything can have been written through a mount yet.
//!
//! Staging reads it, without spawning a tool, to decide:
//! - whether a restored, cloned or expanded volume needs its filesystem
//!   grown (size vs device size);
//! - whether a filesystem carrying the UUID this node passed to an mkfs
//!   that was interrupted is still *pristine* (safe to make again) or has
//!   been used since — e.g. finished and mounted by another node of a
//!   shared pool, which must never be reformatted.
//!
//! Pristine means: ext4 never mounted read-write (`s_mnt_count == 0` and
//! `s_mtime == 0`; the kernel commits both to disk at every read-write
//! mount), or xfs whose mkfs has not finished (`sb_inprogress != 0`).

use crate::fs::FsType;

/// How much of the device [`parse`] needs.
pub const READ_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub fs: FsType,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Lower-case, hyphenated.
    pub uuid: String,
    pub pristine: bool,
}

/// Parses the first [`READ_LEN`] bytes of a device; None if they hold
/// neither an ext4 nor an xfs superblock.
pub fn parse(buf: &[u8]) -> Option<Superblock> {
    ext4(buf).or_else(|| xfs(buf))
}

fn le16(b: &[u8], o: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?) as u64)
}
fn le32(b: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn be32(b: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn be64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

fn uuid(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

fn ext4(buf: &[u8]) -> Option<Superblock> {
    // Superblock at 1024: s_blocks_count_lo @+4, s_log_block_size @+24,
    // s_mtime @+44, s_mnt_count @+52, s_magic @+56, s_feature_incompat @+96
    // (64BIT = 0x80), s_uuid @+104, s_blocks_count_hi @+0x150.
    let sb = 1024;
    if buf.get(sb + 56..sb + 58)? != [0x53, 0xEF] {
        return None;
    }
    let lo = le32(buf, sb + 4)?;
    let hi = if le32(buf, sb + 96)? & 0x80 != 0 {
        le32(buf, sb + 0x150)?
    } else {
        0
    };
    let block = 1024u64 << le32(buf, sb + 24)?.min(16);
    Some(Superblock {
        fs: FsType::Ext4,
        size: ((hi << 32) | lo).saturating_mul(block),
        uuid: uuid(buf.get(sb + 104..sb + 120)?),
        pristine: le16(buf, sb + 52)? == 0 && le32(buf, sb + 44)? == 0,
    })
}

fn xfs(buf: &[u8]) -> Option<Superblock> {
    // Superblock at 0: "XFSB", sb_blocksize @4 (be32), sb_dblocks @8 (be64),
    // sb_uuid @32, sb_inprogress @126 (u8).
    if buf.get(0..4)? != b"XFSB" {
        return None;
    }
    Some(Superblock {
        fs: FsType::Xfs,
        size: be64(buf, 8)?.saturating_mul(be32(buf, 4)?),
        uuid: uuid(buf.get(32..48)?),
        pristine: *buf.get(126)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_superblock() {
        let mut b = vec![0u8; READ_LEN];
        b[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        b[1024 + 4..1024 + 8].copy_from_slice(&262144u32.to_le_bytes());
        b[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        for (i, x) in (0u8..16).enumerate() {
            b[1024 + 104 + i] = x;
        }
        let sb = parse(&b).unwrap();
        assert_eq!(sb.fs, FsType::Ext4);
        assert_eq!(sb.size, 1 << 30);
        assert_eq!(sb.uuid, "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert!(sb.pristine);
        b[1024 + 52] = 1; // mounted once
        assert!(!parse(&b).unwrap().pristine);
        b[1024 + 52] = 0;
        b[1024 + 44] = 7; // s_mtime set
        assert!(!parse(&b).unwrap().pristine);
        b[1024 + 96] = 0x80;
        b[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse(&b).unwrap().size, ((1u64 << 32) + 262144) * 4096);
    }

    #[test]
    fn xfs_superblock() {
        let mut x = vec![0u8; READ_LEN];
        x[0..4].copy_from_slice(b"XFSB");
        x[4..8].copy_from_slice(&4096u32.to_be_bytes());
        x[8..16].copy_from_slice(&76800u64.to_be_bytes());
        x[32] = 0xab;
        let sb = parse(&x).unwrap();
        assert_eq!((sb.fs, sb.size), (FsType::Xfs, 300 << 20));
        assert!(sb.uuid.starts_with("ab000000-"));
        assert!(!sb.pristine);
        x[126] = 1;
        assert!(parse(&x).unwrap().pristine);
        assert_eq!(parse(&[0u8; READ_LEN]), None);
        assert_eq!(parse(&[0u8; 10]), None);
    }
}
