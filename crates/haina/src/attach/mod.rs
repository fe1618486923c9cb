//! Node-side attach of RBD images: turning `pool/image` into a block device
//! on this node, and finding, growing and removing that device again.
//!
//! Three mounters, one file each:
//! - [`krbd`]: the kernel RBD client (`rbd device map`), needs module `rbd`;
//! - [`nbd`]: `rbd-nbd` over the kernel's NBD driver, needs module `nbd`;
//! - [`fuse`]: haina's own FUSE server (`haina rbd-fuse`, over librbd) that
//!   exposes the image as a file, with a loop device (direct I/O) on top.
//!   Needs only `/dev/fuse` and loop devices.
//!
//! `auto` picks krbd if the module is there (or loads), else nbd, else
//! fuse. A mounter that cannot run here fails with FAILED_PRECONDITION
//! naming the missing kernel module.
//!
//! Encrypted volumes (librbd's LUKS encryption, see
//! `backend::rbd::crypt`) need a mounter that runs librbd: fuse and nbd
//! load the encryption with the passphrase in [`Target::encryption`];
//! krbd cannot (the kernel client would need dm-crypt over `/dev/rbdN`,
//! which haina does not do), so `auto` skips it for them and an explicit
//! krbd is FAILED_PRECONDITION.
//!
//! In every mounter the process that serves I/O is not the node plugin
//! (the kernel itself, a detached `rbd-nbd` or a detached `haina rbd-fuse`),
//! so restarting the plugin never interrupts a mounted volume, and the
//! restarted plugin finds its attachments again from the kernel (sysfs,
//! mountinfo, loop backing files), never from a record.

pub mod fuse;
pub mod krbd;
pub mod nbd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use haina_rbd::Secret;

use crate::error::Error;
use crate::volume::{AccessMode, Publication};

/// Which mounter a pool uses (`mounter = "..."` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounter {
    Auto,
    Krbd,
    Nbd,
    Fuse,
}

impl Mounter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Krbd => "krbd",
            Self::Nbd => "nbd",
            Self::Fuse => "fuse",
        }
    }

    /// The mounter to use on this node: `auto` resolved, and an explicit
    /// choice checked against what the kernel offers.
    pub fn resolve(self) -> Result<Mounter, AttachError> {
        self.resolve_for(false)
    }

    /// [`Mounter::resolve`] for a volume that is `encrypted` or not: krbd
    /// cannot load librbd's encryption, so `auto` passes it over and an
    /// explicit krbd is refused.
    pub fn resolve_for(self, encrypted: bool) -> Result<Mounter, AttachError> {
        match self {
            Self::Krbd if encrypted => Err(AttachError::Encrypted { mounter: "krbd" }),
            Self::Auto => {
                if !encrypted && krbd::available().is_ok() {
                    Ok(Self::Krbd)
                } else if nbd::available().is_ok() {
                    Ok(Self::Nbd)
                } else {
                    fuse::available().map(|_| Self::Fuse)
                }
            }
            Self::Krbd => krbd::available().map(|_| self),
            Self::Nbd => nbd::available().map(|_| self),
            Self::Fuse => fuse::available().map(|_| self),
        }
    }
}

impl FromStr for Mounter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(Self::Auto),
            "krbd" => Ok(Self::Krbd),
            "nbd" => Ok(Self::Nbd),
            "fuse" => Ok(Self::Fuse),
            other => Err(Error::InvalidArgument(format!(
                "mounter {other:?} is not one of auto, krbd, nbd, fuse"
            ))),
        }
    }
}

/// How this node opens the image, decided from its publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// No writes; no watch is registered, so it fences nobody.
    ReadOnly,
    /// Read-write; librbd passes the exclusive lock around between writers
    /// (MULTI_NODE_MULTI_WRITER block volumes).
    Shared,
    /// Read-write and holding the exclusive lock for as long as attached: a
    /// second writer (a stale node) cannot write until this one lets go or
    /// is blocklisted.
    Exclusive,
}

impl OpenMode {
    /// The mode for this node's publication. No publication (a CO that
    /// skips ControllerPublish) is treated as a single writer.
    pub fn for_publication(p: Option<&Publication>) -> Self {
        match p {
            Some(p) if p.readonly || p.mode.is_read_only() => Self::ReadOnly,
            Some(p) if p.mode == AccessMode::MultiNodeMultiWriter => Self::Shared,
            _ => Self::Exclusive,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "ro",
            Self::Shared => "shared",
            Self::Exclusive => "exclusive",
        }
    }

