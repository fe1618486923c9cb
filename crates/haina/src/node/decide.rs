//! Pure decisions: given what the kernel holds ([`View`]), the node's record
//! and a request, what must be done. No I/O here; every function is
//! table-tested below, and the executor ([`super::plan`]) does the rest.

use std::path::{Path, PathBuf};

use haina_sys::fs::{FsType, Probe};
use haina_sys::superblock::Superblock;

use super::view::{AtPath, Held, View};

/// Staging a filesystem volume at `staging`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageFs {
    /// Our filesystem is mounted there already.
    Done(Held),
    Mount,
    /// A foreign mount sits at the staging path.
    Occupied(String),
    /// The volume is staged (or still published) elsewhere.
    Elsewhere(Vec<PathBuf>),
    /// The volume is staged as a raw block device.
    AsBlock(PathBuf),
}

pub fn stage_fs(view: &View, staging: &Path) -> StageFs {
    match view.at(staging) {
        AtPath::Ours(h) if !h.devnode => return StageFs::Done(h),
        AtPath::Ours(h) => return StageFs::AsBlock(h.mount_point),
        AtPath::Foreign(what) => return StageFs::Occupied(what),
        AtPath::Nothing => {}
    }
    if let Some(h) = view.held().find(|h| h.devnode) {
        return StageFs::AsBlock(h.mount_point.clone());
    }
    let elsewhere: Vec<PathBuf> = view.held().map(|h| h.mount_point.clone()).collect();
    if !elsewhere.is_empty() {
        return StageFs::Elsewhere(elsewhere);
    }
    StageFs::Mount
}

/// Staging a raw block volume: its device node bound at `file`
/// (`<staging>/<volume-id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageBlock {
    Done,
    Bind,
    Occupied(String),
    /// Mounted with a filesystem somewhere: exposing the raw device beside
    /// a mounted filesystem corrupts it.
    AsFilesystem(PathBuf),
    /// Staged at another staging path (per the node's record).
    Elsewhere(PathBuf),
}

pub fn stage_block(view: &View, file: &Path, recorded: Option<&Path>) -> StageBlock {
    match view.at(file) {
        AtPath::Ours(h) if h.devnode => return StageBlock::Done,
        AtPath::Ours(h) => return StageBlock::AsFilesystem(h.mount_point),
        AtPath::Foreign(what) => return StageBlock::Occupied(what),
        AtPath::Nothing => {}
    }
    if let Some(h) = view.held().find(|h| !h.devnode) {
        return StageBlock::AsFilesystem(h.mount_point.clone());
    }
    if let Some(other) = recorded.filter(|r| *r != file)
        && view.held().any(|h| h.mount_point == other)
    {
        return StageBlock::Elsewhere(other.to_path_buf());
    }
    StageBlock::Bind
}

/// What to do about the filesystem on a device before mounting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Use the filesystem that is there.
    Use(FsType),
    /// Make a filesystem (with the node's recorded UUID).
    Make,
    /// Never format this: say why.
    Refuse(String),
}

/// Decides whether to make a filesystem. mkfs runs only on a device the
/// probe positively reports blank, or on one holding a filesystem *this
/// node* started making (its recorded UUID) that is still pristine. Any
/// other filesystem is used as it is (if it is the requested kind); other
/// signatures are never overwritten.
pub fn format(
    probe: &Probe,
    superblock: Option<&Superblock>,
    mkfs_uuid: &str,
    wanted: FsType,
    explicit: bool,
) -> Format {
    match probe {
        Probe::Blank => Format::Make,
        Probe::Filesystem { fs_type, uuid } => {
            let ours_unfinished = uuid.as_deref() == Some(mkfs_uuid)
                && superblock.is_some_and(|sb| sb.uuid == mkfs_uuid && sb.pristine);
            if ours_unfinished {
                return Format::Make;
            }
            let Ok(found) = fs_type.parse::<FsType>() else {
                return Format::Refuse(format!(
                    "it holds a {fs_type} filesystem, which haina does not mount; refusing to reformat it"
                ));
            };
            if explicit && found != wanted {
                return Format::Refuse(format!(
                    "it already holds {}, not the requested {}; refusing to reformat it",
                    found.as_str(),
                    wanted.as_str()
                ));
            }
            Format::Use(found)
        }
        Probe::Other { what } => Format::Refuse(format!("it holds {what}; refusing to format it")),
    }
}

