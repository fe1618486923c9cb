//! Paths the CO names (`staging_target_path`, `target_path`,
//! `volume_path`), resolved the way the kernel will record them.
//!
//! mountinfo shows mount points with every symlink resolved, so a path
//! with a symlink in it would be mounted at one name and looked up at
//! another: the mount would leak, and its unmount would be refused. Every
//! path is therefore resolved once, before it is used: the symlinks in its
//! parent are resolved (a kubelet root that is itself a symlink keeps
//! working), and a symlink as the last component is refused outright — the
//! kernel would mount on whatever it points at. `/` is never a volume path.

use std::path::{Path, PathBuf};

use haina_sys::host::{FileKind, Host};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::ids;

/// Resolves `path` (already validated by [`ids::abs_path`]). With
/// `create_parent`, a missing parent directory is created first (publish);
/// otherwise a missing parent means the path does not exist: `Ok(None)`.
pub fn resolve(
    host: &dyn Host,
    field: &str,
    path: &Path,
    create_parent: bool,
) -> Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::InvalidArgument(format!(
            "{field} {} can never hold a volume",
            path.display()
        )));
    };
    let parent = match host.canonicalize(parent) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(Errno::NOENT) && create_parent => {
            host.create_dir_all(parent)
                .map_err(|e| Error::from(e).context(format!("creating the parent of {field}")))?;
            host.canonicalize(parent)?
        }
        Err(e) if e.errno() == Some(Errno::NOENT) => return Ok(None),
        Err(e) if e.errno() == Some(Errno::NOTDIR) => {
            return Err(Error::InvalidArgument(format!(
                "{field} {}: a parent is not a directory",
                ids::echo_path(path)
            )));
        }
        Err(e) => return Err(Error::from(e).context(format!("resolving {field}"))),
    };
    let resolved = parent.join(name);
    if host.lstat(&resolved)? == Some(FileKind::Symlink) {
        return Err(Error::InvalidArgument(format!(
            "{field} {} is a symbolic link; give the path it points to",
            ids::echo_path(path)
        )));
    }
    Ok(Some(resolved))
}

/// Whether one of two resolved paths is the other or lies inside it.
pub fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
