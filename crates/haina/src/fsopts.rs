//! Filesystem options from requests, checked against an allow-list before
//! they reach `mkfs` or `mount(2)`.
//!
//! Policy: a request never hands free text to a tool. `mkfsOptions` (a
//! StorageClass parameter, handed back to the node in `volume_context`),
//! `mountOptions` (likewise) and the capability's `mount_flags` are parsed
//! here into options haina knows, one table per filesystem, each value
//! checked by its type (a number in range, a power of two, a label of safe
//! characters, a feature name from a list). What is not on the list is
//! `INVALID_ARGUMENT` naming the option, and so, with the reason, is what is
//! known to be harmful:
//! - anything that names a path or a device (`mkfs.xfs -l logdev=`, `-r
//!   rtdev=`, `-d name=`, `mke2fs -J device=`, `-z`, `-M`; mount
//!   `journal_path=`, `journal_dev=`, `logdev=`, `rtdev=`, `usrjquota=`): it
//!   would write to, or read from, something outside the volume;
//! - anything that copies host files into the volume (`mke2fs -d`,
//!   `mkfs.xfs -p`);
//! - anything that can take the node down or lose data (`errors=panic`,
//!   `-e panic`, `norecovery`/`noload`, `nobarrier`, `abort`, `-S`), or that
//!   clashes with what haina passes itself (`-F`, `-f`, `-q`, `-t`, a fixed
//!   UUID that could collide with a host filesystem's).
//!
//! Tokens: mkfs options are whitespace-separated, each `-X value` or `-Xvalue`
//! (no bundling, no positional arguments, so nothing can pose as the device);
//! mount options are comma-separated. The result is normalised argv (mkfs)
//! or a flat option list (mount) that means exactly what was checked.
//! Mount options that only undo a restriction (`rw`, `suid`, `dev`, `exec`,
//! `async`, `defaults`) are accepted and dropped: they are the kernel's
//! defaults anyway, and dropped they cannot undo a `ro` or `nosuid` that the
//! node adds after them.
//!
//! The controller checks at CreateVolume, ControllerPublishVolume,
//! ValidateVolumeCapabilities and GetCapacity; the node must check again at
//! NodeStage/NodePublish, because the `volume_context` it receives comes from
//! the CO, not from us.

use haina_sys::fs::FsType;

use crate::error::{Error, Result};
use crate::ids::echo;

/// The type of an option's value.
#[derive(Debug, Clone, Copy)]
enum Val {
    /// A flag: no value.
    Flag,
    /// A decimal integer in `min..=max`.
    Uint(u64, u64),
    /// A power of two in `min..=max`.
    Pow2(u64, u64),
    /// A size: digits with an optional unit (`k`, `m`, `g`, `t`; xfs also
    /// `s` sectors and `b` blocks).
    Size,
    /// `0` or `1`.
    Bool,
    /// A percentage from 0 to 50, decimals allowed (reserved blocks).
    Percent,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A filesystem label: at most this many bytes of `[A-Za-z0-9_.-]`, not
    /// starting with `-`.
    Label(usize),
    /// `uid:gid`, both numeric.
    UidGid,
    /// `usrquota:grpquota:prjquota`, any non-empty subset.
    QuotaTypes,
    /// A comma list of feature names, each optionally prefixed with `^`.
    Features(&'static [&'static str]),
    /// A comma list of `key` or `key=value` sub-options.
    Sub(&'static [(&'static str, Val)]),
}