    pub fn read_only(self) -> bool {
        self == Self::ReadOnly
    }
}

impl FromStr for OpenMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ro" => Ok(Self::ReadOnly),
            "shared" => Ok(Self::Shared),
            "exclusive" => Ok(Self::Exclusive),
            other => Err(format!("unknown mode {other:?} (ro, shared, exclusive)")),
        }
    }
}

/// What unlocks an encrypted volume: its LUKS format and passphrase.
pub struct Unlock<'a> {
    /// The volume's ID (for messages).
    pub volume: &'a str,
    pub format: haina_rbd::EncryptionFormat,
    pub passphrase: &'a Secret,
}

/// One image to attach, and how to reach its cluster.
pub struct Target<'a> {
    pub rados_pool: &'a str,
    /// The RBD namespace (empty: the pool's default namespace).
    pub namespace: &'a str,
    pub image: &'a str,
    pub mon_host: &'a str,
    pub ceph_conf: Option<&'a Path>,
    pub user: &'a str,
    pub key: &'a Secret,
    pub mode: OpenMode,
    pub node_id: &'a str,
    /// Set for an encrypted volume: the mounter loads the encryption and
    /// serves the decrypted view.
    pub encryption: Option<Unlock<'a>>,
}

impl Target<'_> {
    /// `pool/image` or `pool/namespace/image`, as the `rbd` tools take it.
    pub fn spec(&self) -> String {
        image_spec(self.rados_pool, self.namespace, self.image)
    }
}

/// `pool/image`, or `pool/namespace/image` in a namespace.
pub fn image_spec(pool: &str, namespace: &str, image: &str) -> String {
    if namespace.is_empty() {
        format!("{pool}/{image}")
    } else {
        format!("{pool}/{namespace}/{image}")
    }
}

