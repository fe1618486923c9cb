//! [`FakeHost`]: a small in-memory kernel for unit tests of node logic.
//!
//! It models just enough of Linux for staging decisions to be exercised
//! without root: a tree of directories, files, symlinks and device nodes; a
//! mount table (filesystem mounts, bind mounts of directories and of device
//! nodes, stacking, busy parents); loop devices over backing files, with
//! deferred detach of a busy device and backing files deleted while
//! attached; and the content of each backing file (blank, a filesystem with
//! a UUID and a pristine flag, or something else).
//!
//! Every call is appended to one ordered list ([`FakeHost::calls`]), so a
//! test can assert the order of mounts and unmounts, and that a call was
//! never made (e.g. no unmount of `/`). [`Rule`]s make any call fail with an
//! errno or hang (return [`Stalled`] as a real deadline would), before or
//! after its effect, once or always.
//!
//! Backing files may live in this model or on the real filesystem (a test's
//! temp dir), so a real local pool can be driven through a fake kernel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::blockdev::{Device, Kind};
use crate::deadline::Stalled;
use crate::fs::{FsType, Probe, Usage};
use crate::host::{FileKind, Host, HostError, HostResult};
use crate::loopdev::{AttachOptions, LoopDevice, LoopError};
use crate::mountinfo::{MountEntry, MountTable};
use crate::superblock::Superblock;
use crate::throttle::{DevNum, IoLimits, Throttle};

/// One call into the host, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    MountTable,
    Lstat(PathBuf),
    Canonicalize(PathBuf),
    DirIsEmpty(PathBuf),
    Statvfs(PathBuf),
    DeviceSize(PathBuf),
    Probe(PathBuf),
    Superblock(PathBuf),
    NewUuid,
    Loops,
    CreateDirAll(PathBuf),
    CreateFile(PathBuf),
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    Mount {
        source: PathBuf,
        target: PathBuf,
        fs_type: String,
        read_only: bool,
        data: String,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    RemountReadOnly(PathBuf),
    Unmount {
        target: PathBuf,
        lazy: bool,
    },
    Mkfs {
        dev: PathBuf,
        fs: FsType,
        args: Vec<String>,
        uuid: String,
    },
    Fsck(PathBuf),
    Grow {
        dev: PathBuf,
        mount_point: PathBuf,
    },
    Freeze(PathBuf),
    Thaw(PathBuf),
    LoopAttach(PathBuf),
    LoopDetach(PathBuf),
    LoopRefresh(u32),
    LoopAutoclear(u32),
    ThrottleGet(DevNum),
    ThrottleSet(DevNum, IoLimits),
}

impl Call {
    /// Whether the call changes the machine (as opposed to looking at it).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Call::MountTable
                | Call::Lstat(_)
                | Call::Canonicalize(_)
                | Call::DirIsEmpty(_)
                | Call::Statvfs(_)
                | Call::DeviceSize(_)
                | Call::Probe(_)
                | Call::Superblock(_)
                | Call::NewUuid
                | Call::Loops
                | Call::ThrottleGet(_)
        )
    }

    /// The path the call acts on, if any (for rules and error messages).
    pub fn path(&self) -> Option<&Path> {
        Some(match self {
            Call::Lstat(p)
            | Call::Canonicalize(p)
            | Call::DirIsEmpty(p)
            | Call::Statvfs(p)
            | Call::DeviceSize(p)
            | Call::Probe(p)
            | Call::Superblock(p)
            | Call::CreateDirAll(p)
            | Call::CreateFile(p)
            | Call::RemoveDir(p)
            | Call::RemoveFile(p)
            | Call::RemountReadOnly(p)
            | Call::Fsck(p)
            | Call::Freeze(p)
            | Call::Thaw(p)
            | Call::LoopAttach(p)
            | Call::LoopDetach(p) => p,
            Call::Mount { target, .. } | Call::Bind { target, .. } => target,
            Call::Unmount { target, .. } => target,
            Call::Mkfs { dev, .. } | Call::Grow { dev, .. } => dev,
            _ => return None,
        })
    }

    fn op(&self) -> &'static str {
        match self {
            Call::MountTable => "read mountinfo",
            Call::Lstat(_) => "lstat",
            Call::Canonicalize(_) => "realpath",
            Call::DirIsEmpty(_) => "readdir",
            Call::Statvfs(_) => "statvfs",
            Call::DeviceSize(_) => "BLKGETSIZE64",
            Call::Probe(_) => "probe",
            Call::Superblock(_) => "read superblock",
            Call::NewUuid => "uuid",
            Call::Loops => "list loops",
            Call::CreateDirAll(_) => "mkdir",
            Call::CreateFile(_) => "create",
            Call::RemoveDir(_) => "rmdir",
            Call::RemoveFile(_) => "unlink",
            Call::Mount { .. } => "mount",
            Call::Bind { .. } => "bind",
            Call::RemountReadOnly(_) => "remount-ro",
            Call::Unmount { .. } => "umount",
            Call::Mkfs { .. } => "mkfs",
            Call::Fsck(_) => "fsck",
            Call::Grow { .. } => "grow",
            Call::Freeze(_) => "freeze",
            Call::Thaw(_) => "thaw",
            Call::LoopAttach(_) => "losetup",
            Call::LoopDetach(_) => "losetup -d",
            Call::LoopRefresh(_) => "LOOP_SET_CAPACITY",
            Call::LoopAutoclear(_) => "LOOP_SET_STATUS64",
            Call::ThrottleGet(_) => "read I/O limits",
            Call::ThrottleSet(..) => "set I/O limits",
        }
    }
}