/// One allowed option: its name and value type.
type Entry = (&'static str, Val);

/// Known-harmful options and why, so the refusal says more than "unknown".
type Refusal = (&'static str, &'static str);

const NAMES_PATH: &str = "it names a path or device outside the volume";

const EXT4_MKFS: &[Entry] = &[
    ("-b", Val::OneOf(&["1024", "2048", "4096"])),
    ("-C", Val::Pow2(1024, 1 << 28)),
    ("-e", Val::OneOf(&["continue", "remount-ro"])),
    ("-E", Val::Sub(EXT4_EXTENDED)),
    ("-g", Val::Uint(256, 1 << 19)),
    ("-G", Val::Pow2(1, 1 << 20)),
    ("-i", Val::Uint(1024, 1 << 26)),
    ("-I", Val::Pow2(128, 4096)),
    ("-j", Val::Flag),
    ("-J", Val::Sub(&[("size", Val::Uint(1, 10240))])),
    ("-L", Val::Label(16)),
    ("-m", Val::Percent),
    ("-N", Val::Uint(16, u32::MAX as u64)),
    ("-O", Val::Features(EXT4_FEATURES)),
    (
        "-T",
        Val::OneOf(&[
            "default",
            "small",
            "floppy",
            "big",
            "huge",
            "news",
            "largefile",
            "largefile4",
        ]),
    ),
];

const EXT4_EXTENDED: &[Entry] = &[
    ("stride", Val::Uint(1, u32::MAX as u64)),
    ("stripe_width", Val::Uint(1, u32::MAX as u64)),
    ("stripe-width", Val::Uint(1, u32::MAX as u64)),
    ("resize", Val::Uint(1, u32::MAX as u64)),
    ("lazy_itable_init", Val::Bool),
    ("lazy_journal_init", Val::Bool),
    ("packed_meta_blocks", Val::Bool),
    ("num_backup_sb", Val::OneOf(&["0", "1", "2"])),
    ("root_owner", Val::UidGid),
    ("discard", Val::Flag),
    ("nodiscard", Val::Flag),
    ("quotatype", Val::QuotaTypes),
    ("encoding", Val::OneOf(&["utf8", "utf8-12.1"])),
    ("encoding_flags", Val::OneOf(&["strict"])),
    ("orphan_file_size", Val::Uint(1, u32::MAX as u64)),
];

const EXT4_FEATURES: &[&str] = &[
    "64bit",
    "bigalloc",
    "casefold",
    "dir_index",
    "dir_nlink",
    "ea_inode",
    "encrypt",
    "ext_attr",
    "extent",
    "extents",
    "extra_isize",
    "fast_commit",
    "filetype",
    "flex_bg",
    "has_journal",
    "huge_file",
    "inline_data",
    "large_dir",
    "large_file",
    "metadata_csum",
    "metadata_csum_seed",
    "mmp",
    "orphan_file",
    "project",
    "quota",
    "resize_inode",
    "sparse_super",
    "sparse_super2",
    "stable_inodes",
    "uninit_bg",
    "verity",
];

const EXT4_MKFS_REFUSED: &[Refusal] = &[
    ("-d", "it copies a host directory into the volume"),
    ("-l", "it reads a bad-blocks list from a host file"),
    ("-z", "it writes an undo file on the host"),
    ("-M", NAMES_PATH),
    ("-c", "it runs badblocks over the whole device"),
    ("-S", "it rewrites only the superblocks and loses the data"),
    ("-n", "it makes no filesystem"),
    (
        "-U",
        "a fixed UUID can collide with a host filesystem's; haina chooses it",
    ),
    ("-F", "haina passes it itself"),
    ("-q", "haina passes it itself"),
    ("-t", "the filesystem type comes from fsType"),
    ("device", NAMES_PATH),
    ("location", "haina places the journal"),
    ("offset", "haina formats the whole volume"),
    ("journal_dev", "it makes a journal device, not a filesystem"),
];

const XFS_MKFS: &[Entry] = &[
    ("-b", Val::Sub(&[("size", Val::Pow2(512, 65536))])),
    (
        "-m",
        Val::Sub(&[
            ("crc", Val::Bool),
            ("finobt", Val::Bool),
            ("rmapbt", Val::Bool),
            ("reflink", Val::Bool),
            ("bigtime", Val::Bool),
            ("inobtcount", Val::Bool),
        ]),
    ),
    (
        "-d",
        Val::Sub(&[
            ("agcount", Val::Uint(1, 1 << 20)),
            ("agsize", Val::Size),
            ("su", Val::Size),
            ("sunit", Val::Uint(0, u32::MAX as u64)),
            ("sw", Val::Uint(0, u32::MAX as u64)),
            ("swidth", Val::Uint(0, u32::MAX as u64)),
            ("noalign", Val::Flag),
            ("cowextsize", Val::Uint(0, u32::MAX as u64)),
            ("extszinherit", Val::Uint(0, u32::MAX as u64)),
        ]),
    ),
    (
        "-i",
        Val::Sub(&[
            ("size", Val::Pow2(256, 2048)),
            ("maxpct", Val::Uint(0, 100)),
            ("align", Val::Bool),
            ("sparse", Val::Bool),
            ("attr", Val::OneOf(&["2"])),
            ("projid32bit", Val::Bool),
            ("nrext64", Val::Bool),
        ]),
    ),
    (
        "-l",
        Val::Sub(&[
            ("size", Val::Size),
            ("su", Val::Size),
            ("sunit", Val::Uint(0, u32::MAX as u64)),
            ("version", Val::OneOf(&["2"])),
            ("lazy-count", Val::Bool),
        ]),
    ),
    (
        "-n",
        Val::Sub(&[
            ("size", Val::Pow2(512, 65536)),
            ("version", Val::OneOf(&["2", "ci"])),
            ("ftype", Val::Bool),
        ]),
    ),
    ("-s", Val::Sub(&[("size", Val::Pow2(512, 32768))])),
    ("-L", Val::Label(12)),
    ("-K", Val::Flag),
];

const XFS_MKFS_REFUSED: &[Refusal] = &[
    ("-p", "a protofile copies host files into the volume"),
    ("-r", "a realtime section names a device outside the volume"),
    ("-c", "it reads a config file from the host"),
    ("-N", "it makes no filesystem"),
    ("-f", "haina passes it itself"),
    ("-q", "haina passes it itself"),
    ("logdev", NAMES_PATH),
    ("rtdev", NAMES_PATH),
    ("name", NAMES_PATH),
    ("file", NAMES_PATH),
    ("internal", "haina keeps the log inside the volume"),
    (
        "uuid",
        "a fixed UUID can collide with a host filesystem's; haina chooses it",
    ),
];

/// Mount options for both filesystems (the VFS flags and a few shared words).
const COMMON_MOUNT: &[Entry] = &[
    ("ro", Val::Flag),
    ("nosuid", Val::Flag),
    ("nodev", Val::Flag),
    ("noexec", Val::Flag),
    ("sync", Val::Flag),
    ("dirsync", Val::Flag),
    ("noatime", Val::Flag),
    ("atime", Val::Flag),
    ("nodiratime", Val::Flag),
    ("diratime", Val::Flag),
    ("relatime", Val::Flag),
    ("norelatime", Val::Flag),
    ("strictatime", Val::Flag),
    ("nostrictatime", Val::Flag),
    ("lazytime", Val::Flag),
    ("nolazytime", Val::Flag),
    ("nosymfollow", Val::Flag),
    ("symfollow", Val::Flag),
    ("silent", Val::Flag),
    ("loud", Val::Flag),
    ("discard", Val::Flag),
    ("nodiscard", Val::Flag),
    ("grpid", Val::Flag),
    ("bsdgroups", Val::Flag),
    ("nogrpid", Val::Flag),
    ("sysvgroups", Val::Flag),
    ("noquota", Val::Flag),
    ("quota", Val::Flag),
    ("usrquota", Val::Flag),
    ("grpquota", Val::Flag),
    ("prjquota", Val::Flag),
];

/// Accepted and dropped: the kernel's defaults, which could only undo a
/// restriction given before them.
const NOOP_MOUNT: &[&str] = &["defaults", "rw", "suid", "dev", "exec", "async"];

const EXT4_MOUNT: &[Entry] = &[
    ("errors", Val::OneOf(&["continue", "remount-ro"])),
    ("data", Val::OneOf(&["ordered", "journal", "writeback"])),
    ("data_err", Val::OneOf(&["abort", "ignore"])),
    ("barrier", Val::Flag),
    ("commit", Val::Uint(0, 300)),
    ("journal_checksum", Val::Flag),
    ("nojournal_checksum", Val::Flag),
    ("journal_ioprio", Val::Uint(0, 7)),
    ("delalloc", Val::Flag),
    ("nodelalloc", Val::Flag),
    ("auto_da_alloc", Val::Flag),
    ("noauto_da_alloc", Val::Flag),
    ("block_validity", Val::Flag),
    ("noblock_validity", Val::Flag),
    ("dioread_lock", Val::Flag),
    ("dioread_nolock", Val::Flag),
    ("i_version", Val::Flag),
    ("inode_readahead_blks", Val::Pow2(1, 1 << 30)),
    ("init_itable", Val::Uint(0, 1 << 20)),
    ("noinit_itable", Val::Flag),
    ("max_batch_time", Val::Uint(0, 1 << 30)),
    ("min_batch_time", Val::Uint(0, 1 << 30)),
    ("resgid", Val::Uint(0, u32::MAX as u64)),
    ("resuid", Val::Uint(0, u32::MAX as u64)),
    ("stripe", Val::Uint(0, u32::MAX as u64)),
    ("user_xattr", Val::Flag),
    ("acl", Val::Flag),
    ("noacl", Val::Flag),
    ("nombcache", Val::Flag),
    ("prefetch_block_bitmaps", Val::Flag),
    ("no_prefetch_block_bitmaps", Val::Flag),
];

const XFS_MOUNT: &[Entry] = &[
    ("allocsize", Val::Size),
    ("filestreams", Val::Flag),
    ("ikeep", Val::Flag),
    ("noikeep", Val::Flag),
    ("inode32", Val::Flag),
    ("inode64", Val::Flag),
    ("largeio", Val::Flag),
    ("nolargeio", Val::Flag),
    ("logbufs", Val::Uint(2, 8)),
    ("logbsize", Val::Size),
    ("noalign", Val::Flag),
    ("nouuid", Val::Flag),
    ("uquota", Val::Flag),
    ("uqnoenforce", Val::Flag),
    ("qnoenforce", Val::Flag),
    ("gquota", Val::Flag),
    ("gqnoenforce", Val::Flag),
    ("pquota", Val::Flag),
    ("pqnoenforce", Val::Flag),
    ("swalloc", Val::Flag),
    ("sunit", Val::Uint(0, u32::MAX as u64)),
    ("swidth", Val::Uint(0, u32::MAX as u64)),
    ("wsync", Val::Flag),
];

const MOUNT_REFUSED: &[Refusal] = &[
    (
        "errors=panic",
        "a filesystem error would panic the whole node",
    ),
    ("journal_path", NAMES_PATH),
    ("journal_dev", NAMES_PATH),
    ("logdev", NAMES_PATH),
    ("rtdev", NAMES_PATH),
    ("usrjquota", NAMES_PATH),
    ("grpjquota", NAMES_PATH),
    ("jqfmt", "journaled quota files are not supported"),
    (
        "noload",
        "it skips journal recovery and exposes a corrupt filesystem",
    ),
    (
        "norecovery",
        "it skips journal recovery and exposes a corrupt filesystem",
    ),
    ("nobarrier", "it can lose data on a power cut"),
    ("barrier=0", "it can lose data on a power cut"),
    ("abort", "it aborts the filesystem"),
    ("dax", "DAX needs persistent memory, not a loop device"),
    ("sb", "haina mounts the primary superblock"),
    ("debug", "it floods the node's kernel log"),
    ("test_dummy_encryption", "it is for kernel tests only"),
    ("remount", "haina decides how a volume is mounted"),
    ("bind", "haina decides how a volume is mounted"),
    ("rbind", "haina decides how a volume is mounted"),
    ("move", "haina decides how a volume is mounted"),
    ("shared", "mount propagation is set by the CO"),
    ("rshared", "mount propagation is set by the CO"),
    ("slave", "mount propagation is set by the CO"),
    ("private", "mount propagation is set by the CO"),
    ("mand", "mandatory locks are gone from Linux"),
];

fn invalid(field: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{field}: {what}"))
}

fn names(table: &[Entry]) -> String {
    table
        .iter()
        .map(|(n, v)| match v {
            Val::Flag => n.to_string(),
            _ => format!("{n}="),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn refusal(refused: &[Refusal], name: &str, whole: &str) -> Option<&'static str> {
    refused
        .iter()
        .find(|(n, _)| *n == name || *n == whole)
        .map(|(_, why)| *why)
}

/// Checks `value` against `val`; `Err(reason)` says why not.
fn check(val: Val, value: &str, refused: &[Refusal]) -> std::result::Result<(), String> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let number = |s: &str| -> std::result::Result<u64, String> {
        if !digits(s) {
            return Err("must be a decimal number".into());
        }
        s.parse::<u64>().map_err(|_| "is too large".to_string())
    };
    match val {
        Val::Flag => Err("takes no value".into()),
        Val::Uint(min, max) => {
            let n = number(value)?;
            if (min..=max).contains(&n) {
                Ok(())
            } else {
                Err(format!("must be between {min} and {max}"))
            }
        }
        Val::Pow2(min, max) => {
            let n = number(value)?;
            if n.is_power_of_two() && (min..=max).contains(&n) {
                Ok(())
            } else {
                Err(format!("must be a power of two from {min} to {max}"))
            }
        }
        Val::Size => {
            let num = value.trim_end_matches(|c: char| "kKmMgGtTsSbB".contains(c));
            if digits(num) && value.len() - num.len() <= 1 {
                Ok(())
            } else {
                Err("must be a size such as 64m (units k, m, g, t, s, b)".into())
            }
        }
        Val::Bool => match value {
            "0" | "1" => Ok(()),
            _ => Err("must be 0 or 1".into()),
        },
        Val::Percent => {
            let ok = match value.split_once('.') {
                Some((i, f)) => digits(i) && digits(f),
                None => digits(value),
            };
            match value.parse::<f64>() {
                Ok(p) if ok && (0.0..=50.0).contains(&p) => Ok(()),
                _ => Err("must be a percentage from 0 to 50".into()),
            }
        }
        Val::OneOf(words) => {
            if words.contains(&value) {
                Ok(())
            } else {
                Err(format!("must be one of {}", words.join(", ")))
            }
        }
        Val::Label(max) => {
            let ok = value.len() <= max
                && !value.starts_with('-')
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "must be at most {max} bytes of [A-Za-z0-9_.-], not starting with '-'"
                ))
            }
        }
        Val::UidGid => match value.split_once(':') {
            Some((u, g)) if digits(u) && digits(g) => Ok(()),
            _ => Err("must be UID:GID, both numbers".into()),
        },
        Val::QuotaTypes => {
            let ok = value
                .split(':')
                .all(|t| ["usrquota", "grpquota", "prjquota"].contains(&t));
            if ok {
                Ok(())
            } else {
                Err("must be usrquota, grpquota and/or prjquota joined by ':'".into())
            }
        }
        Val::Features(known) => {
            for f in value.split(',') {
                let name = f.strip_prefix('^').unwrap_or(f);
                if !known.contains(&name) {
                    return Err(match refusal(refused, name, f) {
                        Some(why) => format!("feature {} is refused: {why}", echo(f)),
                        None => format!(
                            "feature {} is not allowed (allowed: {})",
                            echo(f),
                            known.join(" ")
                        ),
                    });
                }
            }
            Ok(())
        }
        Val::Sub(table) => {
            for sub in value.split(',') {
                let (key, v) = match sub.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (sub, None),
                };
                let Some((_, val)) = table.iter().find(|(n, _)| *n == key) else {
                    return Err(match refusal(refused, key, sub) {
                        Some(why) => format!("{} is refused: {why}", echo(sub)),
                        None => format!("{} is not allowed (allowed: {})", echo(sub), names(table)),
                    });
                };
                match (val, v) {
                    (Val::Flag, None) => {}
                    (Val::Flag, Some(_)) => return Err(format!("{} takes no value", echo(key))),
                    (_, None) => return Err(format!("{} needs a value", echo(key))),
                    (val, Some(v)) => check(*val, v, refused)
                        .map_err(|why| format!("{}: {} {why}", echo(sub), echo(key)))?,
                }
            }
            Ok(())
        }
    }
}

