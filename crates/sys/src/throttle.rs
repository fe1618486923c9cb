//! Block-layer I/O limits of one device: the kernel's blk-throttle, set
//! through cgroup files. This is how a local-pool volume (a loop device)
//! gets its QoS limits.
//!
//! Two interfaces, one rule per device `MAJ:MIN`:
//! - cgroup v1 `blkio`: one file per direction and unit,
//!   `blkio.throttle.{read,write}_{iops,bps}_device`, lines `MAJ:MIN VALUE`;
//!   writing `MAJ:MIN 0` removes a rule. A rule in the *root* blkio cgroup
//!   holds every task's I/O on the device (v1 blk-throttle is hierarchical:
//!   measured on kernel 6.18, a root rule held a child cgroup's fio too).
//! - cgroup v2 `io.max`, lines `MAJ:MIN rbps=N wbps=N riops=N wiops=N`
//!   (`max` = unlimited; all `max` removes the line). The root cgroup has no
//!   `io.max`, so the rule goes into chosen cgroups (e.g. `kubepods.slice`)
//!   and holds the I/O of the processes under them only.
//!
//! Kernel quirks this module's callers must handle:
//! - a rule outlives the device's attachment: a loop device keeps its
//!   number after `LOOP_CLR_FD`, and the next image attached to it would
//!   inherit the limit; so rules are cleared before a detach and written
//!   (all four values, zeros included) at every attach;
//! - an iops value of `u32::MAX` means "no limit" to the kernel (iops are
//!   `unsigned int` there), so limits stay below it ([`MAX_IOPS`]).
//!
//! Everything here is a plain blocking file read or write; [`crate::host`]
//! puts a deadline on it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The largest iops limit the kernel treats as a limit.
pub const MAX_IOPS: u64 = u32::MAX as u64 - 1;
/// The largest bytes/s limit (`u64::MAX` is "no limit" to the kernel; the
/// CSI side keeps values within int64).
pub const MAX_BPS: u64 = i64::MAX as u64;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Limits of one device; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimits {
    pub read_iops: u64,
    pub write_iops: u64,
    pub read_bps: u64,
    pub write_bps: u64,
}

impl IoLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the rules are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttle {
    /// A cgroup v1 blkio directory (normally the root, `/sys/fs/cgroup/blkio`).
    V1(PathBuf),
    /// cgroup v2 directories, each with an `io.max`.
    V2(Vec<PathBuf>),
}

impl fmt::Display for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V1(dir) => write!(f, "cgroup v1 blkio throttle in {}", dir.display()),
            Self::V2(dirs) => {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                write!(f, "cgroup v2 io.max in {}", list.join(", "))
            }
        }
    }
}

/// A failed read or write of a throttle file, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path} (device {dev}): {source}")]
pub struct ThrottleError {
    pub op: &'static str,
    pub path: PathBuf,
    pub dev: DevNum,
    #[source]
    pub source: io::Error,
}

/// The v1 files, with the field each one carries.
const V1_FILES: [(&str, Field); 4] = [
    ("blkio.throttle.read_iops_device", Field::ReadIops),
    ("blkio.throttle.write_iops_device", Field::WriteIops),
    ("blkio.throttle.read_bps_device", Field::ReadBps),
    ("blkio.throttle.write_bps_device", Field::WriteBps),
];

#[derive(Debug, Clone, Copy)]
enum Field {
    ReadIops,
    WriteIops,
    ReadBps,
    WriteBps,
}

impl Field {
    fn get(self, l: &IoLimits) -> u64 {
        match self {
            Self::ReadIops => l.read_iops,
            Self::WriteIops => l.write_iops,
            Self::ReadBps => l.read_bps,
            Self::WriteBps => l.write_bps,
        }
    }

    fn set(self, l: &mut IoLimits, v: u64) {
        match self {
            Self::ReadIops => l.read_iops = v,
            Self::WriteIops => l.write_iops = v,
            Self::ReadBps => l.read_bps = v,
            Self::WriteBps => l.write_bps = v,
        }
    }
}

