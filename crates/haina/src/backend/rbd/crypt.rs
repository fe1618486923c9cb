//! Encryption at rest for RBD volumes, with librbd's own LUKS encryption
//! (no dm-crypt, which this kernel lacks): a StorageClass with
//! `encrypted: "true"` (and `encryptionFormat: luks1|luks2`, default luks2)
//! gets images whose bytes in RADOS are ciphertext behind a LUKS header.
//!
//! - **Create** formats the new image (`rbd_encryption_format`) with the
//!   passphrase from the CreateVolume secret [`SECRET_PASSPHRASE`], records
//!   the format and the header's size in `haina.encryption` (never the
//!   passphrase), and grows the raw image by the header, so the volume has
//!   the capacity asked for.
//! - **Attach** (NodeStage) finds `haina.encryption` and hands the NodeStage
//!   secret's passphrase to the mounter, which loads the encryption
//!   (`rbd_encryption_load`) and serves the decrypted view: the FUSE server
//!   gets it on the same stdin pipe as the cephx key, rbd-nbd through an
//!   in-memory file ([`crate::attach::nbd`]). krbd cannot load librbd's
//!   encryption and is refused.
//! - **Snapshots** stay clones (clone v2), and so stay encrypted: a clone
//!   inherits its parent's header, opens with the same passphrase, and
//!   copy-up copies ciphertext (measured on 16.2.15; see docs/rbd.md).
//! - **Restores and clones** are clones made flat at once: a full copy of
//!   the ciphertext (same header, same passphrase), marked
//!   `copyMethod: full` in the volume_context. librbd 16.2 fails I/O to an
//!   encrypted clone grown past its parent (EINVAL over the header-sized
//!   range after the parent's end), which a bigger restore or any later
//!   expansion would hit; flat images have no parent. A source and a new
//!   volume must agree on encryption and format: anything else is
//!   INVALID_ARGUMENT, never a silent plain copy.
//!
//! Codes: a missing passphrase is INVALID_ARGUMENT naming the secret key
//! (the request lacks what the call needs); a passphrase that does not
//! open the header is UNAUTHENTICATED naming the volume (like a refused
//! cephx key: retrying with the same secret cannot help).

use std::collections::BTreeMap;

use haina_rbd::{EncryptionAlgorithm, EncryptionFormat, Image, Secret};

use super::meta::{EncryptionRecord, KEY_FLATTENED_FROM};
use crate::error::{Error, Result};
use crate::volume::Secrets;

/// The CSI secret key holding the passphrase (CreateVolume's secrets to
/// format, NodeStageVolume's to unlock).
pub const SECRET_PASSPHRASE: &str = "encryptionPassphrase";
/// StorageClass parameter (and volume_context key): "true" or "false".
pub const PARAM_ENCRYPTED: &str = "encrypted";
/// StorageClass parameter (and volume_context key): luks1 or luks2.
pub const PARAM_FORMAT: &str = "encryptionFormat";
/// volume_context key of an encrypted restore or clone: `full`, since it
/// is a full copy (see [`flatten_new`]).
pub const CONTEXT_COPY_METHOD: &str = "copyMethod";
/// The format of `encrypted: "true"` without `encryptionFormat`.
pub const DEFAULT_FORMAT: EncryptionFormat = EncryptionFormat::Luks2;

/// The encryption a new volume asks for, from its (already validated)
/// volume_context: `None` for a plain volume.
pub fn wanted(context: &BTreeMap<String, String>) -> Result<Option<EncryptionFormat>> {
    if context.get(PARAM_ENCRYPTED).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    match context.get(PARAM_FORMAT) {
        None => Ok(Some(DEFAULT_FORMAT)),
        Some(f) => f
            .parse()
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("parameters.{PARAM_FORMAT}: {e}"))),
    }
}

/// The passphrase a request carries, or INVALID_ARGUMENT naming the secret
/// key and where it comes from (`call` says which request and why).
pub fn passphrase(secrets: &Secrets, call: &str, secret_ref: &str) -> Result<Secret> {
    match secrets.0.get(SECRET_PASSPHRASE) {
        Some(p) if !p.is_empty() => Ok(Secret::new(p.as_str())),
        _ => Err(Error::InvalidArgument(format!(
            "secrets.{SECRET_PASSPHRASE} is required to {call}: the request's secrets carry no \
             {SECRET_PASSPHRASE:?} (add it to the Secret that the StorageClass's \
             csi.storage.k8s.io/{secret_ref}-secret-name names)"
        ))),
    }
}