/// Publishing the volume at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    Done,
    Bind,
    NotStaged(String),
    /// Something incompatible is at the target (ALREADY_EXISTS).
    Conflict(String),
}

/// `source` is what publish binds from: the staging path (filesystem) or
/// the staged device-node file (block).
pub fn publish(view: &View, source: &Path, target: &Path, block: bool, readonly: bool) -> Publish {
    let staged = match view.at(source) {
        AtPath::Ours(h) if h.devnode == block => h,
        AtPath::Ours(_) if block => {
            return Publish::NotStaged(format!(
                "it is staged with a filesystem at {}; a raw block publish would expose the \
                 device under a mounted filesystem",
                source.display()
            ));
        }
        AtPath::Ours(_) => {
            return Publish::NotStaged(format!(
                "it is staged as a raw block device at {}",
                source.display()
            ));
        }
        _ => {
            // A block volume staged the other way shows up at the other path.
            let other = view.held().find(|h| h.devnode != block);
            return Publish::NotStaged(match other {
                Some(h) if block => format!(
                    "it is staged with a filesystem at {}, not as a raw block device",
                    h.mount_point.display()
                ),
                Some(h) => format!(
                    "it is staged as a raw block device at {}, not with a filesystem",
                    h.mount_point.display()
                ),
                None => format!("nothing of it is mounted at {}", source.display()),
            });
        }
    };
    let readonly = readonly || (staged.read_only && !block);
    match view.at(target) {
        AtPath::Nothing => Publish::Bind,
        AtPath::Ours(h) if h.devnode == block && h.read_only == readonly => Publish::Done,
        AtPath::Ours(h) => Publish::Conflict(format!(
            "target_path {} is already published {}{}",
            target.display(),
            if h.devnode {
                "as a raw block device, "
            } else {
                ""
            },
            if h.read_only {
                "read-only"
            } else {
                "read-write"
            }
        )),
        AtPath::Foreign(what) => Publish::Conflict(format!(
            "target_path {} already has {what} mounted",
            target.display()
        )),
    }
}

/// The mounts of an unstage, top first, and whether it may detach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstage {
    /// Unmount these (in order), then detach and forget the volume.
    Teardown(Vec<PathBuf>),
    /// Still in use at these paths: unpublish first.
    InUse(Vec<PathBuf>),
    /// Staged somewhere else; nothing of it is here (the spec's OK).
    NotHere(PathBuf),
    /// The volume's staging mount sits under a mount it does not own:
    /// nothing may be unmounted or detached under it.
    Covered(String),
}

/// `staging` is the requested path; `file` the block bind inside it;
/// `recorded` the staging path in the node's record, if any.
pub fn unstage(view: &View, staging: &Path, file: &Path, recorded: Option<&Path>) -> Unstage {
    // Our mounts stacked at the staging path (or its block file), top first;
    // a foreign mount on top stops the walk and stays.
    let mut ours = Vec::new();
    for path in [file, staging] {
        for e in view.table.all_at(path).into_iter().rev() {
            if !view.is_ours(e) {
                break;
            }
            ours.push(path.to_path_buf());
        }
    }
    // Our mounts at these paths that the walk did not reach lie under a
    // foreign one.
    let here = [staging, file];
    let hidden = view
        .held()
        .filter(|h| here.contains(&h.mount_point.as_path()))
        .count()
        > ours.len();
    if hidden {
        let top = [file, staging]
            .into_iter()
            .find_map(|p| match view.at(p) {
                AtPath::Foreign(what) => Some(format!("{what} at {}", p.display())),
                _ => None,
            })
            .unwrap_or_else(|| "another mount".into());
        return Unstage::Covered(top);
    }
    let users: Vec<PathBuf> = view
        .elsewhere(&here)
        .map(|h| h.mount_point.clone())
        .collect();
    if let Some(r) = recorded.filter(|r| *r != staging)
        && ours.is_empty()
        && !users.is_empty()
    {
        return Unstage::NotHere(r.to_path_buf());
    }
    if !users.is_empty() {
        return Unstage::InUse(users);
    }
    Unstage::Teardown(ours)
}

