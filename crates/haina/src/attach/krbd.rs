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

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::{AttachError, OpenMode, Target, module_usable};
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

/// A key file that exists only while a command needs it.
pub(crate) struct KeyFile(pub PathBuf);

impl KeyFile {
    pub(crate) fn write(dir: &Path, key: &haina_rbd::Secret) -> Result<Self, AttachError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        fs::create_dir_all(dir)
            .map_err(|e| AttachError::system(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!(".key-{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AttachError::system(format!("creating {}", path.display()), e))?;
        let guard = KeyFile(path);
        f.write_all(key.expose().as_bytes())
            .map_err(|e| AttachError::system("writing the key file", e))?;
        Ok(guard)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Devices mapped by the kernel: (device, pool, image).
fn mapped() -> Vec<(PathBuf, String, String)> {
    let Ok(rd) = fs::read_dir(format!("{SYSFS}/devices")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            let read = |f: &str| fs::read_to_string(e.path().join(f)).ok();
            let pool = read("pool")?.trim().to_string();
            let name = read("name")?.trim().to_string();
            let snap = read("current_snap").unwrap_or_default();
            (snap.trim() == "-" || snap.trim().is_empty())
                .then(|| (PathBuf::from(format!("/dev/rbd{id}")), pool, name))
        })
        .collect()
}

/// Every image of `pool` the kernel maps, as attachments.
pub fn mapped_in(pool: &str) -> Vec<Attachment> {
    mapped()
        .into_iter()
        .filter(|(_, p, _)| p == pool)
        .map(|(device, p, i)| Attachment {
            device,
            mounter: "krbd",
            backing: format!("{p}/{i}"),
            newly_attached: false,
        })
        .collect()
}

/// The device mapping `pool/image`, if any.
pub fn find(pool: &str, image: &str) -> Option<Attachment> {
    let wanted = format!("{pool}/{image}");
    mapped_in(pool).into_iter().find(|a| a.backing == wanted)
}

/// Maps the image (or finds its mapping).
pub fn attach(target: &Target<'_>, key_dir: &Path) -> Result<Attachment, AttachError> {
    if let Some(a) = find(target.rados_pool, target.image) {
        return Ok(a);
    }
    let key = KeyFile::write(key_dir, target.key)?;
    let mut cmd = haina_sys::exec::Cmd::new("rbd")
        .args(["device", "map", "--id", target.user])
        .arg("--keyfile")
        .arg(&key.0)
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
pub fn detach(pool: &str, image: &str) -> Result<(), AttachError> {
    if let Some(a) = find(pool, image) {
        haina_sys::exec::Cmd::new("rbd")
            .args(["device", "unmap"])
            .arg(&a.device)
            .timeout(Duration::from_secs(120))
            .run()
            .map_err(|e| AttachError::system("rbd device unmap", e))?;
    }
    Ok(())
}
