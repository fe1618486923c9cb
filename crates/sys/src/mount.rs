//! Thin typed wrappers over `mount(2)`/`umount2(2)` and the split of
//! user mount options into kernel flags vs filesystem data.
//!
//! Kernel quirks handled here:
//! - `MS_BIND` ignores every other flag: a read-only bind mount takes a
//!   second call, `MS_REMOUNT|MS_BIND|MS_RDONLY` ([`remount_bind_readonly`]).
//! - That remount *replaces* the per-mount flags, so it would silently drop
//!   `nosuid`/`nodev`/`noexec`/atime flags; we read them back with
//!   `statvfs` and keep them.
//! - Options like `ro` or `noatime` are flags, not data: passed as data,
//!   ext4/xfs reject them with EINVAL ([`parse_mount_options`]).
//! - `umount2` uses `UMOUNT_NOFOLLOW` so a symlink planted at the target
//!   cannot redirect the unmount. EINVAL means "not a mount point".

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// A failed mount-table change, with everything needed to reproduce it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{op} {}{target}{}: {errno}",
    opt_path(source_path),
    opt_detail(detail)
)]
pub struct MountError {
    /// "mount", "bind", "remount-ro", "unmount", "unmount-lazy".
    pub op: &'static str,
    pub source_path: Option<PathBuf>,
    pub target: PathBuf,
    /// Fs type and options for "mount"; empty otherwise.
    pub detail: String,
    /// EBUSY (in use), EINVAL (not mounted / bad option), ENOENT, ...
    #[source]
    pub errno: Errno,
}

fn opt_path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| format!("{} on ", p.display()))
        .unwrap_or_default()
}

fn opt_detail(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

fn err(
    op: &'static str,
    source: Option<&Path>,
    target: &Path,
    detail: String,
) -> impl Fn(Errno) -> MountError {
    let (source, target) = (source.map(Path::to_path_buf), target.to_path_buf());
    move |errno| MountError {
        op,
        source_path: source.clone(),
        target: target.clone(),
        detail: detail.clone(),
        errno,
    }
}

/// Mounts the filesystem on `source` (a block device) at `target`.
/// `data` is the fs-specific option string ("" for none).
pub fn mount_fs(
    source: &Path,
    target: &Path,
    fs_type: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), MountError> {
    let detail = format!("-t {fs_type} flags={flags:?} data={data:?}");
    let on_err = err("mount", Some(source), target, detail);
    let data = CString::new(data).map_err(|_| on_err(Errno::INVAL))?;
    let data = (!data.is_empty()).then_some(data.as_c_str());
    rustix::mount::mount(source, target, fs_type, flags, data).map_err(&on_err)?;
    tracing::info!(source = %source.display(), target = %target.display(), fs_type, "mounted");
    Ok(())
}

/// Non-recursive bind mount of `source` (file or directory) onto `target`.
pub fn bind(source: &Path, target: &Path) -> Result<(), MountError> {
    rustix::mount::mount_bind(source, target).map_err(err(
        "bind",
        Some(source),
        target,
        String::new(),
    ))?;
    tracing::info!(source = %source.display(), target = %target.display(), "bind mounted");
    Ok(())
}

/// Makes the (bind) mount at `target` read-only, keeping its other
/// per-mount flags.
pub fn remount_bind_readonly(target: &Path) -> Result<(), MountError> {
    let on_err = err("remount-ro", None, target, String::new());
    let current = rustix::fs::statvfs(target).map_err(&on_err)?.f_flag;
    let flags = MountFlags::BIND | MountFlags::RDONLY | kept_flags(current);
    rustix::mount::mount_remount(target, flags, "").map_err(&on_err)?;
    tracing::info!(target = %target.display(), "remounted read-only");
    Ok(())
}

/// The per-mount flags a bind remount must restate to keep them.
fn kept_flags(current: StatVfsMountFlags) -> MountFlags {
    [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| current.contains(*st))
    .fold(MountFlags::empty(), |acc, (_, ms)| acc | ms)
}

/// Unmounts the top-most mount at `target`. EINVAL: not a mount point;
/// EBUSY: in use.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    rustix::mount::unmount(target, UnmountFlags::NOFOLLOW).map_err(err(
        "unmount",
        None,
        target,
        String::new(),
    ))?;
    tracing::info!(target = %target.display(), "unmounted");
    Ok(())
}

/// Detaches the mount now and lets the kernel finish when it is no longer
/// busy (MNT_DETACH). The device stays in use until then.
pub fn unmount_lazy(target: &Path) -> Result<(), MountError> {
    rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH).map_err(err(
        "unmount-lazy",
        None,
        target,
        String::new(),
    ))?;
    tracing::info!(target = %target.display(), "lazily unmounted");
    Ok(())
}

