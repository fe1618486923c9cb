//! `haina flexvolume <op> ...`: the FlexVolume call convention, over the
//! same node code as CSI (`crate::node::{stage, publish, unpublish,
//! unstage}` and the backends' attach); nothing here attaches or mounts on
//! its own.
//!
//! Op mapping (see docs/flexvolume.md):
//! - `init` reports `{"attach": false}`: haina's attach is node-local (a
//!   loop device, a krbd/nbd map), so it cannot run in the
//!   controller-manager, where FlexVolume's `attach` would be called. Kubelet
//!   then calls only `mount` and `unmount`;
//! - `mount <dir> <json>` = NodeStage into a per-volume staging directory
//!   under the data dir (`<data-dir>/flexvolume/staging/<volume id>`), then
//!   NodePublish (a bind mount) onto `<dir>`. A failed publish undoes a
//!   stage nobody else uses;
//! - `unmount <dir>` = NodeUnpublish of `<dir>`, then NodeUnstage once no
//!   other pod uses the volume. The volume is found from the kernel (the
//!   device mounted at `<dir>` is the one mounted at a staging directory),
//!   not from a record. Staged volumes left unused by an interrupted
//!   `unmount` are unstaged by the next one;
//! - `getvolumename <json>` returns the haina volume ID;
//! - `attach`, `detach`, `waitforattach`, `isattached`, `mountdevice`,
//!   `unmountdevice` and any op a newer kubelet invents answer
//!   `Not supported`, which kubelet reads as "nothing to do".
//!
//! Kubelet parses stdout and stderr together as the JSON reply
//! (`CombinedOutput`), so this command writes exactly one JSON object to
//! stdout and nothing to stderr. Two kubelet workers may call it for the
//! same volume at once (two pods on one node): a per-volume `flock` under
//! the data dir serializes them across processes. Secrets
//! (`kubernetes.io/secret/*`, base64) are decoded and never printed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use haina_sys::fs::FsType;
use haina_sys::mountinfo::MountTable;
use serde::Serialize;
use serde_json::Value;