/// Finds the interface to use. `configured` cgroups (cgroup v2) are used as
/// given and must each have a writable `io.max`; otherwise the v1 blkio
/// controller under `cgroup_root` (normally `/sys/fs/cgroup`), else the v2
/// `io.max` of `kubepods.slice` or `kubepods` there. The error says what was
/// looked for and what to configure.
pub fn detect(cgroup_root: &Path, configured: &[PathBuf]) -> Result<Throttle, String> {
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if !configured.is_empty() {
        for dir in configured {
            let f = dir.join("io.max");
            if !writable(&f) {
                return Err(format!(
                    "qos_cgroups: {} has no writable io.max (is it a cgroup v2 directory whose \
                     parent enables the io controller in cgroup.subtree_control?)",
                    dir.display()
                ));
            }
        }
        return Ok(Throttle::V2(configured.to_vec()));
    }
    let v1 = cgroup_root.join("blkio");
    if V1_FILES.iter().all(|(f, _)| writable(&v1.join(f))) {
        return Ok(Throttle::V1(v1));
    }
    if cgroup_root.join("cgroup.controllers").exists() {
        for name in ["kubepods.slice", "kubepods"] {
            let dir = cgroup_root.join(name);
            if writable(&dir.join("io.max")) {
                return Ok(Throttle::V2(vec![dir]));
            }
        }
        return Err(format!(
            "cgroup v2 at {} has no io.max in kubepods.slice or kubepods (the root cgroup has \
             none); set qos_cgroups to the cgroups whose io.max should hold the limits",
            cgroup_root.display()
        ));
    }
    Err(format!(
        "no block-layer throttling found: neither cgroup v1 blkio throttle files in {} nor \
         cgroup v2 at {}",
        v1.display(),
        cgroup_root.display()
    ))
}

fn read_file(path: &Path, dev: DevNum) -> Result<String, ThrottleError> {
    std::fs::read_to_string(path).map_err(|source| ThrottleError {
        op: "read",
        path: path.to_path_buf(),
        dev,
        source,
    })
}

/// The device's line in a throttle file, without the `MAJ:MIN ` prefix.
fn line_of(text: &str, dev: DevNum) -> Option<&str> {
    let key = dev.to_string();
    text.lines().find_map(|l| {
        let (k, rest) = l.trim().split_once(char::is_whitespace)?;
        (k == key).then(|| rest.trim())
    })
}

fn invalid(path: &Path, dev: DevNum, what: String) -> ThrottleError {
    ThrottleError {
        op: "parse",
        path: path.to_path_buf(),
        dev,
        source: io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

/// Parses a v2 `io.max` line body (`rbps=max wbps=1048576 ...`).
fn parse_v2(path: &Path, dev: DevNum, body: &str) -> Result<IoLimits, ThrottleError> {
    let mut l = IoLimits::default();
    for kv in body.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(invalid(path, dev, format!("unexpected {kv:?}")));
        };
        let field = match k {
            "rbps" => Field::ReadBps,
            "wbps" => Field::WriteBps,
            "riops" => Field::ReadIops,
            "wiops" => Field::WriteIops,
            // Other keys (none today) are not ours to judge.
            _ => continue,
        };
        let n = if v == "max" {
            0
        } else {
            v.parse()
                .map_err(|_| invalid(path, dev, format!("unexpected value {kv:?}")))?
        };
        field.set(&mut l, n);
    }
    Ok(l)
}

/// The limits the kernel holds for `dev`, one entry per cgroup (v1: one).
pub fn read(t: &Throttle, dev: DevNum) -> Result<Vec<IoLimits>, ThrottleError> {
    match t {
        Throttle::V1(dir) => {
            let mut l = IoLimits::default();
            for (name, field) in V1_FILES {
                let path = dir.join(name);
                if let Some(v) = line_of(&read_file(&path, dev)?, dev) {
                    let n = v
                        .parse()
                        .map_err(|_| invalid(&path, dev, format!("unexpected value {v:?}")))?;
                    field.set(&mut l, n);
                }
            }
            Ok(vec![l])
        }
        Throttle::V2(dirs) => dirs
            .iter()
            .map(|d| {
                let path = d.join("io.max");
                match line_of(&read_file(&path, dev)?, dev) {
                    Some(body) => parse_v2(&path, dev, body),
                    None => Ok(IoLimits::default()),
                }
            })
            .collect(),
    }
}

fn write_file(path: &Path, dev: DevNum, line: &str) -> Result<(), ThrottleError> {
    use std::io::Write;
    // O_TRUNC as `echo >` does: cgroup files ignore it, and a regular file
    // standing in for one in tests holds just the last line.
    let res = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    match res {
        Ok(()) => Ok(()),
        Err(source) => Err(ThrottleError {
            op: "write",
            path: path.to_path_buf(),
            dev,
            source,
        }),
    }
}

/// The `io.max` line for `l` (`max` for every unlimited value).
pub fn v2_line(dev: DevNum, l: &IoLimits) -> String {
    let v = |n: u64| {
        if n == 0 {
            "max".to_string()
        } else {
            n.to_string()
        }
    };
    format!(
        "{dev} rbps={} wbps={} riops={} wiops={}\n",
        v(l.read_bps),
        v(l.write_bps),
        v(l.read_iops),
        v(l.write_iops)
    )
}