fn mkfs_tables(fs: FsType) -> (&'static [Entry], &'static [Refusal]) {
    match fs {
        FsType::Ext4 => (EXT4_MKFS, EXT4_MKFS_REFUSED),
        FsType::Xfs => (XFS_MKFS, XFS_MKFS_REFUSED),
    }
}

/// Parses `mkfsOptions` for `fs` into the argv that goes before the device.
///
/// `raw` is whitespace-separated `-X value` (or `-Xvalue`) pairs and flags;
/// `field` names where the text came from (`parameters.mkfsOptions`,
/// `volume_context.mkfsOptions`) in the error. Every option and value must
/// be on `fs`'s allow-list; a refusal is `INVALID_ARGUMENT` naming it.
pub fn mkfs_args(fs: FsType, field: &str, raw: &str) -> Result<Vec<String>> {
    let (table, refused) = mkfs_tables(fs);
    let mut out = Vec::new();
    let mut tokens = raw.split_whitespace();
    while let Some(tok) = tokens.next() {
        let bad = |why: String| invalid(field, format!("{} for {fs}: {why}", echo(tok)));
        let Some(rest) = tok.strip_prefix('-') else {
            return Err(bad(
                "is not an option (positional arguments such as a device are refused)".into(),
            ));
        };
        let Some(letter) = rest.chars().next().filter(char::is_ascii_alphabetic) else {
            return Err(bad("is not an option haina knows".into()));
        };
        let flag = format!("-{letter}");
        let Some((_, val)) = table.iter().find(|(n, _)| *n == flag) else {
            return Err(bad(match refusal(refused, &flag, tok) {
                Some(why) => format!("refused: {why}"),
                None => format!("not allowed (allowed: {})", names(table)),
            }));
        };
        let attached = &rest[letter.len_utf8()..];
        out.push(flag.clone());
        if let Val::Flag = val {
            if !attached.is_empty() {
                return Err(bad(format!(
                    "{flag} takes no value (options cannot be bundled)"
                )));
            }
            continue;
        }
        let value = if attached.is_empty() {
            tokens
                .next()
                .ok_or_else(|| bad(format!("{flag} needs a value")))?
        } else {
            attached
        };
        check(*val, value, refused)
            .map_err(|why| invalid(field, format!("{flag} {} for {fs}: {why}", echo(value))))?;
        out.push(value.to_string());
    }
    Ok(out)
}

