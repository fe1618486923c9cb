//! librbd's client-side (LUKS) encryption: [`EncryptionFormat`],
//! [`EncryptionAlgorithm`], and the safe calls behind
//! [`Image::encryption_format`](crate::Image::encryption_format) and
//! [`Image::encryption_load`](crate::Image::encryption_load).
//!
//! What librbd 16.2 (Pacific) does, measured on a 16.2.15 cluster (see
//! `tests/ceph.rs`, `encryption_format_load_and_clone`):
//! - `format` writes a LUKS1 or LUKS2 header at the start of a flat image
//!   (16 MiB for LUKS2, 4 MiB for LUKS1), whose key slot opens with the
//!   passphrase, and loads the encryption on that handle. It runs the
//!   key derivation's benchmark: ~5 s (LUKS1) to ~8-13 s (LUKS2, argon2id,
//!   ~400 MB of memory) on a small machine;
//! - `load` opens the header with the passphrase (~2 s); a wrong one fails
//!   with EPERM, a header of the other format (or none) with EINVAL. From
//!   then on, I/O through the handle is decrypted/encrypted (any size: a
//!   512-byte write is read-modify-written) and the handle's size is the
//!   data area's (the image's size minus the header);
//! - a handle without encryption loaded reads and writes the raw bytes
//!   (header and ciphertext); a resize through it sets the raw size, even
//!   when librbd forwards it to a lock owner that has encryption loaded;
//! - a clone v2 of a snapshot of an encrypted image inherits the header:
//!   it opens with the same passphrase, reads the parent's data decrypted,
//!   and copy-up copies the parent's ciphertext. (A clone v1 needs a
//!   protected snapshot, so `rbd clone` of an unprotected one fails with
//!   EINVAL whether the image is encrypted or not.) A clone cannot be
//!   formatted with a header of its own: layered encryption came in Quincy;
//! - hazard: a flatten that librbd forwards to an exclusive-lock owner
//!   with encryption loaded copies the parent up *through* the encryption,
//!   encrypting the header a second time: the image never opens again.
//!   Flatten an encrypted clone only while nobody has it open.
//!
//! The passphrase reaches librbd through a pointer and a length in the
//! options struct, straight from the caller's [`Secret`]: never a C string
//! copy, never a file.

use std::ffi::c_int;
use std::fmt;
use std::str::FromStr;

use crate::ffi;
use crate::secret::Secret;

/// The on-disk format of an encrypted image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionFormat {
    Luks1,
    Luks2,
}

impl EncryptionFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Luks1 => "luks1",
            Self::Luks2 => "luks2",
        }
    }

    pub(crate) fn raw(self) -> c_int {
        match self {
            Self::Luks1 => ffi::RBD_ENCRYPTION_FORMAT_LUKS1,
            Self::Luks2 => ffi::RBD_ENCRYPTION_FORMAT_LUKS2,
        }
    }
}

impl fmt::Display for EncryptionFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EncryptionFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "luks1" => Ok(Self::Luks1),
            "luks2" => Ok(Self::Luks2),
            other => Err(format!("{other:?} is not one of luks1, luks2")),
        }
    }
}

/// The cipher of a new header (AES in XTS mode, as librbd uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncryptionAlgorithm {
    Aes128,
    #[default]
    Aes256,
}

impl EncryptionAlgorithm {
    pub(crate) fn raw(self) -> c_int {
        match self {
            Self::Aes128 => ffi::RBD_ENCRYPTION_ALGORITHM_AES128,
            Self::Aes256 => ffi::RBD_ENCRYPTION_ALGORITHM_AES256,
        }
    }
}

/// The options struct for one call, pointing into `passphrase` (which
/// outlives the call; librbd copies what it needs).
pub(crate) fn luks_options(
    alg: EncryptionAlgorithm,
    passphrase: &Secret,
) -> ffi::RbdEncryptionLuksOptions {
    let bytes = passphrase.expose().as_bytes();
    ffi::RbdEncryptionLuksOptions {
        alg: alg.raw(),
        passphrase: bytes.as_ptr().cast(),
        passphrase_size: bytes.len(),
    }
}

/// The magic at offset 0 of a LUKS1 or LUKS2 header (`LUKS\xba\xbe`).
pub const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// The format a header starts with, from its first bytes (raw, without
/// encryption loaded): the 6-byte magic and the big-endian version at 6.
pub fn detect_format(head: &[u8]) -> Option<EncryptionFormat> {
    if head.len() < 8 || &head[..6] != LUKS_MAGIC {
        return None;
    }
    match u16::from_be_bytes([head[6], head[7]]) {
        1 => Some(EncryptionFormat::Luks1),
        2 => Some(EncryptionFormat::Luks2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        for f in [EncryptionFormat::Luks1, EncryptionFormat::Luks2] {
            assert_eq!(f.as_str().parse::<EncryptionFormat>().unwrap(), f);
        }
        assert!("luks".parse::<EncryptionFormat>().is_err());
        let mut h = LUKS_MAGIC.to_vec();
        h.extend([0, 2]);
        assert_eq!(detect_format(&h), Some(EncryptionFormat::Luks2));
        h[7] = 1;
        assert_eq!(detect_format(&h), Some(EncryptionFormat::Luks1));
        h[7] = 3;
        assert_eq!(detect_format(&h), None);
        assert_eq!(detect_format(b"\0\0\0\0\0\0\0\0"), None);
        assert_eq!(detect_format(b"LUKS"), None);
    }

    #[test]
    fn options_point_at_the_passphrase() {
        let p = Secret::new("correct horse");
        let o = luks_options(EncryptionAlgorithm::Aes256, &p);
        assert_eq!(o.passphrase_size, 13);
        assert_eq!(o.passphrase, p.expose().as_ptr().cast());
        assert_eq!(o.alg, ffi::RBD_ENCRYPTION_ALGORITHM_AES256);
    }
}
