//! The `nbd` mounter: `rbd-nbd` serves the image to the kernel's NBD
//! driver from a daemon of its own (not the plugin), found again with
//! `rbd-nbd list-mapped`.
//!
//! It needs the kernel module `nbd` (and the `rbd-nbd` tool); [`available`]
//! says so, naming the module, when the module is neither loaded nor
//! loadable. Like krbd, the key goes through a 0600 key file removed as soon
//! as `rbd-nbd map` returns.

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
    let out = cmd
        .arg(target.spec())
        .run()
        .map_err(|e| AttachError::system("rbd-nbd map", e))?;
    drop(key);
    Ok(Attachment {
        device: PathBuf::from(out.stdout.trim()),
        mounter: "nbd",
        backing: target.spec(),
        newly_attached: true,
    })
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