/// Checks mount options for `fs` and returns them one per entry, with the
/// no-op defaults dropped (see the module doc).
///
/// Each entry of `opts` may itself be a comma list, so the StorageClass
/// `mountOptions` string can be passed as `&[raw]` and the capability's
/// `mount_flags` as they are. `field` names their origin in the error
/// (`parameters.mountOptions`, `volume_capability.mount.mount_flags`,
/// `volume_context.mountOptions`).
pub fn mount_options<S: AsRef<str>>(fs: FsType, field: &str, opts: &[S]) -> Result<Vec<String>> {
    let specific = match fs {
        FsType::Ext4 => EXT4_MOUNT,
        FsType::Xfs => XFS_MOUNT,
    };
    let mut out = Vec::new();
    for opt in opts
        .iter()
        .flat_map(|o| o.as_ref().split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        if NOOP_MOUNT.contains(&opt) {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let bad = |why: String| invalid(field, format!("{} for {fs}: {why}", echo(opt)));
        if let Some(why) = refusal(MOUNT_REFUSED, key, opt) {
            return Err(bad(format!("refused: {why}")));
        }
        let Some((_, val)) = COMMON_MOUNT.iter().chain(specific).find(|(n, _)| *n == key) else {
            return Err(bad(format!(
                "not allowed (allowed: {} {})",
                names(COMMON_MOUNT),
                names(specific)
            )));
        };
        match (val, value) {
            (Val::Flag, None) => {}
            (Val::Flag, Some(_)) => return Err(bad("takes no value".into())),
            (_, None) => return Err(bad("needs a value".into())),
            (val, Some(v)) => check(*val, v, MOUNT_REFUSED).map_err(bad)?,
        }
        out.push(opt.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use FsType::{Ext4, Xfs};

    fn mkfs(fs: FsType, raw: &str) -> std::result::Result<Vec<String>, String> {
        mkfs_args(fs, "parameters.mkfsOptions", raw).map_err(|e| {
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            e.to_string()
        })
    }

    fn mount(fs: FsType, opts: &[&str]) -> std::result::Result<Vec<String>, String> {
        mount_options(fs, "parameters.mountOptions", opts).map_err(|e| {
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            e.to_string()
        })
    }

    #[test]
    fn mkfs_allowed_options_are_normalised_argv() {
        let table: &[(FsType, &str, &[&str])] = &[
            (Ext4, "", &[]),
            (Ext4, "  ", &[]),
            (Ext4, "-b 4096", &["-b", "4096"]),
            (Ext4, "-b4096 -m0", &["-b", "4096", "-m", "0"]),
            (
                Ext4,
                "-m 0.5 -i 16384 -I 256",
                &["-m", "0.5", "-i", "16384", "-I", "256"],
            ),
            (Ext4, "-L data_01 -j", &["-L", "data_01", "-j"]),
            (
                Ext4,
                "-O ^has_journal,metadata_csum,64bit",
                &["-O", "^has_journal,metadata_csum,64bit"],
            ),
            (
                Ext4,
                "-E stride=16,stripe_width=64,nodiscard,root_owner=1000:1000",
                &[
                    "-E",
                    "stride=16,stripe_width=64,nodiscard,root_owner=1000:1000",
                ],
            ),
            (
                Ext4,
                "-J size=16 -T largefile",
                &["-J", "size=16", "-T", "largefile"],
            ),
            (
                Ext4,
                "-e remount-ro -N 4096",
                &["-e", "remount-ro", "-N", "4096"],
            ),
            (Xfs, "-b size=4096", &["-b", "size=4096"]),
            (
                Xfs,
                "-m crc=1,reflink=1 -i size=512,maxpct=25",
                &["-m", "crc=1,reflink=1", "-i", "size=512,maxpct=25"],
            ),
            (
                Xfs,
                "-d su=64k,sw=4,agcount=8 -l size=64m,lazy-count=1",
                &["-d", "su=64k,sw=4,agcount=8", "-l", "size=64m,lazy-count=1"],
            ),
            (
                Xfs,
                "-n ftype=1 -L vol1 -K",
                &["-n", "ftype=1", "-L", "vol1", "-K"],
            ),
        ];
        for (fs, raw, want) in table {
            assert_eq!(mkfs(*fs, raw).unwrap(), *want, "{fs} {raw:?}");
        }
    }

    #[test]
    fn mkfs_refuses_paths_devices_and_unknowns_naming_them() {
        // (fs, options, what the message must name)
        let table: &[(FsType, &str, &str)] = &[
            (Xfs, "-l logdev=/dev/loop0,size=64m", "logdev=/dev/loop0"),
            (Xfs, "-l internal=0", "internal=0"),
            (Xfs, "-r rtdev=/dev/sdb", "-r"),
            (Xfs, "-p /etc", "-p"),
            (Xfs, "-p file=/etc/protofile", "-p"),
            (Xfs, "-d name=/etc/passwd", "name=/etc/passwd"),
            (Xfs, "-d file,name=/tmp/x,size=1g", "file"),
            (Xfs, "-m uuid=0f7a0b6a-4cd6-4a24-8f0d-3b9b3b1e2f55", "uuid="),
            (Xfs, "-f", "-f"),
            (Xfs, "-N", "-N"),
            (Xfs, "-c options=/etc/xfs.conf", "-c"),
            (Xfs, "-b size=1000", "size=1000"),
            (Xfs, "-L", "-L"),
            (Xfs, "-L way-too-long-label", "way-too-long-label"),
            (Ext4, "-d /etc", "-d"),
            (Ext4, "-d/etc", "-d/etc"),
            (Ext4, "-J device=/dev/sdb", "device=/dev/sdb"),
            (Ext4, "-J location=0", "location=0"),
            (Ext4, "-E offset=4096", "offset=4096"),
            (Ext4, "-E root_owner=../x", "root_owner"),
            (Ext4, "-O journal_dev", "journal_dev"),
            (Ext4, "-O ^has_journal,bogus", "bogus"),
            (Ext4, "-l /etc/badblocks", "-l"),
            (Ext4, "-z /tmp/undo", "-z"),
            (Ext4, "-M /mnt", "-M"),
            (Ext4, "-U 0f7a0b6a-4cd6-4a24-8f0d-3b9b3b1e2f55", "-U"),
            (Ext4, "-S", "-S"),
            (Ext4, "-e panic", "panic"),
            (Ext4, "-F", "-F"),
            (Ext4, "-jF", "-jF"),
            (Ext4, "-t ext2", "-t"),
            (Ext4, "-b 8192", "8192"),
            (Ext4, "-b -4096", "-4096"),
            (Ext4, "-m 51", "51"),
            (Ext4, "-m 1e1", "1e1"),
            (Ext4, "-L -F", "-F"),
            (Ext4, "-L a/b", "a/b"),
            (Ext4, "-L $(reboot)", "$(reboot)"),
            (Ext4, "/dev/sda", "/dev/sda"),
            (Ext4, "-b 4096 /dev/sda", "/dev/sda"),
            (Ext4, "--", "--"),
            (Ext4, "--help", "--help"),
            (Ext4, "-", "\"-\""),
            (Ext4, "-b", "needs a value"),
            (
                Ext4,
                "-i 99999999999999999999999",
                "99999999999999999999999",
            ),
        ];
        for (fs, raw, named) in table {
            let m = mkfs(*fs, raw).expect_err(raw);
            assert!(
                m.starts_with("parameters.mkfsOptions: ") && m.contains(named),
                "{fs} {raw:?}: {m}"
            );
        }
        // ext4 options are not xfs options, and the other way round.
        assert!(mkfs(Xfs, "-m 0").is_err());
        assert!(mkfs(Ext4, "-b size=4096").is_err());
    }

    #[test]
    fn mount_options_allowed_and_dropped() {
        let table: &[(FsType, &[&str], &[&str])] = &[
            (Ext4, &[], &[]),
            (
                Ext4,
                &["noatime", "nodev,nosuid"],
                &["noatime", "nodev", "nosuid"],
            ),
            (Ext4, &[" noatime , discard ,"], &["noatime", "discard"]),
            (
                Ext4,
                &["errors=remount-ro,data=journal,commit=30,barrier"],
                &["errors=remount-ro", "data=journal", "commit=30", "barrier"],
            ),
            (Ext4, &["rw,defaults,suid,dev,exec,async"], &[]),
            (Ext4, &["ro", "rw"], &["ro"]),
            (
                Xfs,
                &["noatime,logbufs=8,logbsize=256k,nouuid"],
                &["noatime", "logbufs=8", "logbsize=256k", "nouuid"],
            ),
            (
                Xfs,
                &["inode64,allocsize=64m,prjquota"],
                &["inode64", "allocsize=64m", "prjquota"],
            ),
        ];
        for (fs, opts, want) in table {
            assert_eq!(mount(*fs, opts).unwrap(), *want, "{fs} {opts:?}");
        }
    }

    #[test]
    fn mount_options_refused_naming_them() {
        let table: &[(FsType, &str, &str)] = &[
            (Ext4, "errors=panic", "errors=panic"),
            (Ext4, "noatime,errors=panic", "errors=panic"),
            (Xfs, "errors=panic", "errors=panic"),
            (Ext4, "journal_path=/dev/sdb", "journal_path=/dev/sdb"),
            (Ext4, "journal_dev=2049", "journal_dev=2049"),
            (Ext4, "usrjquota=/etc/shadow", "usrjquota"),
            (Ext4, "grpjquota=aquota.group", "grpjquota"),
            (Ext4, "jqfmt=vfsv1", "jqfmt"),
            (Ext4, "noload", "noload"),
            (Ext4, "norecovery", "norecovery"),
            (Ext4, "nobarrier", "nobarrier"),
            (Ext4, "barrier=0", "barrier=0"),
            (Ext4, "abort", "abort"),
            (Ext4, "sb=8193", "sb=8193"),
            (Ext4, "dax", "dax"),
            (Ext4, "dax=always", "dax=always"),
            (Ext4, "remount", "remount"),
            (Ext4, "bind", "bind"),
            (Ext4, "shared", "shared"),
            (Ext4, "commit=3000", "commit=3000"),
            (Ext4, "commit=abc", "commit=abc"),
            (Ext4, "noatime=1", "noatime=1"),
            (Ext4, "errors", "errors"),
            (Ext4, "context=system_u:object_r:foo_t", "context="),
            (Ext4, "logbufs=8", "logbufs=8"),
            (Xfs, "logdev=/dev/sdb", "logdev=/dev/sdb"),
            (Xfs, "rtdev=/dev/sdc", "rtdev=/dev/sdc"),
            (Xfs, "norecovery", "norecovery"),
            (Xfs, "data=journal", "data=journal"),
            (Xfs, "logbufs=9", "logbufs=9"),
            (Xfs, "allocsize=/x", "allocsize=/x"),
        ];
        for (fs, opt, named) in table {
            let m = mount(*fs, &[opt]).expect_err(opt);
            assert!(
                m.starts_with("parameters.mountOptions: ") && m.contains(named),
                "{fs} {opt:?}: {m}"
            );
        }
    }

    #[test]
    fn refusals_echo_at_most_a_bounded_prefix() {
        let huge = format!("-L {}", "x".repeat(10_000));
        let m = mkfs(Ext4, &huge).unwrap_err();
        assert!(m.len() < 600, "{} bytes", m.len());
        let m = mount(Ext4, &[&"y".repeat(10_000)]).unwrap_err();
        assert!(m.len() < 1500, "{} bytes", m.len());
    }
}
