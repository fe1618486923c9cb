//! `/proc/self/mountinfo`: the kernel's record of what is mounted where, and
//! the only thing idempotency checks trust.
//!
//! Format (proc(5)), one mount per line:
//! `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
//! i.e. ids, `major:minor`, root inside the filesystem, mount point, per-mount
//! options, zero or more optional fields, `-`, fs type, source, superblock
//! options. Kernel quirks handled: space, tab, newline and backslash in paths
//! are octal-escaped (`\040`, `\011`, `\012`, `\134`); the source may be an
//! empty field; the same mount point can appear several times (stacked
//! mounts: the last one is on top and is what path lookups see); a bind
//! mount of a subdirectory shows `root != "/"`.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line we could not understand: we refuse to guess.
    #[error("mountinfo line {line_no}: {reason}: {line:?}")]
    Parse {
        line_no: usize,
        line: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the filesystem that is mounted here ("/" unless a bind
    /// mount of a subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    pub fs_type: String,
    /// Device or pseudo name, e.g. `/dev/loop3`, `tmpfs`; may be empty.
    pub source: String,
    /// Superblock options (fs-specific, shared by all binds).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Read-only at the mount or at the superblock.
    pub fn is_read_only(&self) -> bool {
        let ro = |opts: &[String]| opts.iter().any(|o| o == "ro");
        ro(&self.mount_options) || ro(&self.super_options)
    }
}

/// A snapshot of the mount table, in kernel order (parents before children,
/// later mounts after earlier ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    pub entries: Vec<MountEntry>,
}

impl MountTable {
    /// Reads `/proc/self/mountinfo` (this process's mount namespace).
    pub fn read() -> Result<MountTable, MountInfoError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| MountInfoError::Read {
            path: MOUNTINFO.into(),
            source,
        })?;
        MountTable::parse(&text)
    }

    pub fn parse(text: &str) -> Result<MountTable, MountInfoError> {
        let entries = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(i, line)| {
                parse_line(line).map_err(|reason| MountInfoError::Parse {
                    line_no: i + 1,
                    line: line.to_string(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(MountTable { entries })
    }

    /// The top-most mount at exactly `mount_point` (no symlink resolution:
    /// pass the canonical path).
    pub fn at(&self, mount_point: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.mount_point == mount_point)
    }

    /// Every mount stacked at `mount_point`, bottom first.
    pub fn all_at(&self, mount_point: &Path) -> Vec<&MountEntry> {
        self.entries
            .iter()
            .filter(|e| e.mount_point == mount_point)
            .collect()
    }

    /// Every mount of the filesystem on device `major:minor` (e.g. a staging
    /// mount and its bind mounts).
    pub fn mounts_of_dev(&self, major: u32, minor: u32) -> Vec<&MountEntry> {
        self.entries
            .iter()
            .filter(|e| e.major == major && e.minor == minor)
            .collect()
    }

    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.at(path).is_some()
    }
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    let mut fields = line.split(' ');
    let mut next = |what| fields.next().ok_or(what);
    let mount_id = next("missing mount id")?
        .parse()
        .map_err(|_| "bad mount id")?;
    let parent_id = next("missing parent id")?
        .parse()
        .map_err(|_| "bad parent id")?;
    let (major, minor) = next("missing major:minor")?
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or("bad major:minor")?;
    let root = unescape_path(next("missing root")?);
    let mount_point = unescape_path(next("missing mount point")?);
    let mount_options = split_options(next("missing mount options")?);
    // Optional fields (shared:N, master:N, ...) run until a lone "-".
    while next("missing separator")? != "-" {}
    let fs_type = unescape(next("missing fs type")?);
    let source = unescape(next("missing source")?);
    let super_options = split_options(next("missing super options")?);
    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        fs_type: String::from_utf8_lossy(&fs_type).into_owned(),
        source: String::from_utf8_lossy(&source).into_owned(),
        super_options,
    })
}

fn split_options(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|o| !o.is_empty())
        .map(|o| String::from_utf8_lossy(&unescape(o)).into_owned())
        .collect()
}