/// Whether a new volume of encryption `wanted` may be made from a source
/// encrypted as `source` (a restore or a clone is a clone, which inherits
/// its source's header, so the two must agree). `field` and `raw` name the
/// source in the error.
pub fn check_source(
    source: Option<&EncryptionRecord>,
    wanted: Option<EncryptionFormat>,
    field: &str,
    raw: &str,
) -> Result<()> {
    match (source.map(|s| s.format), wanted) {
        (None, None) => Ok(()),
        (Some(have), Some(want)) if have == want => Ok(()),
        (Some(have), None) => Err(Error::InvalidArgument(format!(
            "{field} {raw} is encrypted ({have}) and a copy of it stays encrypted with the same \
             passphrase; set parameters.{PARAM_ENCRYPTED} \"true\" and \
             {PARAM_FORMAT} \"{have}\" to restore or clone it"
        ))),
        (None, Some(_)) => Err(Error::InvalidArgument(format!(
            "{field} {raw} is not encrypted, and a restore or clone shares its source's \
             unencrypted data (librbd 16.2 cannot encrypt a clone); create the volume with \
             parameters.{PARAM_ENCRYPTED} \"false\", or copy the data into a new encrypted \
             volume"
        ))),
        (Some(have), Some(want)) => Err(Error::InvalidArgument(format!(
            "{field} {raw} is encrypted with {have}, but parameters.{PARAM_FORMAT} asks for \
             {want}; a restore or clone keeps its source's header: set \
             {PARAM_FORMAT} \"{have}\""
        ))),
    }
}

/// Formats a new, flat image that holds nothing yet, and returns its
/// record: the header's size is what formatting took off the handle's
/// size (librbd loads the encryption on the formatting handle).
pub fn format(
    img: &Image,
    format: EncryptionFormat,
    passphrase: &Secret,
) -> Result<EncryptionRecord> {
    let what = || format!("formatting {} with {format}", img.name());
    let raw = img.size().map_err(|e| Error::internal(what(), e))?;
    img.encryption_format(format, EncryptionAlgorithm::Aes256, passphrase)
        .map_err(|e| match e {
            haina_rbd::Error::Unsupported { .. } => Error::FailedPrecondition(e.to_string()),
            e => Error::internal(what(), e),
        })?;
    let usable = img.size().map_err(|e| Error::internal(what(), e))?;
    if usable >= raw {
        return Err(Error::internal(
            what(),
            std::io::Error::other(format!(
                "the size did not shrink by a header ({raw} bytes raw, {usable} after)"
            )),
        ));
    }
    Ok(EncryptionRecord {
        format,
        header: raw - usable,
    })
}

/// Makes a new encrypted restore or clone flat (a full copy of its
/// parent's ciphertext, header included) before anyone opens it. Reports
/// how long it took: the cost of an encrypted restore grows with the data.
pub fn flatten_new(img: &Image) -> Result<()> {
    let what = || format!("flattening the encrypted clone {}", img.name());
    let Some(parent) = img.parent_info().map_err(|e| Error::internal(what(), e))? else {
        return Ok(());
    };
    // Recorded first, so a retry after a crash that follows the flatten
    // knows the flat image for the clone it was (its parent link is gone).
    img.metadata_set(KEY_FLATTENED_FROM, &parent.image_name)
        .map_err(|e| Error::internal(what(), e))?;
    let started = std::time::Instant::now();
    img.flatten().map_err(|e| Error::internal(what(), e))?;
    crate::failpoint::hit("rbd-after-flatten")?;
    tracing::info!(
        image = img.name(),
        took_ms = started.elapsed().as_millis() as u64,
        "flattened an encrypted restore/clone (a full copy: librbd 16.2 cannot grow encrypted clones)"
    );
    Ok(())
}

/// The image an incomplete encrypted restore or clone was flattened from,
/// if [`flatten_new`] got that far.
pub fn flattened_from(img: &Image) -> Result<Option<String>> {
    img.metadata_get(KEY_FLATTENED_FROM)
        .map_err(|e| Error::internal(format!("reading the metadata of {}", img.name()), e))
}