/// Why an attach or detach failed.
#[derive(Debug)]
pub enum AttachError {
    /// The mounter needs a kernel module that is neither loaded nor loadable.
    ModuleMissing {
        mounter: &'static str,
        module: &'static str,
        detail: String,
    },
    /// The mounter needs a tool or device node that is not there.
    Missing { mounter: &'static str, what: String },
    /// Another client holds the image's exclusive lock (a writer elsewhere).
    LockHeld { image: String, detail: String },
    /// The image does not exist (any more).
    ImageMissing { image: String },
    /// The volume is encrypted and the mounter cannot load the encryption.
    Encrypted { mounter: &'static str },
    /// The passphrase does not open the volume's LUKS header.
    WrongPassphrase {
        volume: String,
        format: haina_rbd::EncryptionFormat,
    },
    /// Something else sits where the attachment should be.
    Conflict(String),
    /// The FUSE server exited or did not get ready in time.
    Server {
        image: String,
        detail: String,
        log: PathBuf,
    },
    /// A system call or tool failed.
    System {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AttachError {
    pub fn system(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::System {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ModuleMissing {
                mounter,
                module,
                detail,
            } => write!(
                f,
                "mounter {mounter} needs the kernel module {module:?}, which is not loaded and \
                 cannot be loaded on this node ({detail}); use mounter \"fuse\" (or \"auto\")"
            ),
            Self::Missing { mounter, what } => {
                write!(f, "mounter {mounter} cannot run on this node: {what}")
            }
            Self::LockHeld { image, detail } => write!(
                f,
                "image {image} is held by another writer ({detail}); unstage it on its node, \
                 or blocklist that client if its node is dead (see docs/rbd.md)"
            ),
            Self::ImageMissing { image } => write!(f, "image {image} does not exist"),
            Self::Encrypted { mounter } => write!(
                f,
                "the volume is encrypted with librbd's LUKS encryption, which mounter {mounter} \
                 cannot load: the kernel RBD client would need dm-crypt (cryptsetup over \
                 /dev/rbdN), which haina does not do; set the pool's mounter to \"fuse\" or \
                 \"nbd\" (or \"auto\", which passes krbd over for encrypted volumes)"
            ),
            Self::WrongPassphrase { volume, format } => write!(
                f,
                "volume {volume}: the passphrase in secrets.{} does not open its {format} \
                 header; nothing was attached",
                crate::backend::rbd::crypt::SECRET_PASSPHRASE
            ),
            Self::Conflict(m) => f.write_str(m),
            Self::Server { image, detail, log } => write!(
                f,
                "the FUSE server for {image} failed: {detail} (log: {})",
                log.display()
            ),
            Self::System { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for AttachError {}

impl From<AttachError> for Error {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::ModuleMissing { .. }
            | AttachError::Missing { .. }
            | AttachError::LockHeld { .. } => Error::FailedPrecondition(e.to_string()),
            AttachError::ImageMissing { .. } => Error::NotFound(e.to_string()),
            AttachError::Encrypted { .. } => Error::FailedPrecondition(e.to_string()),
            // Like a refused cephx key: the same secret can never work.
            AttachError::WrongPassphrase { .. } => Error::Unauthenticated(e.to_string()),
            AttachError::Conflict(_) => Error::FailedPrecondition(e.to_string()),
            AttachError::Server { .. } => Error::internal("attaching over FUSE", e),
            AttachError::System { what, source } => Error::Internal {
                context: what,
                source,
            },
        }
    }
}

/// Whether a kernel module is usable: already loaded (its sysfs directory
/// exists) or loadable with `modprobe`. Checked once per process: the
/// kernel's modules do not change under a running plugin.
fn module_usable(
    cell: &'static OnceLock<Result<(), String>>,
    module: &'static str,
    present: &'static str,
) -> Result<(), String> {
    cell.get_or_init(|| {
        if Path::new(present).exists() {
            return Ok(());
        }
        let run = haina_sys::exec::Cmd::new("modprobe")
            .arg(module)
            .timeout(Duration::from_secs(20))
            .run();
        match run {
            Ok(_) if Path::new(present).exists() => Ok(()),
            Ok(_) => Err(format!(
                "modprobe {module} succeeded but {present} is absent"
            )),
            Err(e) => Err(format!("{present} is absent and {e}")),
        }
    })
    .clone()
}

/// The last `n` lines of a log file (for error messages).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::AccessMode::*;

    #[test]
    fn open_mode_from_publication() {
        let p = |mode, readonly| Publication {
            readonly,
            mode,
            block: false,
        };
        let m = |x: Option<Publication>| OpenMode::for_publication(x.as_ref());
        assert_eq!(m(None), OpenMode::Exclusive);
        assert_eq!(m(Some(p(SingleNodeWriter, false))), OpenMode::Exclusive);
        assert_eq!(m(Some(p(SingleNodeWriter, true))), OpenMode::ReadOnly);
        assert_eq!(m(Some(p(MultiNodeReaderOnly, false))), OpenMode::ReadOnly);
        assert_eq!(m(Some(p(MultiNodeMultiWriter, false))), OpenMode::Shared);
        assert_eq!(
            m(Some(p(MultiNodeSingleWriter, false))),
            OpenMode::Exclusive
        );
        for mode in [OpenMode::ReadOnly, OpenMode::Shared, OpenMode::Exclusive] {
            assert_eq!(mode.as_str().parse::<OpenMode>().unwrap(), mode);
        }
    }

    #[test]
    fn encrypted_volumes_never_get_krbd() {
        let e = Mounter::Krbd.resolve_for(true).unwrap_err();
        assert!(matches!(e, AttachError::Encrypted { mounter: "krbd" }));
        let msg = Error::from(e).to_string();
        assert!(
            msg.contains("dm-crypt") && msg.contains("\"fuse\""),
            "{msg}"
        );
        // auto never answers krbd for an encrypted volume, whatever the node has.
        if let Ok(m) = Mounter::Auto.resolve_for(true) {
            assert_ne!(m, Mounter::Krbd);
        }
        let e = Error::from(AttachError::WrongPassphrase {
            volume: "ceph.v".into(),
            format: haina_rbd::EncryptionFormat::Luks2,
        });
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.to_string().contains("volume ceph.v"), "{e}");
    }

    #[test]
    fn mounter_names() {
        for m in [Mounter::Auto, Mounter::Krbd, Mounter::Nbd, Mounter::Fuse] {
            assert_eq!(m.as_str().parse::<Mounter>().unwrap(), m);
        }
        assert!("rbd-fuse".parse::<Mounter>().is_err());
    }
}
