//! The `nbd` mounter: `rbd-nbd` serves the image to the kernel's NBD
//! driver from a daemon of its own (not the plugin), found again with
//! `rbd-nbd list-mapped`.
//!
//! It needs the kernel module `nbd` (and the `rbd-nbd` tool); [`available`]
//! says so, naming the module, when the module is neither loaded nor
//! loadable. Like krbd, the key goes through a 0600 key file removed as soon
//! as `rbd-nbd map` returns.
//!
//! Encrypted volumes: rbd-nbd (Pacific) loads librbd's encryption itself,
//! given `--encryption-format` and `--encryption-passphrase-file`. The
//! passphrase file is a [`MemFile`], an anonymous in-memory file of this
//! process read through `/proc/<pid>/fd/<n>`: never on disk, argv or the
//! environment. `/dev/stdin` cannot serve: rbd-nbd forks its daemon and
//! points the daemon's stdin at /dev/null (`global_init_postfork_start`)
//! before the daemon reads the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::krbd::KeyFile;
use super::{AttachError, OpenMode, Target, image_spec, module_usable};
use crate::backend::Attachment;

/// Whether rbd-nbd can be used on this node.
pub fn available() -> Result<(), AttachError> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    module_usable(&CHECK, "nbd", "/sys/block/nbd0").map_err(|detail| AttachError::ModuleMissing {
        mounter: "nbd",
        module: "nbd",
        detail,
    })
}

#[derive(serde::Deserialize)]
struct Mapped {
    pool: String,
    #[serde(default)]
    namespace: String,
    image: String,
    #[serde(default)]
    snap: String,
    device: String,
}

/// Every image of `pool`'s namespace `ns` rbd-nbd serves, as attachments.
pub fn mapped_in(pool: &str, ns: &str) -> Vec<Attachment> {
    if available().is_err() {
        return Vec::new();
    }
    let Ok(out) = haina_sys::exec::Cmd::new("rbd-nbd")
        .args(["list-mapped", "--format", "json"])
        .timeout(Duration::from_secs(30))
        .run()
    else {
        return Vec::new();
    };
    let list: Vec<Mapped> = serde_json::from_str(&out.stdout).unwrap_or_default();
    list.into_iter()
        .filter(|m| m.pool == pool && m.namespace == ns && (m.snap.is_empty() || m.snap == "-"))
        .map(|m| Attachment {
            backing: image_spec(&m.pool, &m.namespace, &m.image),
            device: PathBuf::from(m.device),
            mounter: "nbd",
            newly_attached: false,
        })
        .collect()
}

/// The device `rbd-nbd` serves `pool/ns/image` on, if any.
pub fn find(pool: &str, ns: &str, image: &str) -> Option<Attachment> {
    let wanted = image_spec(pool, ns, image);
    mapped_in(pool, ns)
        .into_iter()
        .find(|a| a.backing == wanted)
}

/// Maps the image through rbd-nbd (or finds its mapping).
pub fn attach(target: &Target<'_>, key_dir: &Path) -> Result<Attachment, AttachError> {
    if let Some(a) = find(target.rados_pool, target.namespace, target.image) {
        return Ok(a);
    }
    let key = KeyFile::write(key_dir, target.key)?;
    let passphrase = target
        .encryption
        .as_ref()
        .map(|u| MemFile::new(u.passphrase))
        .transpose()?;
    let mut cmd = haina_sys::exec::Cmd::new("rbd-nbd")
        .args(["map", "--id", target.user])
        .arg("--keyfile")
        .arg(key.path())
        .timeout(Duration::from_secs(120));
    if !target.mon_host.is_empty() {
        cmd = cmd.args(["-m", target.mon_host]);
    }
    if let Some(conf) = target.ceph_conf {
        cmd = cmd.arg("-c").arg(conf);
    }
    match target.mode {
        OpenMode::ReadOnly => cmd = cmd.arg("--read-only"),
        OpenMode::Exclusive => cmd = cmd.arg("--exclusive"),
        OpenMode::Shared => {}
    }
    if let (Some(unlock), Some(file)) = (&target.encryption, &passphrase) {
        cmd = cmd
            .args(["--encryption-format", unlock.format.as_str()])
            .arg("--encryption-passphrase-file")
            .arg(file.path());
    }
    let out = cmd
        .arg(target.spec())
        .run()
        .map_err(|e| match &target.encryption {
            Some(u) if is_wrong_passphrase(&e) => AttachError::WrongPassphrase {
                volume: u.volume.to_string(),
                format: u.format,
            },
            _ => AttachError::system("rbd-nbd map", e),
        })?;
    drop((key, passphrase));
    Ok(Attachment {
        device: PathBuf::from(out.stdout.trim()),
        mounter: "nbd",
        backing: target.spec(),
        newly_attached: true,
    })
}