/// An encrypted volume may grow only if it is flat (every encrypted volume
/// haina makes is): librbd 16.2 cannot do I/O to an encrypted clone past
/// its parent's end.
pub fn check_growable(img: &Image, volume: &crate::ids::VolumeId) -> Result<()> {
    let parent = img
        .parent_info()
        .map_err(|e| Error::internal(format!("parent of {}", img.name()), e))?;
    match parent {
        None => Ok(()),
        Some(p) => Err(Error::FailedPrecondition(format!(
            "volume {volume} is encrypted and still a clone of {}@{}: librbd 16.2 cannot do I/O \
             to an encrypted clone grown past its parent; flatten it (`rbd flatten`, while it \
             is not staged anywhere) before expanding it",
            p.image_name, p.snap_name
        ))),
    }
}

/// Whether the raw image starts with a LUKS header (read without loading
/// any encryption). A create interrupted while formatting leaves one.
pub fn has_header(img: &Image) -> Result<bool> {
    let mut head = [0u8; 8];
    let n = img
        .read_at(0, &mut head)
        .map_err(|e| Error::internal(format!("reading the start of {}", img.name()), e))?;
    Ok(haina_rbd::detect_format(&head[..n]).is_some())
}

/// What NodeStage needs to unlock an encrypted volume: its format and the
/// request's passphrase. `None` for a plain volume.
pub fn for_attach(
    volume: &str,
    record: Option<EncryptionRecord>,
    secrets: &Secrets,
) -> Result<Option<(EncryptionFormat, Secret)>> {
    let Some(record) = record else {
        return Ok(None);
    };
    let pass = passphrase(
        secrets,
        &format!(
            "stage volume {volume}, which is encrypted ({})",
            record.format
        ),
        "node-stage",
    )?;
    Ok(Some((record.format, pass)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wanted_from_context() {
        assert_eq!(wanted(&ctx(&[])).unwrap(), None);
        assert_eq!(wanted(&ctx(&[("encrypted", "false")])).unwrap(), None);
        assert_eq!(
            wanted(&ctx(&[("encrypted", "true")])).unwrap(),
            Some(EncryptionFormat::Luks2)
        );
        assert_eq!(
            wanted(&ctx(&[
                ("encrypted", "true"),
                ("encryptionFormat", "luks1")
            ]))
            .unwrap(),
            Some(EncryptionFormat::Luks1)
        );
    }

    #[test]
    fn passphrase_is_required_and_named() {
        let none = Secrets::default();
        let e = passphrase(&none, "create volume v", "provisioner").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(msg.contains("secrets.encryptionPassphrase"), "{msg}");
        assert!(msg.contains("provisioner-secret-name"), "{msg}");
        let empty = Secrets(BTreeMap::from([(
            SECRET_PASSPHRASE.to_string(),
            String::new(),
        )]));
        assert!(passphrase(&empty, "x", "node-stage").is_err());
        let some = Secrets(BTreeMap::from([(
            SECRET_PASSPHRASE.to_string(),
            " p w \n".to_string(),
        )]));
        // Byte for byte: a passphrase is never trimmed.
        assert_eq!(
            passphrase(&some, "x", "node-stage").unwrap().expose(),
            " p w \n"
        );
    }

    #[test]
    fn sources_must_agree() {
        use EncryptionFormat::*;
        let rec = |format| EncryptionRecord { format, header: 1 };
        let f = "volume_content_source.snapshot.snapshot_id";
        assert!(check_source(None, None, f, "s").is_ok());
        assert!(check_source(Some(&rec(Luks2)), Some(Luks2), f, "s").is_ok());
        for (src, want, needle) in [
            (Some(rec(Luks2)), None, "set parameters.encrypted \"true\""),
            (None, Some(Luks2), "is not encrypted"),
            (
                Some(rec(Luks1)),
                Some(Luks2),
                "set encryptionFormat \"luks1\"",
            ),
        ] {
            let e = check_source(src.as_ref(), want, f, "s").unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(needle) && msg.contains(f), "{msg}");
        }
    }

    #[test]
    fn attach_needs_the_passphrase_of_an_encrypted_volume() {
        let rec = EncryptionRecord {
            format: EncryptionFormat::Luks2,
            header: 16 << 20,
        };
        assert!(
            for_attach("p.v", None, &Secrets::default())
                .unwrap()
                .is_none()
        );
        let e = for_attach("p.v", Some(rec), &Secrets::default()).unwrap_err();
        assert!(e.to_string().contains("p.v") && e.to_string().contains("node-stage"));
        let s = Secrets(BTreeMap::from([(
            SECRET_PASSPHRASE.to_string(),
            "pw".to_string(),
        )]));
        let (f, p) = for_attach("p.v", Some(rec), &s).unwrap().unwrap();
        assert_eq!((f, p.expose()), (EncryptionFormat::Luks2, "pw"));
    }
}