/// Splits user mount options (each entry may itself be comma-separated)
/// into kernel flags and the fs-specific data string, like mount(8).
/// Later options win (`ro,rw` is read-write); "defaults" is dropped.
pub fn parse_mount_options<S: AsRef<str>>(opts: &[S]) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for opt in opts.iter().flat_map(|o| o.as_ref().split(',')) {
        let opt = opt.trim();
        match flag_option(opt) {
            Some((flag, true)) => flags |= flag,
            Some((flag, false)) => flags -= flag,
            None if opt.is_empty() || opt == "defaults" => {}
            None => data.push(opt),
        }
    }
    (flags, data.join(","))
}

/// (flag, set?) for options that are `MS_*` flags.
fn flag_option(opt: &str) -> Option<(MountFlags, bool)> {
    use MountFlags as F;
    Some(match opt {
        "ro" => (F::RDONLY, true),
        "rw" => (F::RDONLY, false),
        "nosuid" => (F::NOSUID, true),
        "suid" => (F::NOSUID, false),
        "nodev" => (F::NODEV, true),
        "dev" => (F::NODEV, false),
        "noexec" => (F::NOEXEC, true),
        "exec" => (F::NOEXEC, false),
        "sync" => (F::SYNCHRONOUS, true),
        "async" => (F::SYNCHRONOUS, false),
        "dirsync" => (F::DIRSYNC, true),
        "noatime" => (F::NOATIME, true),
        "atime" => (F::NOATIME, false),
        "nodiratime" => (F::NODIRATIME, true),
        "diratime" => (F::NODIRATIME, false),
        "relatime" => (F::RELATIME, true),
        "norelatime" => (F::RELATIME, false),
        "strictatime" => (F::STRICTATIME, true),
        "nostrictatime" => (F::STRICTATIME, false),
        "lazytime" => (F::LAZYTIME, true),
        "nolazytime" => (F::LAZYTIME, false),
        "nosymfollow" => (F::NOSYMFOLLOW, true),
        "symfollow" => (F::NOSYMFOLLOW, false),
        "silent" => (F::SILENT, true),
        "loud" => (F::SILENT, false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_data() {
        let (flags, data) =
            parse_mount_options(&["ro", "noatime,discard", "nodev", "errors=remount-ro"]);
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NODEV
        );
        assert_eq!(data, "discard,errors=remount-ro");
    }

    #[test]
    fn later_options_win() {
        let (flags, data) = parse_mount_options(&["ro,nosuid", "rw", "suid", "sync"]);
        assert_eq!(flags, MountFlags::SYNCHRONOUS);
        assert_eq!(data, "");
    }

    #[test]
    fn empty_and_defaults() {
        let none: [&str; 0] = [];
        assert_eq!(
            parse_mount_options(&none),
            (MountFlags::empty(), String::new())
        );
        assert_eq!(
            parse_mount_options(&[String::from("defaults"), String::from(" , ")]),
            (MountFlags::empty(), String::new())
        );
    }

    #[test]
    fn every_flag_option_maps() {
        for (opt, flag) in [
            ("noexec", MountFlags::NOEXEC),
            ("dirsync", MountFlags::DIRSYNC),
            ("relatime", MountFlags::RELATIME),
            ("strictatime", MountFlags::STRICTATIME),
            ("nodiratime", MountFlags::NODIRATIME),
            ("lazytime", MountFlags::LAZYTIME),
            ("nosymfollow", MountFlags::NOSYMFOLLOW),
        ] {
            assert_eq!(parse_mount_options(&[opt]), (flag, String::new()), "{opt}");
        }
    }

    #[test]
    fn remount_keeps_per_mount_flags() {
        let kept = kept_flags(
            StatVfsMountFlags::NOSUID | StatVfsMountFlags::NODEV | StatVfsMountFlags::RDONLY,
        );
        assert_eq!(kept, MountFlags::NOSUID | MountFlags::NODEV);
    }

    #[test]
    fn error_display_names_everything() {
        let e = MountError {
            op: "mount",
            source_path: Some("/dev/loop3".into()),
            target: "/mnt/x".into(),
            detail: "-t ext4".into(),
            errno: Errno::BUSY,
        };
        assert_eq!(
            e.to_string(),
            format!("mount /dev/loop3 on /mnt/x (-t ext4): {}", Errno::BUSY)
        );
        let e = MountError {
            op: "unmount",
            source_path: None,
            target: "/mnt/x".into(),
            detail: String::new(),
            errno: Errno::INVAL,
        };
        assert!(e.to_string().starts_with("unmount /mnt/x: "));
    }
}