fn unescape_path(s: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(s)))
}

/// Decodes the kernel's `\ooo` octal escapes; anything else is kept as is.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
100 27 7:3 / /var/lib/kubelet/plugins/haina/staging/pv\\0401 rw,relatime shared:50 - ext4 /dev/loop3 rw
101 27 7:3 /sub /var/lib/kubelet/pods/p1/volumes/vol ro,nosuid,nodev shared:50 master:2 - ext4 /dev/loop3 rw
102 27 0:40 / /stacked rw - tmpfs tmpfs rw,size=4k
103 27 0:41 / /stacked rw - tmpfs second rw
104 27 0:42 / /weird\\011tab\\012nl\\134bs rw - tmpfs  rw
105 27 7:4 / /ro-super rw - xfs /dev/loop4 ro,attr2
";

    fn table() -> MountTable {
        MountTable::parse(SAMPLE).unwrap()
    }

    #[test]
    fn parses_every_field() {
        let t = table();
        assert_eq!(t.entries.len(), 8);
        let e = &t.entries[1];
        assert_eq!((e.mount_id, e.parent_id, e.major, e.minor), (27, 1, 254, 0));
        assert_eq!(e.root, Path::new("/"));
        assert_eq!(e.mount_point, Path::new("/"));
        assert_eq!(e.mount_options, ["rw", "relatime"]);
        assert_eq!(e.fs_type, "ext4");
        assert_eq!(e.source, "/dev/vda");
        assert_eq!(e.super_options, ["rw", "discard"]);
    }

    #[test]
    fn decodes_escaped_paths() {
        let t = table();
        let staging = Path::new("/var/lib/kubelet/plugins/haina/staging/pv 1");
        assert_eq!(t.at(staging).unwrap().mount_id, 100);
        assert!(t.is_mount_point(staging));
        assert_eq!(
            t.entries[6].mount_point,
            Path::new("/weird\ttab\nnl\\bs"),
            "tab, newline, backslash"
        );
        assert_eq!(t.entries[6].source, "", "empty source field");
        assert_eq!(unescape(r"a\b\0401\999"), b"a\\b 1\\999");
    }

    #[test]
    fn bind_mounts_share_the_device() {
        let t = table();
        let binds = t.mounts_of_dev(7, 3);
        assert_eq!(
            binds.iter().map(|e| e.mount_id).collect::<Vec<_>>(),
            [100, 101]
        );
        assert_eq!(binds[1].root, Path::new("/sub"));
        assert!(binds[1].is_read_only());
        assert!(!binds[0].is_read_only());
        assert!(t.entries[7].is_read_only(), "read-only superblock");
    }

    #[test]
    fn stacked_mounts_top_is_last() {
        let t = table();
        let p = Path::new("/stacked");
        assert_eq!(t.at(p).unwrap().source, "second");
        assert_eq!(
            t.all_at(p).iter().map(|e| e.mount_id).collect::<Vec<_>>(),
            [102, 103]
        );
        assert!(t.at(Path::new("/stacked/")).is_some(), "trailing slash");
        assert!(!t.is_mount_point(Path::new("/stack")));
        assert!(t.mounts_of_dev(9, 9).is_empty());
    }

    #[test]
    fn rejects_malformed_lines() {
        for (line, reason) in [
            ("x 27 0:1 / /a rw - tmpfs t rw", "bad mount id"),
            ("1 27 0-1 / /a rw - tmpfs t rw", "bad major:minor"),
            ("1 27 0:1 / /a rw shared:1 tmpfs t rw", "missing separator"),
            ("1 27 0:1 / /a rw -", "missing fs type"),
        ] {
            match MountTable::parse(&format!("{line}\n")) {
                Err(MountInfoError::Parse {
                    reason: r,
                    line_no: 1,
                    ..
                }) => assert_eq!(r, reason, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_the_real_table() {
        let t = MountTable::read().unwrap();
        assert!(t.is_mount_point(Path::new("/")));
        assert!(
            t.at(Path::new("/proc"))
                .is_some_and(|e| e.fs_type == "proc")
        );
    }
}