use crate::backend::Backend;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ids::{self, VolumeId};
use crate::node;
use crate::volume::{AccessMode, AccessType, Capability, Secrets};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Ops (kubelet's FlexVolume convention; the reply is one JSON object on stdout):
  init                       -> {\"status\":\"Success\",\"capabilities\":{\"attach\":false}}
  mount <mount dir> <json>   stage the volume under the data dir, bind it onto <mount dir>
  unmount <mount dir>        unbind <mount dir>; unstage once no pod uses the volume
  getvolumename <json>       -> {\"volumeName\": <volumeID>}
  attach, detach, waitforattach, isattached, mountdevice, unmountdevice -> Not supported
JSON options: volumeID (required, e.g. default.pvc-x), kubernetes.io/fsType (ext4|xfs),
  kubernetes.io/readwrite (rw|ro), mountOptions (a,b), mkfsOptions, kubernetes.io/secret/*.")]
pub struct Args {
    /// Where local pools and the driver's state live (as for `haina serve`).
    #[arg(long, env = "HAINA_DATA_DIR", default_value = "/var/lib/haina")]
    data_dir: PathBuf,
    /// Pool config (TOML), as for `haina serve`.
    #[arg(long, env = "HAINA_CONFIG")]
    config: Option<PathBuf>,
    /// This node's ID (default: the hostname).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// The op and its arguments, exactly as kubelet passes them.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..,
        value_name = "OP ARGS"
    )]
    call: Vec<String>,
}

/// The reply kubelet parses.
#[derive(Serialize, Debug, Default, PartialEq)]
struct Reply {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attached: Option<bool>,
    #[serde(rename = "volumeName", skip_serializing_if = "Option::is_none")]
    volume_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<BTreeMap<&'static str, bool>>,
}

const SUCCESS: &str = "Success";
const FAILURE: &str = "Failure";
const NOT_SUPPORTED: &str = "Not supported";

impl Reply {
    fn success(message: impl Into<String>) -> Self {
        Self {
            status: SUCCESS,
            message: Some(message.into()),
            ..Default::default()
        }
    }
    fn failure(message: impl Into<String>) -> Self {
        Self {
            status: FAILURE,
            message: Some(message.into()),
            ..Default::default()
        }
    }
    fn not_supported(message: impl Into<String>) -> Self {
        Self {
            status: NOT_SUPPORTED,
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Mounting blocks; keep it off the async workers like the gRPC layer does.
    let reply = tokio::task::spawn_blocking(move || dispatch(&args))
        .await
        .unwrap_or_else(|e| Reply::failure(format!("the operation's task failed: {e}")));
    let mut out = serde_json::to_string(&reply)?;
    out.push('\n');
    let mut stdout = io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    if reply.status == FAILURE {
        std::process::exit(1);
    }
    Ok(())
}

fn dispatch(args: &Args) -> Reply {
    let Some((op, rest)) = args.call.split_first() else {
        return Reply::failure("usage: haina flexvolume <op> [args...]");
    };
    let usage = |u: &str| Reply::failure(format!("usage: {op} {u}"));
    match (op.as_str(), rest) {
        ("init", []) => Reply {
            status: SUCCESS,
            message: Some("haina: attach is done on the node by mount".into()),
            capabilities: Some([("attach", false)].into()),
            ..Default::default()
        },
        ("init", _) => usage(""),
        ("getvolumename", [json]) => match Options::parse(json) {
            Ok(o) => Reply {
                status: SUCCESS,
                volume_name: Some(o.volume_id.to_string()),
                ..Default::default()
            },
            Err(e) => Reply::failure(e),
        },
        ("getvolumename", _) => usage("<json options>"),
        ("mount", [dir, json]) => {
            let opts = match Options::parse(json) {
                Ok(o) => o,
                Err(e) => return Reply::failure(e),
            };
            let dir = match ids::abs_path("mount dir", dir) {
                Ok(d) => d,
                Err(e) => return Reply::failure(e.to_string()),
            };
            with_driver(args, |d| mount(d, &dir, &opts)).map_or_else(
                |e| Reply::failure(format!("mount {}: {e}", dir.display())),
                |()| {
                    Reply::success(format!(
                        "volume {} mounted at {}",
                        opts.volume_id,
                        dir.display()
                    ))
                },
            )
        }
        ("mount", _) => usage("<mount dir> <json options>"),
        ("unmount", [dir]) => {
            let dir = match ids::abs_path("mount dir", dir) {
                Ok(d) => d,
                Err(e) => return Reply::failure(e.to_string()),
            };
            with_driver(args, |d| unmount(d, &dir)).map_or_else(
                |e| Reply::failure(format!("unmount {}: {e}", dir.display())),
                |()| Reply::success(format!("{} unmounted", dir.display())),
            )
        }
        ("unmount", _) => usage("<mount dir>"),
        ("attach" | "detach" | "waitforattach" | "isattached", _) => Reply::not_supported(
            "haina reports attach: false; mount attaches the volume on this node",
        ),
        ("mountdevice" | "unmountdevice", _) => Reply::not_supported(
            "haina reports attach: false; mount and unmount stage the volume themselves",
        ),
        (other, _) => Reply::not_supported(format!("haina does not implement {other:?}")),
    }
}

fn with_driver(args: &Args, f: impl FnOnce(&Driver) -> Result<()>) -> Result<()> {
    let d = Driver::for_node(
        args.config.as_deref(),
        args.node_id.as_deref(),
        args.data_dir.clone(),
    )?;
    f(&d)
}

/// The options kubelet passes as JSON: the PV's `flexVolume.options` plus
/// its own `kubernetes.io/*` keys.
struct Options {
    volume_id: VolumeId,
    /// As given: empty means "whatever is on the device, ext4 if blank".
    fs_type: String,
    readonly: bool,
    mount_options: Vec<String>,
    mkfs_options: Option<String>,
    secrets: Secrets,
}

impl Options {
    /// Validates everything before anything is touched; errors name the key
    /// (never a secret's value).
    fn parse(json: &str) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| format!("the JSON options are not valid JSON: {e}"))?;
        let Value::Object(map) = v else {
            return Err("the JSON options must be an object".into());
        };
        let mut strings = BTreeMap::new();
        for (k, v) in map {
            match v {
                Value::String(s) => {
                    strings.insert(k, s);
                }
                _ => return Err(format!("option {k:?} must be a string")),
            }
        }
        let mut secrets = BTreeMap::new();
        let mut volume_id = None;
        let mut fs_type = String::new();
        let mut readonly = false;
        let mut mount_options = Vec::new();
        let mut mkfs_options = None;
        for (k, v) in strings {
            match k.as_str() {
                "volumeID" => {
                    let id = VolumeId::parse_existing("volumeID", &v).map_err(|e| {
                        format!("option volumeID: {e} (expected <pool>.<name>, e.g. default.pvc-1)")
                    })?;
                    volume_id = Some(id);
                }
                "kubernetes.io/fsType" => {
                    FsType::from_str(&v).map_err(|_| {
                        format!("option kubernetes.io/fsType {v:?} is not supported (ext4 or xfs)")
                    })?;
                    fs_type = v;
                }
                "kubernetes.io/readwrite" => {
                    readonly = match v.as_str() {
                        "rw" | "" => false,
                        "ro" => true,
                        _ => {
                            return Err(format!(
                                "option kubernetes.io/readwrite {v:?} must be rw or ro"
                            ));
                        }
                    }
                }
                "mountOptions" => {
                    mount_options = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                }
                "mkfsOptions" => mkfs_options = Some(v),
                _ => {
                    if let Some(name) = k.strip_prefix("kubernetes.io/secret/") {
                        let value = base64_decode(&v).ok_or_else(|| {
                            format!("option {k:?} is not base64 (kubelet encodes secrets)")
                        })?;
                        let value = String::from_utf8(value)
                            .map_err(|_| format!("option {k:?} is not UTF-8 once decoded"))?;
                        secrets.insert(name.to_string(), value);
                    } else if !k.starts_with("kubernetes.io/") {
                        return Err(format!(
                            "unknown option {k:?} (haina knows volumeID, mountOptions, mkfsOptions and kubernetes.io/*)"
                        ));
                    }
                }
            }
        }
        let volume_id = volume_id.ok_or("option volumeID is required")?;
        Ok(Self {
            volume_id,
            fs_type,
            readonly,
            mount_options,
            mkfs_options,
            secrets: Secrets(secrets),
        })
    }

    fn capability(&self) -> Capability {
        Capability {
            access: AccessType::Mount {
                fs_type: self.fs_type.clone(),
                mount_flags: self.mount_options.clone(),
            },
            mode: AccessMode::SingleNodeWriter,
        }
    }
}

/// Where FlexVolume stages volumes: `<data-dir>/flexvolume/staging`.
pub(crate) fn staging_root(data_dir: &Path) -> PathBuf {
    data_dir.join("flexvolume").join("staging")
}

fn staging_dir(d: &Driver, id: &VolumeId) -> PathBuf {
    staging_root(&d.data_dir).join(id.to_string())
}

/// A per-volume `flock`, held across processes until dropped.
struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    /// Waits up to `wait` for the lock; `None` if it stayed busy.
    fn acquire(d: &Driver, id: &VolumeId, wait: Duration) -> Result<Option<Self>> {
        use rustix::fs::FlockOperation;
        let dir = d.data_dir.join("flexvolume").join("locks");
        fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{id}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(Self { _file: file })),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => {
                    return Err(Error::internal(
                        format!("flock {}", path.display()),
                        io::Error::from(e),
                    ));
                }
            }
        }
    }

    fn wait(d: &Driver, id: &VolumeId) -> Result<Self> {
        Self::acquire(d, id, Duration::from_secs(120))?.ok_or_else(|| {
            Error::Aborted(format!(
                "another FlexVolume call on volume {id} has held its lock for 2 minutes"
            ))
        })
    }
}

fn mount(d: &Driver, dir: &Path, o: &Options) -> Result<()> {
    let id = &o.volume_id;
    let backend = d.pool_of(id)?;
    let exists = || -> Result<()> {
        match backend.get_volume(id, &o.secrets)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("volume {id} does not exist"))),
        }
    };
    exists()?; // no lock file for a volume that is not there
    let _lock = VolumeLock::wait(d, id)?;
    exists()?;
    let staging = staging_dir(d, id);
    let cap = o.capability();
    let mut context = BTreeMap::new();
    if let Some(m) = &o.mkfs_options {
        context.insert("mkfsOptions".to_string(), m.clone());
    }
    let stage = node::StageRequest {
        volume_id: id,
        staging: &staging,
        capability: &cap,
        context: &context,
        // Read-only pods get a read-only bind; the shared staging stays writable.
        readonly: false,
    };
    let undo = |e: Error| match unstage_if_unused(d, backend.as_ref(), id) {
        Ok(_) => e,
        Err(undo) => e.context(format!("(and undoing the stage failed: {undo})")),
    };
    // Either step failing leaves nothing behind that no pod uses.
    node::stage(d, backend.as_ref(), &stage, &o.secrets).map_err(undo)?;
    let publish = node::PublishRequest {
        volume_id: id,
        staging: &staging,
        target: dir,
        capability: &cap,
        readonly: o.readonly,
    };
    node::publish(d, backend.as_ref(), &publish).map_err(undo)
}

fn unmount(d: &Driver, dir: &Path) -> Result<()> {
    let owner = owner_of(d, dir)?;
    match &owner {
        Some(id) => {
            let backend = d.pool_of(id)?;
            let _lock = VolumeLock::wait(d, id)?;
            node::unpublish(d, backend.as_ref(), id, dir)?;
            unstage_if_unused(d, backend.as_ref(), id)?;
        }
        // No volume of ours is mounted there: only an empty directory
        // left by an earlier unmount goes; anything else stays.
        None => {
            if read_table()?.at(dir).is_none() {
                match fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                        ) => {}
                    Err(e) => {
                        return Err(Error::internal(format!("removing {}", dir.display()), e));
                    }
                }
            }
        }
    }
    sweep(d, owner.as_ref())
}

/// The staged volume whose filesystem is mounted at `dir`, if any.
fn owner_of(d: &Driver, dir: &Path) -> Result<Option<VolumeId>> {
    let table = read_table()?;
    let Some(target) = table.at(dir) else {
        return Ok(None);
    };
    for id in staged(d)? {
        let staging = staging_dir(d, &id);
        if table
            .at(&staging)
            .is_some_and(|s| (s.major, s.minor) == (target.major, target.minor))
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Volume IDs with a staging directory.
fn staged(d: &Driver) -> Result<Vec<VolumeId>> {
    let root = staging_root(&d.data_dir);
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::internal(format!("listing {}", root.display()), e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::internal(format!("listing {}", root.display()), e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| VolumeId::parse_existing("staging dir", n).ok())
        {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

/// Unstages the volume unless a pod still uses it; then removes its staging
/// directory. Returns whether it was unstaged.
fn unstage_if_unused(d: &Driver, backend: &dyn Backend, id: &VolumeId) -> Result<bool> {
    let staging = staging_dir(d, id);
    // Mount points in the view are resolved paths: compare like with like.
    let resolved = node::paths::resolve(d.host.as_ref(), "staging", &staging, false)?
        .unwrap_or_else(|| staging.clone());
    let view = node::view::observe(d.host.as_ref(), backend, id)?;
    if view.elsewhere(&[&resolved]).next().is_some() {
        return Ok(false);
    }
    node::unstage(d, backend, id, &staging)?;
    match fs::remove_dir(&staging) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::internal(
            format!("removing {}", staging.display()),
            e,
        )),
    }
}

/// Unstages staged volumes no pod uses (left by an interrupted `unmount`).
/// A volume whose lock is busy is being mounted right now and is skipped.
fn sweep(d: &Driver, done: Option<&VolumeId>) -> Result<()> {
    for id in staged(d)? {
        if Some(&id) == done {
            continue;
        }
        let Ok(backend) = d.pool_of(&id) else {
            continue;
        };
        let Some(_lock) = VolumeLock::acquire(d, &id, Duration::ZERO)? else {
            continue;
        };
        unstage_if_unused(d, backend.as_ref(), &id)
            .map_err(|e| e.context(format!("unstaging unused volume {id}")))?;
    }
    Ok(())
}

fn read_table() -> Result<MountTable> {
    MountTable::read().map_err(|e| Error::internal("reading /proc/self/mountinfo", e))
}

/// Standard base64 (RFC 4648, padding optional); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(call: &[&str]) -> Args {
        Args {
            data_dir: PathBuf::from("/nonexistent/haina-flex-test"),
            config: None,
            node_id: Some("n".into()),
            call: call.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn init_and_unsupported_ops() {
        let r = dispatch(&args(&["init"]));
        assert_eq!(r.status, SUCCESS);
        assert!(!r.capabilities.unwrap()["attach"]);
        for op in [
            "attach",
            "detach",
            "waitforattach",
            "isattached",
            "mountdevice",
            "unmountdevice",
            "expandvolume",
        ] {
            assert_eq!(dispatch(&args(&[op, "x"])).status, NOT_SUPPORTED, "{op}");
        }
        assert_eq!(dispatch(&args(&[])).status, FAILURE);
        assert_eq!(dispatch(&args(&["mount", "/x"])).status, FAILURE);
    }

    #[test]
    fn options_are_validated_before_anything_happens() {
        let o = Options::parse(
            r#"{"volumeID":"default.pvc-1","kubernetes.io/fsType":"xfs",
                "kubernetes.io/readwrite":"ro","kubernetes.io/pod.uid":"u",
                "mountOptions":"noatime, discard","kubernetes.io/secret/key":"czNjcjN0"}"#,
        )
        .unwrap();
        assert_eq!(o.volume_id.to_string(), "default.pvc-1");
        assert!(o.readonly);
        assert_eq!(o.mount_options, ["noatime", "discard"]);
        assert_eq!(o.secrets.0["key"], "s3cr3t");
        for (bad, names) in [
            ("{", "JSON"),
            ("[]", "object"),
            (r#"{"kubernetes.io/fsType":"ext4"}"#, "volumeID"),
            (r#"{"volumeID":"../x"}"#, "volumeID"),
            (r#"{"volumeID":"nopool"}"#, "volumeID"),
            (
                r#"{"volumeID":"default.a","kubernetes.io/fsType":"btrfs"}"#,
                "fsType",
            ),
            (
                r#"{"volumeID":"default.a","kubernetes.io/readwrite":"rx"}"#,
                "readwrite",
            ),
            (
                r#"{"volumeID":"default.a","mountOptoins":"x"}"#,
                "mountOptoins",
            ),
            (
                r#"{"volumeID":"default.a","kubernetes.io/fsGroup":1000}"#,
                "fsGroup",
            ),
            (
                r#"{"volumeID":"default.a","kubernetes.io/secret/k":"!!AQsecret"}"#,
                "secret/k",
            ),
        ] {
            let e = Options::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(e.contains(names), "{bad}: {e}");
            assert!(!e.contains("AQsecret"), "{e}");
        }
        let r = dispatch(&args(&[
            "mount",
            "/x",
            r#"{"volumeID":"default.a","kubernetes.io/fsType":"btrfs"}"#,
        ]));
        assert_eq!(r.status, FAILURE);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }

    #[test]
    fn reply_shape() {
        let r = Reply {
            status: SUCCESS,
            capabilities: Some([("attach", false)].into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"Success","capabilities":{"attach":false}}"#
        );
        let r = Reply {
            status: SUCCESS,
            volume_name: Some("default.a".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"Success","volumeName":"default.a"}"#
        );
    }
}