/// rbd-nbd's report of a passphrase that does not open the header
/// (`rbd-nbd: failed to load encryption: (1) Operation not permitted`).
fn is_wrong_passphrase(e: &haina_sys::exec::ExecError) -> bool {
    match e {
        haina_sys::exec::ExecError::Failed { stderr, .. } => {
            stderr.contains("failed to load encryption") && stderr.contains("(1) ")
        }
        _ => false,
    }
}

/// A secret in an anonymous in-memory file (`memfd_create`, close-on-exec,
/// sealed against writes and growth) that another process reads through
/// [`MemFile::path`] (`/proc/<pid>/fd/<n>`, root or the same user) for as
/// long as this value lives. Emptied (its pages freed) and closed on drop.
pub(crate) struct MemFile {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl MemFile {
    pub(crate) fn new(secret: &haina_rbd::Secret) -> Result<Self, AttachError> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let err = |what: &str| {
            let what = what.to_string();
            move |e: rustix::io::Errno| {
                AttachError::system(
                    format!("{what} an in-memory passphrase file"),
                    std::io::Error::from(e),
                )
            }
        };
        let fd = rustix::fs::memfd_create(
            "haina-passphrase",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(err("creating"))?;
        let mut rest = secret.expose().as_bytes();
        while !rest.is_empty() {
            let n = rustix::io::write(&fd, rest).map_err(err("writing"))?;
            rest = &rest[n..];
        }
        rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::GROW)
            .map_err(err("sealing"))?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        Ok(MemFile { fd, path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let _ = rustix::fs::ftruncate(&self.fd, 0);
    }
}

/// Unmaps the image if rbd-nbd serves it.
pub fn detach(pool: &str, ns: &str, image: &str) -> Result<(), AttachError> {
    if let Some(a) = find(pool, ns, image) {
        haina_sys::exec::Cmd::new("rbd-nbd")
            .arg("unmap")
            .arg(&a.device)
            .timeout(Duration::from_secs(120))
            .run()
            .map_err(|e| AttachError::system("rbd-nbd unmap", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_file_lives_in_memory_only() {
        let secret = haina_rbd::Secret::new("pass\nphrase ");
        let f = MemFile::new(&secret).unwrap();
        let path = f.path().to_path_buf();
        assert!(path.starts_with(format!("/proc/{}/fd/", std::process::id())));
        // Not a file on any filesystem: a memfd.
        let target = std::fs::read_link(&path).unwrap();
        assert!(
            target
                .to_string_lossy()
                .starts_with("/memfd:haina-passphrase"),
            "{target:?}"
        );
        // Another process (as rbd-nbd would) reads exactly the passphrase.
        let out = haina_sys::exec::Cmd::new("cat").arg(&path).run().unwrap();
        assert_eq!(out.stdout, "pass\nphrase ");
        // Sealed: nobody can change it.
        assert!(std::fs::write(&path, "other").is_err());
        drop(f);
        assert!(!path.exists() || std::fs::read_link(&path).is_ok_and(|t| t != target));
    }

    #[test]
    fn wrong_passphrase_is_told_from_other_failures() {
        let failed = |stderr: &str| haina_sys::exec::ExecError::Failed {
            argv: "rbd-nbd map".into(),
            code: Some(1),
            stderr: stderr.into(),
        };
        assert!(is_wrong_passphrase(&failed(
            "rbd-nbd: failed to load encryption: (1) Operation not permitted"
        )));
        assert!(!is_wrong_passphrase(&failed(
            "rbd-nbd: failed to load encryption: (22) Invalid argument"
        )));
        assert!(!is_wrong_passphrase(&failed(
            "rbd-nbd: failed to open device"
        )));
    }
}