/// Unpublishing `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpublish {
    /// Unmount the volume's mounts at the target (top first), then remove
    /// the target.
    Unmount(usize),
    /// Nothing of the volume is mounted there: remove an empty target.
    Remove,
    /// A foreign mount (or the volume's own staging mount) is there: touch
    /// nothing.
    Leave(String),
}

pub fn unpublish(view: &View, target: &Path, staging: Option<&Path>) -> Unpublish {
    if let Some(s) = staging
        && super::paths::nested(target, s)
    {
        return Unpublish::Leave(format!(
            "{} is the volume's staging path, not a publish target",
            target.display()
        ));
    }
    let n = view
        .table
        .all_at(target)
        .into_iter()
        .rev()
        .take_while(|e| view.is_ours(e))
        .count();
    match (n, view.at(target)) {
        (0, AtPath::Foreign(what)) => Unpublish::Leave(format!("{what} is mounted there")),
        (0, _) => Unpublish::Remove,
        (n, _) => Unpublish::Unmount(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haina_sys::mountinfo::MountTable;

    /// A table with the volume's device 7:3 staged at /stage, published at
    /// /pods/a (rw) and /pods/b (ro); a raw block bind of 7:4 at
    /// /bstage/v; foreign mounts at /dev/shm and /pods/c.
    const TABLE: &str = "\
1 0 254:0 / / rw - ext4 /dev/vda rw
20 1 0:5 / /dev rw - devtmpfs udev rw
21 20 0:22 / /dev/shm rw - tmpfs tmpfs rw
30 1 7:3 / /stage rw - ext4 /dev/loop3 rw
31 1 7:3 / /pods/a rw - ext4 /dev/loop3 rw
32 1 7:3 / /pods/b ro - ext4 /dev/loop3 rw
33 1 0:40 / /pods/c rw - tmpfs tmpfs rw
40 1 0:5 /loop4 /bstage/v rw - devtmpfs udev rw
41 1 7:9 / /errs rw - ext4 /dev/loop9 ro
";

    fn held(mp: &str, devnode: bool, ro: bool) -> Held {
        Held {
            mount_point: mp.into(),
            devnode,
            read_only: ro,
            fs_errors: false,
            device: if devnode { "/dev/loop4" } else { "/dev/loop3" }.into(),
            fs_type: if devnode { "devtmpfs" } else { "ext4" }.into(),
        }
    }

    /// The view of the filesystem volume on loop3.
    fn fs_view() -> View {
        View::from_parts(
            MountTable::parse(TABLE).unwrap(),
            vec![
                (30, held("/stage", false, false)),
                (31, held("/pods/a", false, false)),
                (32, held("/pods/b", false, true)),
            ],
        )
    }

    /// The view of the block volume on loop4.
    fn block_view() -> View {
        View::from_parts(
            MountTable::parse(TABLE).unwrap(),
            vec![(40, held("/bstage/v", true, false))],
        )
    }

    fn none_view() -> View {
        View::from_parts(MountTable::parse(TABLE).unwrap(), vec![])
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn stage_filesystem() {
        assert!(matches!(
            stage_fs(&fs_view(), &p("/stage")),
            StageFs::Done(_)
        ));
        assert_eq!(
            stage_fs(&fs_view(), &p("/stage2")),
            StageFs::Elsewhere(vec![p("/stage"), p("/pods/a"), p("/pods/b")])
        );
        assert_eq!(stage_fs(&none_view(), &p("/stage2")), StageFs::Mount);
        assert!(matches!(
            stage_fs(&none_view(), &p("/dev/shm")),
            StageFs::Occupied(m) if m.contains("tmpfs")
        ));
        assert_eq!(
            stage_fs(&block_view(), &p("/stage2")),
            StageFs::AsBlock(p("/bstage/v"))
        );
    }

    #[test]
    fn stage_raw_block() {
        let v = block_view();
        assert_eq!(stage_block(&v, &p("/bstage/v"), None), StageBlock::Done);
        assert_eq!(
            stage_block(&v, &p("/other/v"), Some(&p("/bstage/v"))),
            StageBlock::Elsewhere(p("/bstage/v"))
        );
        assert_eq!(
            stage_block(&fs_view(), &p("/x/v"), None),
            StageBlock::AsFilesystem(p("/stage"))
        );
        assert_eq!(
            stage_block(&none_view(), &p("/x/v"), None),
            StageBlock::Bind
        );
        assert!(matches!(
            stage_block(&none_view(), &p("/pods/c"), None),
            StageBlock::Occupied(_)
        ));
    }

    fn sb(uuid: &str, pristine: bool) -> Superblock {
        Superblock {
            fs: FsType::Ext4,
            size: 1 << 30,
            uuid: uuid.into(),
            pristine,
        }
    }

    #[test]
    fn format_only_blank_or_our_own_unfinished_mkfs() {
        let ext4 = |uuid: &str| Probe::Filesystem {
            fs_type: "ext4".into(),
            uuid: Some(uuid.into()),
        };
        let f =
            |probe: &Probe, sb: Option<&Superblock>| format(probe, sb, "ours", FsType::Ext4, true);
        assert_eq!(f(&Probe::Blank, None), Format::Make);
        // Our interrupted mkfs, never mounted: make it again.
        assert_eq!(f(&ext4("ours"), Some(&sb("ours", true))), Format::Make);
        // Ours, but mounted since (by another node after this one died): keep it.
        assert_eq!(
            f(&ext4("ours"), Some(&sb("ours", false))),
            Format::Use(FsType::Ext4)
        );
        // Someone else's filesystem, even pristine: keep it.
        assert_eq!(
            f(&ext4("theirs"), Some(&sb("theirs", true))),
            Format::Use(FsType::Ext4)
        );
        // blkid and the superblock disagree: do not trust either to format.
        assert_eq!(
            f(&ext4("ours"), Some(&sb("other", true))),
            Format::Use(FsType::Ext4)
        );
        assert_eq!(f(&ext4("ours"), None), Format::Use(FsType::Ext4));
        let xfs = Probe::Filesystem {
            fs_type: "xfs".into(),
            uuid: None,
        };
        assert!(matches!(f(&xfs, None), Format::Refuse(m) if m.contains("xfs")));
        assert_eq!(
            format(&xfs, None, "ours", FsType::Ext4, false),
            Format::Use(FsType::Xfs)
        );
        let swap = Probe::Filesystem {
            fs_type: "swap".into(),
            uuid: None,
        };
        assert!(matches!(f(&swap, None), Format::Refuse(_)));
        let gpt = Probe::Other {
            what: "partition table (gpt)".into(),
        };
        assert!(matches!(f(&gpt, None), Format::Refuse(m) if m.contains("gpt")));
    }

    #[test]
    fn publish_table() {
        let v = fs_view();
        let pubf = |t: &str, ro| publish(&v, &p("/stage"), &p(t), false, ro);
        assert_eq!(pubf("/pods/new", false), Publish::Bind);
        assert_eq!(pubf("/pods/a", false), Publish::Done);
        assert_eq!(pubf("/pods/b", true), Publish::Done);
        assert!(matches!(pubf("/pods/a", true), Publish::Conflict(_)));
        assert!(matches!(pubf("/pods/c", false), Publish::Conflict(m) if m.contains("tmpfs")));
        assert!(matches!(
            publish(&v, &p("/elsewhere"), &p("/x"), false, false),
            Publish::NotStaged(_)
        ));
        // Block publish of a volume staged with a filesystem: refused.
        assert!(matches!(
            publish(&v, &p("/stage"), &p("/x"), true, false),
            Publish::NotStaged(m) if m.contains("filesystem")
        ));
        let b = block_view();
        assert_eq!(
            publish(&b, &p("/bstage/v"), &p("/pods/blk"), true, false),
            Publish::Bind
        );
        assert!(matches!(
            publish(&b, &p("/bstage"), &p("/pods/fs"), false, false),
            Publish::NotStaged(m) if m.contains("raw block")
        ));
    }

    #[test]
    fn unstage_table() {
        let v = fs_view();
        assert_eq!(
            unstage(&v, &p("/stage"), &p("/stage/id"), Some(&p("/stage"))),
            Unstage::InUse(vec![p("/pods/a"), p("/pods/b")])
        );
        // Not staged here, staged elsewhere: nothing to do.
        assert_eq!(
            unstage(&v, &p("/other"), &p("/other/id"), Some(&p("/stage"))),
            Unstage::NotHere(p("/stage"))
        );
        let only_staged = View::from_parts(
            MountTable::parse(TABLE).unwrap(),
            vec![(30, held("/stage", false, false))],
        );
        assert_eq!(
            unstage(&only_staged, &p("/stage"), &p("/stage/id"), None),
            Unstage::Teardown(vec![p("/stage")])
        );
        // A foreign mount at the staging path is never ours to unmount.
        assert_eq!(
            unstage(&none_view(), &p("/dev/shm"), &p("/dev/shm/id"), None),
            Unstage::Teardown(vec![])
        );
        assert_eq!(
            unstage(&block_view(), &p("/bstage"), &p("/bstage/v"), None),
            Unstage::Teardown(vec![p("/bstage/v")])
        );
        // The staging mount under a foreign one: nothing is torn down.
        let covered = View::from_parts(
            MountTable::parse(&format!("{TABLE}50 30 0:60 / /stage rw - tmpfs tmpfs rw\n"))
                .unwrap(),
            vec![(30, held("/stage", false, false))],
        );
        assert!(matches!(
            unstage(&covered, &p("/stage"), &p("/stage/id"), Some(&p("/stage"))),
            Unstage::Covered(m) if m.contains("tmpfs")
        ));
    }

    #[test]
    fn unpublish_only_what_is_ours() {
        let v = fs_view();
        let s = Some(p("/stage"));
        assert_eq!(
            unpublish(&v, &p("/pods/a"), s.as_deref()),
            Unpublish::Unmount(1)
        );
        assert_eq!(
            unpublish(&v, &p("/pods/none"), s.as_deref()),
            Unpublish::Remove
        );
        assert!(matches!(
            unpublish(&v, &p("/pods/c"), s.as_deref()),
            Unpublish::Leave(m) if m.contains("tmpfs")
        ));
        assert!(matches!(
            unpublish(&v, &p("/dev/shm"), s.as_deref()),
            Unpublish::Leave(_)
        ));
        assert!(matches!(
            unpublish(&v, &p("/"), s.as_deref()),
            Unpublish::Leave(_)
        ));
        // The staging mount is never taken down by an unpublish.
        assert!(matches!(
            unpublish(&v, &p("/stage"), s.as_deref()),
            Unpublish::Leave(m) if m.contains("staging")
        ));
        // Another volume's publish target: not ours.
        assert!(matches!(
            unpublish(&block_view(), &p("/pods/a"), None),
            Unpublish::Leave(_)
        ));
        assert!(matches!(
            unpublish(&block_view(), &p("/bstage/v"), Some(&p("/bstage"))),
            Unpublish::Leave(m) if m.contains("staging")
        ));
    }
}
