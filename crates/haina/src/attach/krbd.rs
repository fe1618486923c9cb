//! The `krbd` mounter: the kernel's own RBD client, driven with
//! `rbd device map`/`unmap` and observed through `/sys/bus/rbd/devices`.
//!
//! It needs the kernel module `rbd`; [`available`] says so (naming the
//! module) when it is neither loaded nor loadable, which is the case on
//! kernels built without it. The kernel serves the I/O, so a plugin restart
//! never touches a mapped image, and [`find`] re-adopts it from sysfs.
//!
//! The key reaches `rbd` through a 0600 key file that is removed as soon as
//! the command returns (the kernel keeps its copy in the kernel keyring).
//!
//! Encrypted volumes are refused (FAILED_PRECONDITION): librbd's LUKS
//! encryption lives in librbd, which the kernel client does not run; it
//! would need dm-crypt (cryptsetup over `/dev/rbdN`), which haina does not
//! do. Use the fuse or nbd mounter for them.

use std::fs;
use std::path::{Path, PathBuf};

use std::sync::OnceLock;
use std::time::Duration;

use super::{AttachError, OpenMode, Target, image_spec, module_usable};
use crate::backend::Attachment;

const SYSFS: &str = "/sys/bus/rbd";

/// Whether the kernel RBD client can be used on this node.
pub fn available() -> Result<(), AttachError> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    module_usable(&CHECK, "rbd", SYSFS).map_err(|detail| AttachError::ModuleMissing {
        mounter: "krbd",
        module: "rbd",
        detail,
    })
}

/// A key file that exists only while a command needs it: a fresh file with
/// a unique random name (so concurrent maps never share or remove each
/// other's), created 0600 by `tempfile`, removed when dropped.
pub(crate) struct KeyFile(tempfile::NamedTempFile);

impl KeyFile {
    pub(crate) fn write(dir: &Path, key: &haina_rbd::Secret) -> Result<Self, AttachError> {
        use std::io::Write;
        fs::create_dir_all(dir)
            .map_err(|e| AttachError::system(format!("creating {}", dir.display()), e))?;
        // tempfile creates with O_EXCL and mode 0600.
        let mut f = tempfile::Builder::new()
            .prefix(".key-")
            .tempfile_in(dir)
            .map_err(|e| {
                AttachError::system(format!("creating a key file in {}", dir.display()), e)
            })?;
        f.write_all(key.expose().as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| AttachError::system("writing the key file", e))?;
        Ok(KeyFile(f))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Devices mapped by the kernel: (device, pool, namespace, image).
fn mapped() -> Vec<(PathBuf, String, String, String)> {
    let Ok(rd) = fs::read_dir(format!("{SYSFS}/devices")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            let read = |f: &str| fs::read_to_string(e.path().join(f)).ok();
            let pool = read("pool")?.trim().to_string();
            let name = read("name")?.trim().to_string();
            let ns = read("pool_ns").unwrap_or_default().trim().to_string();
            let snap = read("current_snap").unwrap_or_default();
            (snap.trim() == "-" || snap.trim().is_empty())
                .then(|| (PathBuf::from(format!("/dev/rbd{id}")), pool, ns, name))
        })
        .collect()
}

/// Every image of `pool`'s namespace `ns` the kernel maps, as attachments.
pub fn mapped_in(pool: &str, ns: &str) -> Vec<Attachment> {
    mapped()
        .into_iter()
        .filter(|(_, p, n, _)| p == pool && n == ns)
        .map(|(device, p, n, i)| Attachment {
            device,
            mounter: "krbd",
            backing: image_spec(&p, &n, &i),
            newly_attached: false,
        })
        .collect()
}

/// The device mapping `pool/ns/image`, if any.
pub fn find(pool: &str, ns: &str, image: &str) -> Option<Attachment> {
    let wanted = image_spec(pool, ns, image);
    mapped_in(pool, ns)
        .into_iter()
        .find(|a| a.backing == wanted)
}

/// Maps the image (or finds its mapping). An encrypted volume is refused:
/// the kernel client cannot load librbd's encryption.
pub fn attach(target: &Target<'_>, key_dir: &Path) -> Result<Attachment, AttachError> {
    if target.encryption.is_some() {
        return Err(AttachError::Encrypted { mounter: "krbd" });
    }
    if let Some(a) = find(target.rados_pool, target.namespace, target.image) {
        return Ok(a);
    }
    let key = KeyFile::write(key_dir, target.key)?;
    let mut cmd = haina_sys::exec::Cmd::new("rbd")
        .args(["device", "map", "--id", target.user])
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
        OpenMode::Exclusive => cmd = cmd.args(["-o", "exclusive"]),
        OpenMode::Shared => {}
    }
    let out = cmd
        .arg(target.spec())
        .run()
        .map_err(|e| AttachError::system("rbd device map", e))?;
    drop(key);
    Ok(Attachment {
        device: PathBuf::from(out.stdout.trim()),
        mounter: "krbd",
        backing: target.spec(),
        newly_attached: true,
    })
}

/// Unmaps the image if mapped.
pub fn detach(pool: &str, ns: &str, image: &str) -> Result<(), AttachError> {
    if let Some(a) = find(pool, ns, image) {
        haina_sys::exec::Cmd::new("rbd")
            .args(["device", "unmap"])
            .arg(&a.device)
            .timeout(Duration::from_secs(120))
            .run()
            .map_err(|e| AttachError::system("rbd device unmap", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_are_private_unique_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = haina_rbd::Secret::new("AQkey==");
        let a = KeyFile::write(dir.path(), &key).unwrap();
        let b = KeyFile::write(dir.path(), &key).unwrap();
        assert_ne!(a.path(), b.path(), "two concurrent maps share a key file");
        let mode = fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(a.path()).unwrap(), "AQkey==");
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        drop(a);
        assert!(
            !pa.exists() && pb.exists(),
            "dropping one removed the other"
        );
        drop(b);
        assert!(!pb.exists());
    }
}