/// What a matching [`Rule`] does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail with this errno; the call has no effect.
    Fail(Errno),
    /// Do not return in time (a stalled data path); no effect.
    Hang,
    /// Take effect, then do not return in time (e.g. an unmount that is
    /// gone from the table but stuck flushing a dead device).
    HangAfter,
}

/// A fault to inject: calls matching `when` get `action`.
pub struct Rule {
    when: Box<dyn Fn(&Call) -> bool + Send>,
    action: Action,
    once: bool,
}

impl Rule {
    pub fn new(when: impl Fn(&Call) -> bool + Send + 'static, action: Action) -> Self {
        Rule {
            when: Box::new(when),
            action,
            once: false,
        }
    }

    /// Applies to the first matching call only.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }
}

/// A backing file's content, as probes and superblock reads see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Blank,
    Fs {
        fs: FsType,
        uuid: String,
        size: u64,
        pristine: bool,
    },
    /// A partition table or other signature haina never formats.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Disk {
    size: u64,
    content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(PathBuf),
    Block(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Loop {
    backing: PathBuf,
    deleted: bool,
    /// Detaches itself on its last close (LO_FLAGS_AUTOCLEAR, which
    /// LOOP_CLR_FD on a busy device also sets): gone on its last unmount.
    autoclear: bool,
}

struct State {
    calls: Vec<Call>,
    rules: Vec<Rule>,
    nodes: BTreeMap<PathBuf, Node>,
    mounts: Vec<MountEntry>,
    next_mount_id: u32,
    loops: BTreeMap<u32, Loop>,
    disks: HashMap<PathBuf, Disk>,
    frozen: Vec<PathBuf>,
    uuids: u32,
    /// Block-layer I/O rules by device (the kernel keeps them across a
    /// detach: a loop device keeps its number).
    throttles: BTreeMap<DevNum, IoLimits>,
}

/// The in-memory kernel. See the module doc.
pub struct FakeHost {
    state: Mutex<State>,
}

const LOOP_MAJOR: u32 = 7;
/// Default size of a backing file nobody described.
const DEFAULT_SIZE: u64 = 1 << 30;

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// A machine with `/` (ext4 on 254:0), `/dev` and nothing else.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(PathBuf::from("/"), Node::Dir);
        nodes.insert(PathBuf::from("/dev"), Node::Dir);
        let root = MountEntry {
            mount_id: 1,
            parent_id: 0,
            major: 254,
            minor: 0,
            root: "/".into(),
            mount_point: "/".into(),
            mount_options: vec!["rw".into()],
            fs_type: "ext4".into(),
            source: "/dev/vda".into(),
            super_options: vec!["rw".into()],
        };
        FakeHost {
            state: Mutex::new(State {
                calls: Vec::new(),
                rules: Vec::new(),
                nodes,
                mounts: vec![root],
                next_mount_id: 2,
                loops: BTreeMap::new(),
                disks: HashMap::new(),
                frozen: Vec::new(),
                uuids: 0,
                throttles: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- setting the scene

    /// Creates a directory and its parents.
    pub fn mkdir(&self, path: impl AsRef<Path>) {
        self.lock().mkdir_all(path.as_ref());
    }

    /// Creates an empty file (and its parent directories).
    pub fn touch(&self, path: impl AsRef<Path>) {
        let mut s = self.lock();
        let p = path.as_ref();
        if let Some(parent) = p.parent() {
            s.mkdir_all(parent);
        }
        s.nodes.insert(p.to_path_buf(), Node::File);
    }

    /// Creates a symlink `link` → `target` (an absolute path).
    pub fn symlink(&self, link: impl AsRef<Path>, target: impl AsRef<Path>) {
        let mut s = self.lock();
        let l = link.as_ref();
        if let Some(parent) = l.parent() {
            s.mkdir_all(parent);
        }
        s.nodes.insert(
            l.to_path_buf(),
            Node::Symlink(target.as_ref().to_path_buf()),
        );
    }

    /// Describes the content and size of a backing file.
    pub fn set_disk(&self, backing: impl AsRef<Path>, size: u64, content: Content) {
        self.lock()
            .disks
            .insert(backing.as_ref().to_path_buf(), Disk { size, content });
    }

    /// The content of a backing file.
    pub fn content(&self, backing: impl AsRef<Path>) -> Content {
        self.lock().disk(backing.as_ref()).content
    }

    /// Someone deletes a backing file behind the driver's back: devices
    /// over it now show it as deleted.
    pub fn delete_backing(&self, backing: impl AsRef<Path>) {
        let mut s = self.lock();
        for l in s.loops.values_mut() {
            if l.backing == backing.as_ref() {
                l.deleted = true;
            }
        }
        s.nodes.remove(backing.as_ref());
    }

    /// A mount haina did not make (e.g. tmpfs on `/dev/shm`).
    pub fn mount_foreign(&self, target: impl AsRef<Path>, fs_type: &str, dev: (u32, u32)) {
        let mut s = self.lock();
        s.mkdir_all(target.as_ref());
        s.push_mount(
            dev,
            "/".into(),
            target.as_ref().to_path_buf(),
            fs_type,
            fs_type,
            false,
        );
    }

    /// Adds a fault; rules are tried in the order they were added.
    pub fn rule(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Removes every fault.
    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    // ---- looking at the result

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls that changed something, in order.
    pub fn changes(&self) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.is_change())
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The mount table now.
    pub fn table(&self) -> MountTable {
        MountTable {
            entries: self.lock().mounts.clone(),
        }
    }

    /// Configured loop devices: (index, backing, deleted).
    pub fn loop_devices(&self) -> Vec<(u32, PathBuf, bool)> {
        self.lock()
            .loops
            .iter()
            .map(|(i, l)| (*i, l.backing.clone(), l.deleted))
            .collect()
    }

    /// Whether something exists at `path` (no symlink resolution).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.lock().nodes.contains_key(path.as_ref())
    }

    /// The I/O rules the kernel holds now, by device (unlimited ones left out).
    pub fn throttles(&self) -> BTreeMap<DevNum, IoLimits> {
        self.lock().throttles.clone()
    }

    /// A rule someone left behind (e.g. a crash between attach and clear).
    pub fn set_throttle(&self, dev: DevNum, limits: IoLimits) {
        self.lock().throttles.insert(dev, limits);
    }

    pub fn is_frozen(&self, mount_point: impl AsRef<Path>) -> bool {
        self.lock().frozen.iter().any(|p| p == mount_point.as_ref())
    }

    /// Records `call` and applies the first matching rule. Returns the
    /// action to take, if any (the rule is consumed when `once`).
    fn enter(&self, call: Call) -> (std::sync::MutexGuard<'_, State>, Option<Action>, Call) {
        let mut s = self.lock();
        s.calls.push(call.clone());
        let hit = s.rules.iter().position(|r| (r.when)(&call));
        let action = hit.map(|i| {
            let a = s.rules[i].action;
            if s.rules[i].once {
                s.rules.remove(i);
            }
            a
        });
        (s, action, call)
    }

    /// Runs one call: rules first, then `effect` on the state.
    fn run<T>(
        &self,
        call: Call,
        effect: impl FnOnce(&mut State) -> Result<T, Errno>,
    ) -> HostResult<T> {
        let (mut s, action, call) = self.enter(call);
        let path = call.path().map(Path::to_path_buf).unwrap_or_default();
        let stalled = || {
            HostError::Stalled(Stalled {
                what: format!("{} {}", call.op(), path.display()),
                after: Duration::from_secs(30),
                stuck_for: None,
            })
        };
        match action {
            Some(Action::Fail(errno)) => Err(HostError::Sys {
                op: call.op(),
                path,
                errno,
            }),
            Some(Action::Hang) => Err(stalled()),
            Some(Action::HangAfter) => {
                let _ = effect(&mut s);
                Err(stalled())
            }
            None => effect(&mut s).map_err(|errno| HostError::Sys {
                op: call.op(),
                path,
                errno,
            }),
        }
    }
}

impl State {
    fn mkdir_all(&mut self, path: &Path) {
        let mut p = PathBuf::from("/");
        for c in path.components().skip(1) {
            p.push(c);
            self.nodes.entry(p.clone()).or_insert(Node::Dir);
        }
    }

    fn disk(&self, backing: &Path) -> Disk {
        self.disks.get(backing).cloned().unwrap_or(Disk {
            size: DEFAULT_SIZE,
            content: Content::Blank,
        })
    }

    /// Resolves symlinks in every component but (unless `follow_last`)
    /// the last. Missing intermediate components are ENOENT.
    fn resolve(&self, path: &Path, follow_last: bool) -> Result<PathBuf, Errno> {
        let mut out = PathBuf::from("/");
        let comps: Vec<Component> = path.components().collect();
        for (i, c) in comps.iter().enumerate() {
            match c {
                Component::RootDir => continue,
                Component::Normal(n) => out.push(n),
                _ => return Err(Errno::INVAL),
            }
            let last = i + 1 == comps.len();
            match self.nodes.get(&out) {
                Some(Node::Symlink(t)) if !last || follow_last => {
                    out = self.resolve(t, true)?;
                }
                Some(Node::Dir) => {}
                Some(_) if !last => return Err(Errno::NOTDIR),
                Some(_) => {}
                None if !last => return Err(Errno::NOENT),
                None => {}
            }
        }
        Ok(out)
    }

    fn kind(&self, path: &Path) -> Option<FileKind> {
        self.nodes.get(path).map(|n| match n {
            Node::Dir => FileKind::Dir,
            Node::File => FileKind::File(0),
            Node::Symlink(_) => FileKind::Symlink,
            Node::Block(a, b) => FileKind::BlockDevice(*a, *b),
        })
    }

    fn push_mount(
        &mut self,
        dev: (u32, u32),
        root: PathBuf,
        target: PathBuf,
        fs_type: &str,
        source: &str,
        read_only: bool,
    ) {
        let parent_id = self
            .mount_containing(&target)
            .map(|m| m.mount_id)
            .unwrap_or(1);
        let rw = if read_only { "ro" } else { "rw" }.to_string();
        self.mounts.push(MountEntry {
            mount_id: self.next_mount_id,
            parent_id,
            major: dev.0,
            minor: dev.1,
            root,
            mount_point: target,
            mount_options: vec![rw.clone()],
            fs_type: fs_type.into(),
            source: source.into(),
            super_options: vec![rw],
        });
        self.next_mount_id += 1;
    }

    /// The top mount whose mount point is `path` or an ancestor of it.
    fn mount_containing(&self, path: &Path) -> Option<&MountEntry> {
        self.mounts
            .iter()
            .rev()
            .filter(|m| path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.components().count())
    }

    fn loop_of_dev(&self, dev: &Path) -> Result<(u32, Loop), Errno> {
        let index = LoopDevice::from_path(dev).ok_or(Errno::NXIO)?.index;
        self.loops
            .get(&index)
            .cloned()
            .map(|l| (index, l))
            .ok_or(Errno::NXIO)
    }

    fn loop_in_use(&self, index: u32) -> bool {
        let root = PathBuf::from(format!("/loop{index}"));
        self.mounts.iter().any(|m| {
            (m.major, m.minor) == (LOOP_MAJOR, index) || (m.fs_type == "devtmpfs" && m.root == root)
        })
    }

    /// Tears down autoclear devices nobody uses any more.
    fn settle_loops(&mut self) {
        let gone: Vec<u32> = self
            .loops
            .iter()
            .filter(|(i, l)| l.autoclear && !self.loop_in_use(**i))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            self.loops.remove(&i);
        }
    }

    fn backing_exists(&self, file: &Path) -> bool {
        self.nodes.contains_key(file) || self.disks.contains_key(file) || file.exists()
    }
}

fn no_loop_err(file: &Path, errno: Errno) -> HostError {
    HostError::Loop(LoopError::Backing {
        path: file.to_path_buf(),
        source: errno.into(),
    })
}

impl Host for FakeHost {
    fn mount_table(&self) -> HostResult<MountTable> {
        self.run(Call::MountTable, |s| {
            Ok(MountTable {
                entries: s.mounts.clone(),
            })
        })
    }

    fn identify(&self, major: u32, minor: u32) -> Option<Device> {
        let s = self.lock();
        if major != LOOP_MAJOR {
            return (major, minor).eq(&(254, 0)).then(|| Device {
                major,
                minor,
                name: "vda".into(),
                kind: Kind::Other,
            });
        }
        let l = s.loops.get(&minor);
        Some(Device {
            major,
            minor,
            name: format!("loop{minor}"),
            kind: Kind::Loop {
                backing: l.map(|l| l.backing.clone()),
                deleted: l.is_some_and(|l| l.deleted),
            },
        })
    }

    fn lstat(&self, path: &Path) -> HostResult<Option<FileKind>> {
        self.run(Call::Lstat(path.into()), |s| {
            let p = match s.resolve(path, false) {
                Ok(p) => p,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            // A device node bound over a file shows the device node.
            if let Some(m) = s.mounts.iter().rev().find(|m| m.mount_point == p)
                && m.fs_type == "devtmpfs"
                && m.root != Path::new("/")
            {
                let node = Path::new("/dev").join(m.root.strip_prefix("/").unwrap_or(&m.root));
                return Ok(s.kind(&node));
            }
            Ok(s.kind(&p))
        })
    }

    fn canonicalize(&self, path: &Path) -> HostResult<PathBuf> {
        self.run(Call::Canonicalize(path.into()), |s| {
            let p = s.resolve(path, true)?;
            if s.nodes.contains_key(&p) {
                Ok(p)
            } else {
                Err(Errno::NOENT)
            }
        })
    }

    fn dir_is_empty(&self, path: &Path) -> HostResult<bool> {
        self.run(Call::DirIsEmpty(path.into()), |s| {
            match s.nodes.get(path) {
                Some(Node::Dir) => {}
                Some(_) => return Err(Errno::NOTDIR),
                None => return Err(Errno::NOENT),
            }
            Ok(!s.nodes.keys().any(|k| k.parent() == Some(path)))
        })
    }

    fn statvfs(&self, path: &Path) -> HostResult<Usage> {
        self.run(Call::Statvfs(path.into()), |s| {
            let p = s.resolve(path, true)?;
            if !s.nodes.contains_key(&p) {
                return Err(Errno::NOENT);
            }
            Ok(Usage {
                bytes_total: DEFAULT_SIZE,
                bytes_used: 1 << 20,
                bytes_available: DEFAULT_SIZE - (1 << 20),
                inodes_total: 65536,
                inodes_used: 11,
                inodes_free: 65525,
            })
        })
    }

    fn device_size(&self, dev: &Path) -> HostResult<u64> {
        self.run(Call::DeviceSize(dev.into()), |s| {
            let (_, l) = s.loop_of_dev(dev)?;
            Ok(s.disk(&l.backing).size)
        })
    }

    fn probe(&self, dev: &Path) -> HostResult<Probe> {
        self.run(Call::Probe(dev.into()), |s| {
            let (_, l) = s.loop_of_dev(dev)?;
            Ok(match s.disk(&l.backing).content {
                Content::Blank => Probe::Blank,
                Content::Fs { fs, uuid, .. } => Probe::Filesystem {
                    fs_type: fs.as_str().into(),
                    uuid: Some(uuid),
                },
                Content::Other(what) => Probe::Other { what },
            })
        })
    }

    fn superblock(&self, dev: &Path) -> HostResult<Option<Superblock>> {
        self.run(Call::Superblock(dev.into()), |s| {
            let (_, l) = s.loop_of_dev(dev)?;
            Ok(match s.disk(&l.backing).content {
                Content::Fs {
                    fs,
                    uuid,
                    size,
                    pristine,
                } => Some(Superblock {
                    fs,
                    size,
                    uuid,
                    pristine,
                }),
                _ => None,
            })
        })
    }

    fn new_uuid(&self) -> HostResult<String> {
        self.run(Call::NewUuid, |s| {
            s.uuids += 1;
            Ok(format!("00000000-0000-4000-8000-{:012x}", s.uuids))
        })
    }

    fn loops(&self) -> HostResult<Vec<(LoopDevice, PathBuf, bool)>> {
        self.run(Call::Loops, |s| {
            Ok(s.loops
                .iter()
                .map(|(i, l)| (LoopDevice { index: *i }, l.backing.clone(), l.deleted))
                .collect())
        })
    }

    fn create_dir_all(&self, path: &Path) -> HostResult<()> {
        self.run(Call::CreateDirAll(path.into()), |s| {
            let p = s.resolve(path, true)?;
            match s.nodes.get(&p) {
                Some(Node::Dir) => return Ok(()),
                Some(_) => return Err(Errno::EXIST),
                None => {}
            }
            s.mkdir_all(&p);
            Ok(())
        })
    }

    fn create_file(&self, path: &Path) -> HostResult<()> {
        self.run(Call::CreateFile(path.into()), |s| {
            let p = s.resolve(path, false)?;
            match s.nodes.get(&p) {
                Some(Node::File) => Ok(()),
                Some(Node::Symlink(_)) => Err(Errno::LOOP),
                Some(_) => Err(Errno::EXIST),
                None => match p.parent().and_then(|d| s.nodes.get(d)) {
                    Some(Node::Dir) => {
                        s.nodes.insert(p, Node::File);
                        Ok(())
                    }
                    _ => Err(Errno::NOENT),
                },
            }
        })
    }

    fn remove_dir(&self, path: &Path) -> HostResult<()> {
        self.run(Call::RemoveDir(path.into()), |s| {
            let p = s.resolve(path, false)?;
            match s.nodes.get(&p) {
                Some(Node::Dir) => {}
                Some(_) => return Err(Errno::NOTDIR),
                None => return Err(Errno::NOENT),
            }
            if s.mounts.iter().any(|m| m.mount_point == p) {
                return Err(Errno::BUSY);
            }
            if s.nodes.keys().any(|k| k.parent() == Some(&p)) {
                return Err(Errno::NOTEMPTY);
            }
            s.nodes.remove(&p);
            Ok(())
        })
    }

    fn remove_file(&self, path: &Path) -> HostResult<()> {
        self.run(Call::RemoveFile(path.into()), |s| {
            let p = s.resolve(path, false)?;
            match s.nodes.get(&p) {
                Some(Node::Dir) => return Err(Errno::ISDIR),
                None => return Err(Errno::NOENT),
                Some(_) => {}
            }
            if s.mounts.iter().any(|m| m.mount_point == p) {
                return Err(Errno::BUSY);
            }
            s.nodes.remove(&p);
            Ok(())
        })
    }

    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        flags: MountFlags,
        data: &str,
    ) -> HostResult<()> {
        let read_only = flags.contains(MountFlags::RDONLY);
        let call = Call::Mount {
            source: source.into(),
            target: target.into(),
            fs_type: fs_type.into(),
            read_only,
            data: data.into(),
        };
        self.run(call, |s| {
            let t = s.resolve(target, true)?;
            if s.nodes.get(&t) != Some(&Node::Dir) {
                return Err(Errno::NOTDIR);
            }
            let (index, l) = s.loop_of_dev(source)?;
            let mut disk = s.disk(&l.backing);
            match &mut disk.content {
                Content::Fs { fs, pristine, .. } if fs.as_str() == fs_type => {
                    if !read_only {
                        *pristine = false;
                    }
                }
                _ => return Err(Errno::INVAL),
            }
            s.disks.insert(l.backing.clone(), disk);
            s.push_mount(
                (LOOP_MAJOR, index),
                "/".into(),
                t,
                fs_type,
                &source.display().to_string(),
                read_only,
            );
            Ok(())
        })
    }

    fn bind(&self, source: &Path, target: &Path) -> HostResult<()> {
        let call = Call::Bind {
            source: source.into(),
            target: target.into(),
        };
        self.run(call, |s| {
            let src = s.resolve(source, true)?;
            let t = s.resolve(target, true)?;
            if !s.nodes.contains_key(&t) {
                return Err(Errno::NOENT);
            }
            match s.nodes.get(&src).cloned() {
                None => Err(Errno::NOENT),
                Some(Node::Block(..)) => {
                    let rel = src.strip_prefix("/dev").map_err(|_| Errno::INVAL)?;
                    let root = Path::new("/").join(rel);
                    s.push_mount((0, 5), root, t, "devtmpfs", "udev", false);
                    Ok(())
                }
                Some(_) => {
                    let m = s.mount_containing(&src).cloned().ok_or(Errno::INVAL)?;
                    let rel = src.strip_prefix(&m.mount_point).unwrap_or(Path::new(""));
                    let root = m.root.join(rel);
                    let ro = m.is_read_only();
                    s.push_mount((m.major, m.minor), root, t, &m.fs_type, &m.source, ro);
                    Ok(())
                }
            }
        })
    }

    fn remount_bind_readonly(&self, target: &Path) -> HostResult<()> {
        self.run(Call::RemountReadOnly(target.into()), |s| {
            let t = s.resolve(target, true)?;
            let m = s
                .mounts
                .iter_mut()
                .rev()
                .find(|m| m.mount_point == t)
                .ok_or(Errno::INVAL)?;
            m.mount_options = vec!["ro".into()];
            Ok(())
        })
    }

    fn unmount(&self, target: &Path, lazy: bool) -> HostResult<()> {
        let call = Call::Unmount {
            target: target.into(),
            lazy,
        };
        self.run(call, |s| {
            // UMOUNT_NOFOLLOW: a symlink at the target is not followed.
            let t = s.resolve(target, false)?;
            if t == Path::new("/") {
                return Err(Errno::BUSY);
            }
            let i = s
                .mounts
                .iter()
                .rposition(|m| m.mount_point == t)
                .ok_or(Errno::INVAL)?;
            let id = s.mounts[i].mount_id;
            let children: Vec<u32> = s
                .mounts
                .iter()
                .filter(|m| m.parent_id == id)
                .map(|m| m.mount_id)
                .collect();
            if !children.is_empty() && !lazy {
                return Err(Errno::BUSY);
            }
            s.mounts
                .retain(|m| m.mount_id != id && !children.contains(&m.mount_id));
            s.settle_loops();
            Ok(())
        })
    }

    fn mkfs(&self, dev: &Path, fs: FsType, args: &[String], uuid: &str) -> HostResult<()> {
        let call = Call::Mkfs {
            dev: dev.into(),
            fs,
            args: args.to_vec(),
            uuid: uuid.into(),
        };
        self.run(call, |s| {
            let (_, l) = s.loop_of_dev(dev)?;
            let mut disk = s.disk(&l.backing);
            disk.content = Content::Fs {
                fs,
                uuid: uuid.into(),
                size: disk.size,
                pristine: true,
            };
            s.disks.insert(l.backing, disk);
            Ok(())
        })
    }

    fn fsck(&self, dev: &Path) -> HostResult<()> {
        self.run(Call::Fsck(dev.into()), |s| s.loop_of_dev(dev).map(drop))
    }

    fn grow(&self, dev: &Path, mount_point: &Path, _fs: FsType) -> HostResult<()> {
        let call = Call::Grow {
            dev: dev.into(),
            mount_point: mount_point.into(),
        };
        self.run(call, |s| {
            let (_, l) = s.loop_of_dev(dev)?;
            let mut disk = s.disk(&l.backing);
            if let Content::Fs { size, .. } = &mut disk.content {
                *size = disk.size;
            }
            s.disks.insert(l.backing, disk);
            Ok(())
        })
    }

    fn freeze(&self, mount_point: &Path) -> HostResult<()> {
        self.run(Call::Freeze(mount_point.into()), |s| {
            if s.frozen.iter().any(|p| p == mount_point) {
                return Err(Errno::BUSY);
            }
            s.frozen.push(mount_point.into());
            Ok(())
        })
    }

    fn thaw(&self, mount_point: &Path) -> HostResult<()> {
        self.run(Call::Thaw(mount_point.into()), |s| {
            s.frozen.retain(|p| p != mount_point);
            Ok(())
        })
    }

    fn loop_attach(&self, file: &Path, opts: &AttachOptions) -> HostResult<(LoopDevice, bool)> {
        let _ = opts;
        let (mut s, action, call) = self.enter(Call::LoopAttach(file.into()));
        match action {
            Some(Action::Fail(errno)) => return Err(no_loop_err(file, errno)),
            Some(Action::Hang) => {
                return Err(HostError::Stalled(Stalled {
                    what: format!("{} {}", call.op(), file.display()),
                    after: Duration::from_secs(30),
                    stuck_for: None,
                }));
            }
            _ => {}
        }
        if let Some((i, _)) = s
            .loops
            .iter()
            .find(|(_, l)| l.backing == file && !l.deleted)
        {
            return Ok((LoopDevice { index: *i }, false));
        }
        if !s.backing_exists(file) {
            return Err(no_loop_err(file, Errno::NOENT));
        }
        let index = (0..).find(|i| !s.loops.contains_key(i)).unwrap_or(0);
        s.loops.insert(
            index,
            Loop {
                backing: file.into(),
                deleted: false,
                autoclear: false,
            },
        );
        s.nodes.insert(
            PathBuf::from(format!("/dev/loop{index}")),
            Node::Block(LOOP_MAJOR, index),
        );
        Ok((LoopDevice { index }, true))
    }

    fn loop_detach(&self, file: &Path) -> HostResult<Vec<LoopDevice>> {
        self.run(Call::LoopDetach(file.into()), |s| {
            let ours: Vec<u32> = s
                .loops
                .iter()
                .filter(|(_, l)| l.backing == file)
                .map(|(i, _)| *i)
                .collect();
            for i in &ours {
                if s.loop_in_use(*i) {
                    if let Some(l) = s.loops.get_mut(i) {
                        l.autoclear = true;
                    }
                } else {
                    s.loops.remove(i);
                }
            }
            Ok(ours.into_iter().map(|index| LoopDevice { index }).collect())
        })
    }

    fn loop_autoclear(&self, dev: &LoopDevice) -> HostResult<()> {
        self.run(Call::LoopAutoclear(dev.index), |s| {
            let l = s.loops.get_mut(&dev.index).ok_or(Errno::NXIO)?;
            l.autoclear = true;
            s.settle_loops();
            Ok(())
        })
    }

    fn loop_refresh(&self, dev: &LoopDevice) -> HostResult<u64> {
        self.run(Call::LoopRefresh(dev.index), |s| {
            let l = s.loops.get(&dev.index).ok_or(Errno::NXIO)?;
            Ok(s.disk(&l.backing).size)
        })
    }

    fn throttle_get(&self, target: &Throttle, dev: DevNum) -> HostResult<Vec<IoLimits>> {
        let n = match target {
            Throttle::V1(_) => 1,
            Throttle::V2(dirs) => dirs.len(),
        };
        self.run(Call::ThrottleGet(dev), |s| {
            Ok(vec![s.throttles.get(&dev).copied().unwrap_or_default(); n])
        })
    }

    fn throttle_set(&self, _target: &Throttle, dev: DevNum, limits: &IoLimits) -> HostResult<()> {
        self.run(Call::ThrottleSet(dev, *limits), |s| {
            if limits.is_unlimited() {
                s.throttles.remove(&dev);
            } else {
                s.throttles.insert(dev, *limits);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_lifecycle_is_modelled_and_recorded() {
        let h = FakeHost::new();
        h.mkdir("/stage");
        h.set_disk("/pool/a.img", 1 << 30, Content::Blank);
        let (dev, new) = h
            .loop_attach(Path::new("/pool/a.img"), &AttachOptions::default())
            .unwrap();
        assert!(new);
        assert_eq!(h.probe(&dev.path()).unwrap(), Probe::Blank);
        h.mkfs(&dev.path(), FsType::Ext4, &[], "u-1").unwrap();
        let sb = h.superblock(&dev.path()).unwrap().unwrap();
        assert!(sb.pristine && sb.uuid == "u-1");
        h.mount(
            &dev.path(),
            Path::new("/stage"),
            "ext4",
            MountFlags::empty(),
            "",
        )
        .unwrap();
        assert!(!h.superblock(&dev.path()).unwrap().unwrap().pristine);
        h.mkdir("/pod");
        h.bind(Path::new("/stage"), Path::new("/pod")).unwrap();
        let t = h.table();
        assert_eq!(t.mounts_of_dev(7, dev.index).len(), 2);
        // Detaching a busy device defers it until its last unmount.
        h.loop_detach(Path::new("/pool/a.img")).unwrap();
        assert_eq!(h.loop_devices().len(), 1);
        h.unmount(Path::new("/pod"), false).unwrap();
        h.unmount(Path::new("/stage"), false).unwrap();
        assert!(h.loop_devices().is_empty());
        assert_eq!(
            h.unmount(Path::new("/stage"), false).unwrap_err().errno(),
            Some(Errno::INVAL)
        );
        assert!(h.changes().iter().all(Call::is_change));
        assert!(matches!(h.changes()[0], Call::LoopAttach(_)));
    }

    #[test]
    fn rules_fail_or_hang_calls() {
        let h = FakeHost::new();
        h.mkdir("/a");
        h.rule(
            Rule::new(
                |c| matches!(c, Call::RemoveDir(_)),
                Action::Fail(Errno::BUSY),
            )
            .once(),
        );
        assert_eq!(
            h.remove_dir(Path::new("/a")).unwrap_err().errno(),
            Some(Errno::BUSY)
        );
        h.rule(Rule::new(|c| matches!(c, Call::Lstat(_)), Action::Hang));
        assert!(h.lstat(Path::new("/a")).unwrap_err().is_stalled());
        h.clear_rules();
        h.remove_dir(Path::new("/a")).unwrap();
        assert!(!h.exists("/a"));
    }

    #[test]
    fn symlinks_resolve_like_the_kernel() {
        let h = FakeHost::new();
        h.mkdir("/real/dir");
        h.symlink("/link", "/real");
        assert_eq!(
            h.canonicalize(Path::new("/link/dir")).unwrap(),
            Path::new("/real/dir")
        );
        assert_eq!(
            h.lstat(Path::new("/link")).unwrap(),
            Some(FileKind::Symlink)
        );
        assert_eq!(
            h.lstat(Path::new("/link/dir")).unwrap(),
            Some(FileKind::Dir)
        );
        assert_eq!(h.lstat(Path::new("/nope/x")).unwrap(), None);
    }
}