/// Sets the limits of `dev` to `l` everywhere `t` says (all zeros: removes
/// the rules). A device that no longer exists has no rules to clear, so
/// ENODEV when clearing is success.
pub fn write(t: &Throttle, dev: DevNum, l: &IoLimits) -> Result<(), ThrottleError> {
    let clearing = l.is_unlimited();
    let enodev = rustix::io::Errno::NODEV.raw_os_error();
    let gone = |e: &ThrottleError| clearing && e.source.raw_os_error() == Some(enodev);
    match t {
        Throttle::V1(dir) => {
            for (name, field) in V1_FILES {
                let line = format!("{dev} {}\n", field.get(l));
                match write_file(&dir.join(name), dev, &line) {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                }
            }
        }
        Throttle::V2(dirs) => {
            let line = v2_line(dev, l);
            for d in dirs {
                match write_file(&d.join("io.max"), dev, &line) {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: DevNum = DevNum {
        major: 7,
        minor: 24,
    };

    /// A fake v1 blkio directory: writes to a regular file replace it, so
    /// the test checks what was written, line by line.
    fn v1_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, _) in V1_FILES {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        d
    }

    #[test]
    fn v1_writes_one_line_per_file_and_reads_them_back() {
        let d = v1_dir();
        let t = Throttle::V1(d.path().into());
        let l = IoLimits {
            read_iops: 0,
            write_iops: 100,
            read_bps: 1 << 20,
            write_bps: 0,
        };
        write(&t, DEV, &l).unwrap();
        let text = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(text("blkio.throttle.write_iops_device"), "7:24 100\n");
        assert_eq!(text("blkio.throttle.read_iops_device"), "7:24 0\n");
        assert_eq!(text("blkio.throttle.read_bps_device"), "7:24 1048576\n");
        // What the kernel shows: only devices with a rule, others listed too.
        std::fs::write(
            d.path().join("blkio.throttle.write_iops_device"),
            "7:2 5\n7:24 100\n",
        )
        .unwrap();
        std::fs::write(d.path().join("blkio.throttle.read_iops_device"), "").unwrap();
        std::fs::write(d.path().join("blkio.throttle.write_bps_device"), "").unwrap();
        assert_eq!(read(&t, DEV).unwrap(), vec![l]);
        let other = DevNum { major: 7, minor: 2 };
        assert_eq!(read(&t, other).unwrap()[0].write_iops, 5);
        let none = DevNum { major: 7, minor: 3 };
        assert!(read(&t, none).unwrap()[0].is_unlimited());
        // A value the kernel would never print is an error naming the file.
        std::fs::write(d.path().join("blkio.throttle.read_bps_device"), "7:24 x\n").unwrap();
        let e = read(&t, DEV).unwrap_err();
        assert!(e.to_string().contains("read_bps_device"), "{e}");
    }

    #[test]
    fn v2_lines_use_max_for_unlimited() {
        let l = IoLimits {
            read_iops: 0,
            write_iops: 100,
            read_bps: 0,
            write_bps: 2 << 20,
        };
        assert_eq!(
            v2_line(DEV, &l),
            "7:24 rbps=max wbps=2097152 riops=max wiops=100\n"
        );
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [&a, &b] {
            std::fs::write(d.path().join("io.max"), "").unwrap();
        }
        let t = Throttle::V2(vec![a.path().into(), b.path().into()]);
        write(&t, DEV, &l).unwrap();
        assert_eq!(read(&t, DEV).unwrap(), vec![l, l]);
        write(&t, DEV, &IoLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(b.path().join("io.max")).unwrap(),
            "7:24 rbps=max wbps=max riops=max wiops=max\n"
        );
        assert!(read(&t, DEV).unwrap().iter().all(IoLimits::is_unlimited));
    }

    #[test]
    fn detection_says_what_it_found_or_what_to_configure() {
        // cgroup v1 with blkio.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("blkio")).unwrap();
        for (f, _) in V1_FILES {
            std::fs::write(root.path().join("blkio").join(f), "").unwrap();
        }
        assert_eq!(
            detect(root.path(), &[]).unwrap(),
            Throttle::V1(root.path().join("blkio"))
        );
        // cgroup v2 without the io controller in kubepods: refused, saying why.
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory").unwrap();
        std::fs::create_dir(v2.path().join("kubepods.slice")).unwrap();
        let e = detect(v2.path(), &[]).unwrap_err();
        assert!(e.contains("qos_cgroups") && e.contains("io.max"), "{e}");
        std::fs::write(v2.path().join("kubepods.slice/io.max"), "").unwrap();
        assert_eq!(
            detect(v2.path(), &[]).unwrap(),
            Throttle::V2(vec![v2.path().join("kubepods.slice")])
        );
        // Configured cgroups are taken as given, and each must have io.max.
        let missing = v2.path().join("system.slice");
        let e = detect(v2.path(), std::slice::from_ref(&missing)).unwrap_err();
        assert!(e.contains("system.slice"), "{e}");
        // Nothing at all.
        let empty = tempfile::tempdir().unwrap();
        let e = detect(empty.path(), &[]).unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }
}
