//! `haina explain <volume-id | path>`: the live chain of a volume on this
//! node, and what is broken in it.
//!
//! The chain, pod side first: every target path bound to the volume, the
//! staging mount, the filesystem, the block device, what backs the device
//! (an image file or a Ceph image) and the mounter (loop, fuse, krbd, nbd).
//! Everything is measured: the pools are opened exactly as `haina serve`
//! opens them (`--data-dir`, `--config`) to ask the backend for the
//! volume's attachment, which it reads from the kernel, and the rest comes
//! from `/proc/self/mountinfo` and sysfs. Nothing is changed.
//!
//! Given a path, the mount there leads to its device, the device to the
//! volume whose attachment it is (or, for a broken chain, kubelet's
//! `vol_data.json` beside the path names the volume). Flagged:
//! - a mount without a device: its loop device's image was deleted, or the
//!   loop device was detached underneath it;
//! - a device without a mount: attached, but not staged;
//! - targets still bound while the staging mount is gone (`umount -l`);
//! - a stale target: a kubelet target path for the volume that exists but
//!   is not a mount point, or is a mount of a different device.
//!
//! Exit code: 0 healthy, 1 something flagged, 2 usage (unknown volume,
//! path that names no volume, unreadable config).

pub(crate) mod chain;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use haina_sys::mountinfo::{MountEntry, MountTable};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::driver::{DRIVER_NAME, Driver};
use crate::error::Error;
use crate::ids::{Parsed, VolumeId};
use chain::{Backing, Device};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A volume ID (e.g. default.pvc-1234), or a path: a pod's target path,
    /// a staging path, or the container side of a bind of one.
    target: String,
    /// Where local pools and the driver's state live (as for `haina serve`).
    #[arg(long, env = "HAINA_DATA_DIR", default_value = "/var/lib/haina")]
    data_dir: PathBuf,
    /// Pool config (TOML), as for `haina serve`.
    #[arg(long, env = "HAINA_CONFIG")]
    config: Option<PathBuf>,
    /// Kubelet's root directory, to find the volume's pod and staging paths.
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// This node's ID (default: the hostname).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// How to print the report.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// A mount in the chain.
#[derive(Debug, Clone, Serialize)]
struct MountView {
    path: PathBuf,
    /// `filesystem` (the staging mount), `bind` (of the filesystem) or
    /// `device bind` (a raw block volume's node).
    kind: &'static str,
    fs_type: String,
    source: String,
    major: u32,
    minor: u32,
    read_only: bool,
}

impl MountView {
    fn of(e: &MountEntry, kind: &'static str) -> Self {
        Self {
            path: e.mount_point.clone(),
            kind,
            fs_type: e.fs_type.clone(),
            source: e.source.clone(),
            major: e.major,
            minor: e.minor,
            read_only: e.is_read_only(),
        }
    }
}

/// Everything `explain` found; printed as a table or as JSON.
#[derive(Debug, Default, Serialize)]
struct Report {
    volume_id: Option<String>,
    pool: Option<String>,
    pool_kind: Option<&'static str>,
    /// The name the CO created the volume with (the PV name in Kubernetes).
    name: Option<String>,
    capacity_bytes: Option<u64>,
    /// The path asked about, if a path was given.
    path: Option<PathBuf>,
    /// `published`, `staged`, `attached` or `not attached on this node`.
    state: String,
    targets: Vec<MountView>,
    staging: Option<MountView>,
    filesystem: Option<String>,
    device: Option<Device>,
    backing: Option<Backing>,
    /// What the pool says backs the volume: an image file, or `pool/image`.
    image: Option<String>,
    mounter: Option<String>,
    /// One line per target: `target <- bind of staging <- ext4 on dev <- ...`.
    chain: Vec<String>,
    problems: Vec<String>,
    healthy: bool,
}

/// Why explain could not even start (exit 2).
struct Usage(String);

impl From<Error> for Usage {
    fn from(e: Error) -> Self {
        Usage(e.to_string())
    }
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let output = args.output;
    let result = tokio::task::spawn_blocking(move || explain(&args)).await?;
    match result {
        Ok(report) => {
            let text = match output {
                Output::Json => serde_json::to_string_pretty(&report)? + "\n",
                Output::Table => render(&report),
            };
            print!("{text}");
            use std::io::Write;
            std::io::stdout().flush()?;
            if !report.healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Err(Usage(m)) => {
            eprintln!("haina explain: {m}");
            std::process::exit(2);
        }
    }
}

struct Ctx {
    driver: Driver,
    kubelet: PathBuf,
    table: MountTable,
}

fn explain(args: &Args) -> Result<Report, Usage> {
    if !args.data_dir.is_dir() {
        return Err(Usage(format!(
            "data dir {} does not exist (use --data-dir or HAINA_DATA_DIR)",
            args.data_dir.display()
        )));
    }
    let driver = Driver::for_node(
        args.config.as_deref(),
        args.node_id.as_deref(),
        args.data_dir.clone(),
    )?;
    let table = MountTable::read().map_err(|e| Usage(format!("reading mountinfo: {e}")))?;
    let ctx = Ctx {
        driver,
        kubelet: args.kubelet_dir.clone(),
        table,
    };
    let mut report = if args.target.starts_with('/') {
        by_path(&ctx, Path::new(&args.target))?
    } else {
        let id = match VolumeId::parse("volume ID", &args.target)? {
            Parsed::Ours(id) => id,
            Parsed::Foreign => {
                return Err(Usage(format!(
                    "{:?} is neither a haina volume ID (<pool>.<name>) nor an absolute path",
                    args.target
                )));
            }
        };
        by_id(&ctx, &id)?
    };
    report.healthy = report.problems.is_empty();
    Ok(report)
}

/// The kubelet staging path of a CSI volume: `plugins/kubernetes.io/csi/
/// <driver>/<sha256 of the volume handle>/globalmount`.
pub(crate) fn kubelet_staging(kubelet: &Path, volume_id: &str) -> PathBuf {
    let sha = Sha256::digest(volume_id.as_bytes());
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    kubelet
        .join("plugins/kubernetes.io/csi")
        .join(DRIVER_NAME)
        .join(hex)
        .join("globalmount")
}

/// Does `p` look like a pod's side of a volume (a publish target)?
fn target_like(kubelet: &Path, p: &Path) -> bool {
    let s = p.to_string_lossy();
    p.starts_with(kubelet.join("pods"))
        || s.contains("/volumes/kubernetes.io~csi/")
        || s.contains("/volumeDevices/publish/")
}

/// Kubelet's target paths for the PV `name` that exist right now.
fn kubelet_targets(kubelet: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(pods) = std::fs::read_dir(kubelet.join("pods")) {
        for pod in pods.flatten() {
            let p = pod
                .path()
                .join("volumes/kubernetes.io~csi")
                .join(name)
                .join("mount");
            if p.symlink_metadata().is_ok() {
                out.push(p);
            }
        }
    }
    let block = kubelet
        .join("plugins/kubernetes.io/csi/volumeDevices/publish")
        .join(name);
    if let Ok(rd) = std::fs::read_dir(block) {
        out.extend(rd.flatten().map(|e| e.path()));
    }
    out.sort();
    out
}

fn by_id(ctx: &Ctx, id: &VolumeId) -> Result<Report, Usage> {
    let backend = ctx.driver.pool_of(id)?;
    let vol = backend.get_volume(id, &crate::volume::Secrets::default())?;
    // A device whose image was deleted while attached is reported below as
    // a mount that lost its device.
    let att = backend
        .attachment(id)?
        .filter(|a| !a.backing.ends_with(" (deleted)"));
    let t = &ctx.table;
    let mut r = Report {
        volume_id: Some(id.to_string()),
        pool: Some(id.pool().to_string()),
        pool_kind: Some(backend.kind()),
        name: vol.as_ref().map(|v| v.name.clone()),
        capacity_bytes: vol.as_ref().map(|v| v.capacity),
        ..Default::default()
    };
    let kubelet_stage = kubelet_staging(&ctx.kubelet, &id.to_string());
    let flex_stage = super::flexvolume::staging_root(&ctx.driver.data_dir).join(id.to_string());
    let candidates = r
        .name
        .as_deref()
        .map(|n| kubelet_targets(&ctx.kubelet, n))
        .unwrap_or_default();

    let Some(att) = att else {
        // Nothing attached: any mount at the volume's paths has lost its device.
        let mut seen = false;
        for p in [&kubelet_stage, &flex_stage].into_iter().chain(&candidates) {
            let Some(e) = t.at(p) else { continue };
            seen = true;
            let dev = chain::device_of(e);
            let why = match dev.as_ref().map(chain::backing) {
                Some(Backing::File {
                    path,
                    deleted: true,
                    ..
                }) => format!("whose image {} was deleted while attached", path.display()),
                Some(Backing::Detached) => "whose loop device was detached".to_string(),
                _ => format!("but volume {id} is not attached on this node"),
            };
            r.problems.push(format!(
                "mount without a device: {} is mounted from {} ({}:{}), {why}",
                p.display(),
                e.source,
                e.major,
                e.minor
            ));
            let view = MountView::of(
                e,
                if *p == kubelet_stage || *p == flex_stage {
                    "filesystem"
                } else {
                    "bind"
                },
            );
            if view.kind == "filesystem" {
                r.staging = Some(view);
            } else {
                r.targets.push(view);
            }
            if r.device.is_none()
                && let Some(d) = dev
            {
                let b = chain::backing(&d);
                r.mounter = Some(chain::mounter(t, &b).to_string());
                r.backing = Some(b);
                r.device = Some(d);
            }
        }
        r.state = if seen {
            "broken".into()
        } else {
            "not attached on this node".into()
        };
        if vol.is_none() && !seen {
            return Err(Usage(format!(
                "volume {id} does not exist in pool {}",
                id.pool()
            )));
        }
        stale_targets(&mut r, t, &candidates, None);
        return Ok(r);
    };

    if vol.is_none() {
        r.problems.push(format!(
            "{} is attached, but pool {} has no record of volume {id}",
            att.device.display(),
            id.pool()
        ));
    }
    let device = chain::device_at(&att.device);
    let numbers = device.as_ref().map(|d| (d.major, d.minor));
    let backing = device.as_ref().map(chain::backing);
    if let Some(Backing::File {
        path,
        deleted: true,
        ..
    }) = &backing
    {
        r.problems.push(format!(
            "{} serves {}, which was deleted",
            att.device.display(),
            path.display()
        ));
    }
    r.image = Some(att.backing.clone());
    r.mounter = Some(match &backing {
        Some(b) if att.mounter == "loop" => chain::mounter(t, b).to_string(),
        _ => att.mounter.to_string(),
    });
    r.backing = backing.or_else(|| {
        Some(Backing::File {
            path: PathBuf::from(&att.backing),
            deleted: false,
            direct_io: false,
            read_only: false,
        })
    });

    // Every mount of the device: the filesystem (staging, binds) or node binds.
    let mounts: Vec<&MountEntry> = t
        .entries
        .iter()
        .filter(|e| Some((e.major, e.minor)) == numbers || node_bind_of(e, &att.device))
        .collect();
    let staging_entry = mounts
        .iter()
        .find(|e| e.mount_point == kubelet_stage || e.mount_point == flex_stage)
        .or_else(|| {
            mounts.iter().find(|e| {
                chain::bound_node(e).is_none()
                    && e.root == Path::new("/")
                    && !target_like(&ctx.kubelet, &e.mount_point)
            })
        })
        .copied();
    r.staging = staging_entry.map(|e| MountView::of(e, "filesystem"));
    r.filesystem = mounts
        .iter()
        .find(|e| chain::bound_node(e).is_none())
        .map(|e| e.fs_type.clone());
    for e in &mounts {
        if Some(e.mount_point.as_path()) == staging_entry.map(|s| s.mount_point.as_path()) {
            continue;
        }
        let kind = if chain::bound_node(e).is_some() {
            "device bind"
        } else {
            "bind"
        };
        r.targets.push(MountView::of(e, kind));
    }

    let fs_targets = r.targets.iter().any(|m| m.kind == "bind");
    let block_staged = r.name.as_deref().is_some_and(|n| {
        ctx.kubelet
            .join("plugins/kubernetes.io/csi/volumeDevices/staging")
            .join(n)
            .exists()
    });
    if mounts.is_empty() && !block_staged {
        r.problems.push(format!(
            "device without a mount: {} is attached, but nothing is mounted from it (attached but not staged)",
            att.device.display()
        ));
    }
    if fs_targets && r.staging.is_none() {
        r.problems.push(format!(
            "the staging mount is gone while {} still bound to {} (unmounted underneath, e.g. by umount -l)",
            if r.targets.len() == 1 { "a target is" } else { "targets are" },
            att.device.display()
        ));
    }
    if r.staging.is_none() && kubelet_stage.is_dir() && !block_staged {
        r.problems.push(format!(
            "staging path {} exists but is not a mount point",
            kubelet_stage.display()
        ));
    }
    stale_targets(
        &mut r,
        t,
        &candidates,
        numbers.map(|n| (n, att.device.clone())),
    );

    r.state = if !r.targets.is_empty() {
        "published".into()
    } else if r.staging.is_some() || block_staged {
        "staged".into()
    } else {
        "attached".into()
    };
    r.device = device;
    r.chain = chain_lines(t, &r);
    Ok(r)
}

fn node_bind_of(e: &MountEntry, dev: &Path) -> bool {
    chain::bound_node(e).is_some_and(|n| n == dev)
}

/// Flags kubelet target paths of the volume that are not (or not its) mounts.
fn stale_targets(
    r: &mut Report,
    t: &MountTable,
    candidates: &[PathBuf],
    dev: Option<((u32, u32), PathBuf)>,
) {
    let already: BTreeSet<PathBuf> = r.targets.iter().map(|m| m.path.clone()).collect();
    for p in candidates {
        if already.contains(p) {
            continue;
        }
        match t.at(p) {
            None => r.problems.push(format!(
                "stale target: {} exists but is not a mount point (its mount is gone)",
                p.display()
            )),
            Some(e) => {
                if let Some((numbers, node)) = &dev {
                    let ours = (e.major, e.minor) == *numbers || node_bind_of(e, node);
                    if !ours {
                        r.problems.push(format!(
                            "stale target: {} is mounted from {} ({}:{}), not from the volume's device {}",
                            p.display(),
                            e.source,
                            e.major,
                            e.minor,
                            node.display()
                        ));
                    }
                }
            }
        }
    }
}

/// `target <- bind of staging <- ext4 on /dev/loop3 <- loop over image`.
fn chain_lines(t: &MountTable, r: &Report) -> Vec<String> {
    let tail = {
        let mut s = String::new();
        if let (Some(st), Some(fs)) = (&r.staging, &r.filesystem) {
            s.push_str(&format!(
                " <- bind of {} <- {fs} on {}",
                st.path.display(),
                r.device
                    .as_ref()
                    .map_or(st.source.clone(), |d| d.path.display().to_string())
            ));
        }
        if let Some(b) = &r.backing {
            s.push_str(&format!(" <- {}", chain::describe_backing(t, b)));
        }
        s
    };
    let dev = r
        .device
        .as_ref()
        .map(|d| d.path.display().to_string())
        .unwrap_or_default();
    let mut out: Vec<String> = r
        .targets
        .iter()
        .map(|m| match m.kind {
            "device bind" => format!(
                "{} <- bind of {dev}{}",
                m.path.display(),
                r.backing
                    .as_ref()
                    .map(|b| format!(" <- {}", chain::describe_backing(t, b)))
                    .unwrap_or_default()
            ),
            _ if r.staging.is_some() => format!("{}{tail}", m.path.display()),
            _ => format!(
                "{} <- {} on {dev}{}",
                m.path.display(),
                m.fs_type,
                r.backing
                    .as_ref()
                    .map(|b| format!(" <- {}", chain::describe_backing(t, b)))
                    .unwrap_or_default()
            ),
        })
        .collect();
    if out.is_empty()
        && let Some(st) = &r.staging
    {
        out.push(format!(
            "{} <- {} on {dev}{}",
            st.path.display(),
            st.fs_type,
            r.backing
                .as_ref()
                .map(|b| format!(" <- {}", chain::describe_backing(t, b)))
                .unwrap_or_default()
        ));
    }
    out
}

fn by_path(ctx: &Ctx, raw: &Path) -> Result<Report, Usage> {
    let path = std::fs::canonicalize(raw).map_err(|e| Usage(format!("{}: {e}", raw.display())))?;
    let t = &ctx.table;
    let from_vol_data = || vol_data_id(&path);
    let Some(entry) = t.at(&path) else {
        let Some(id) = from_vol_data() else {
            return Err(Usage(format!(
                "{} is not a mount point, and no kubelet vol_data.json beside it names a volume",
                path.display()
            )));
        };
        let mut r = by_id(ctx, &id)?;
        if !r
            .problems
            .iter()
            .any(|p| p.contains(&*path.to_string_lossy()))
        {
            r.problems.push(format!(
                "stale target: {} exists but is not a mount point (its mount is gone)",
                path.display()
            ));
        }
        r.path = Some(path);
        return Ok(r);
    };
    let dev = chain::device_of(entry);
    if let Some(d) = &dev
        && let Some(id) = volume_on(ctx, d)
    {
        let mut r = by_id(ctx, &id)?;
        r.path = Some(path);
        return Ok(r);
    }
    if let Some(id) = from_vol_data() {
        let mut r = by_id(ctx, &id)?;
        if r.problems.is_empty() {
            r.problems.push(format!(
                "{} is mounted from {} ({}:{}), which is not volume {id}'s device",
                path.display(),
                entry.source,
                entry.major,
                entry.minor
            ));
        }
        r.path = Some(path);
        return Ok(r);
    }
    // No volume claims the device: explain what is there if it is a broken loop.
    let backing = dev.as_ref().map(chain::backing);
    match &backing {
        Some(Backing::File { deleted: true, .. } | Backing::Detached) => {
            let mut r = Report {
                path: Some(path.clone()),
                state: "broken".into(),
                filesystem: Some(entry.fs_type.clone()),
                ..Default::default()
            };
            r.problems.push(format!(
                "mount without a device: {} is mounted from {}, whose {}",
                path.display(),
                entry.source,
                match &backing {
                    Some(Backing::File { path, .. }) =>
                        format!("image {} was deleted while attached", path.display()),
                    _ => "loop device was detached".into(),
                }
            ));
            r.targets.push(MountView::of(entry, "mount"));
            r.mounter = Some("loop".into());
            r.backing = backing;
            r.device = dev;
            Ok(r)
        }
        _ => Err(Usage(format!(
            "{} is mounted from {} ({}:{}), which is not a haina volume on this node",
            path.display(),
            entry.source,
            entry.major,
            entry.minor
        ))),
    }
}

/// The volume whose attachment is `dev`, in any pool.
fn volume_on(ctx: &Ctx, dev: &Device) -> Option<VolumeId> {
    for backend in ctx.driver.pools.values() {
        for v in backend
            .list_volumes(&crate::volume::Secrets::default())
            .ok()?
        {
            let Ok(id) = VolumeId::parse_existing("volume_id", &v.id) else {
                continue;
            };
            if let Ok(Some(att)) = backend.attachment(&id)
                && chain::device_at(&att.device)
                    .is_some_and(|d| (d.major, d.minor) == (dev.major, dev.minor))
            {
                return Some(id);
            }
        }
    }
    None
}

/// The volume handle in kubelet's `vol_data.json` next to a target or
/// staging path (`.../<pv>/mount` → `.../<pv>/vol_data.json`).
fn vol_data_id(path: &Path) -> Option<VolumeId> {
    let file = path.parent()?.join("vol_data.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    VolumeId::parse_existing("volumeHandle", v["volumeHandle"].as_str()?).ok()
}

fn render(r: &Report) -> String {
    use super::ctl::render::{fields, human_bytes};
    let mut lines: Vec<(String, String)> = Vec::new();
    if let Some(id) = &r.volume_id {
        let mut facts = vec![format!(
            "pool {}{}",
            r.pool.as_deref().unwrap_or("?"),
            r.pool_kind.map(|k| format!(", {k}")).unwrap_or_default()
        )];
        if let Some(n) = &r.name {
            facts.push(format!("name {n}"));
        }
        if let Some(c) = r.capacity_bytes {
            facts.push(human_bytes(c));
        }
        lines.push(("volume".into(), format!("{id}  ({})", facts.join("; "))));
    }
    if let Some(p) = &r.path {
        lines.push(("asked about".into(), p.display().to_string()));
    }
    lines.push(("state".into(), r.state.clone()));
    for m in &r.targets {
        lines.push((
            "target".into(),
            format!(
                "{}  ({}, {})",
                m.path.display(),
                m.kind,
                if m.read_only { "ro" } else { "rw" }
            ),
        ));
    }
    if let Some(s) = &r.staging {
        lines.push((
            "staging".into(),
            format!(
                "{}  ({} on {}, {})",
                s.path.display(),
                s.fs_type,
                s.source,
                if s.read_only { "ro" } else { "rw" }
            ),
        ));
    }
    if let Some(fs) = &r.filesystem {
        lines.push(("filesystem".into(), fs.clone()));
    }
    if let Some(d) = &r.device {
        lines.push((
            "device".into(),
            format!(
                "{}  ({}:{}{})",
                d.path.display(),
                d.major,
                d.minor,
                d.size_bytes
                    .map(|s| format!(", {}", human_bytes(s)))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(b) = &r.backing {
        let text = match b {
            Backing::File { path, deleted, .. } => format!(
                "{}  (image file{})",
                path.display(),
                if *deleted { ", DELETED" } else { "" }
            ),
            Backing::Detached => "none: the loop device was detached".into(),
            Backing::Rbd { pool, image } => format!("{pool}/{image}  (Ceph RBD image)"),
            Backing::Nbd { pid, command } => {
                format!(
                    "nbd, served by pid {}  ({command})",
                    pid.map_or("?".into(), |p| p.to_string())
                )
            }
            Backing::Other => "-".into(),
        };
        lines.push(("backing".into(), text));
    }
    if let Some(img) = r.image.as_ref().filter(|_| r.pool_kind != Some("local")) {
        lines.push((
            "image".into(),
            format!("{img}  ({} pool image)", r.pool_kind.unwrap_or("?")),
        ));
    }
    if let Some(m) = &r.mounter {
        let dio = matches!(
            r.backing,
            Some(Backing::File {
                direct_io: true,
                ..
            })
        );
        lines.push((
            "mounter".into(),
            format!("{m}{}", if dio { " (direct-io)" } else { "" }),
        ));
    }
    let mut out = fields(&lines);
    if !r.chain.is_empty() {
        out.push_str("\nchain:\n");
        for c in &r.chain {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out.push('\n');
    if r.problems.is_empty() {
        out.push_str("healthy\n");
    } else {
        out.push_str(&format!("PROBLEMS ({}):\n", r.problems.len()));
        for p in &r.problems {
            out.push_str(&format!("  ! {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_paths() {
        let k = Path::new("/var/lib/kubelet");
        let s = kubelet_staging(k, "default.pvc-1");
        assert!(s.starts_with("/var/lib/kubelet/plugins/kubernetes.io/csi/haina.csi.dev/"));
        assert!(s.ends_with("globalmount"));
        // sha256("default.pvc-1"), as kubelet computes it.
        let hex = s.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(hex.len(), 64);
        assert!(target_like(
            k,
            Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pvc-1/mount")
        ));
        assert!(target_like(
            k,
            Path::new("/x/volumeDevices/publish/pvc-1/u")
        ));
        assert!(!target_like(k, &s));
    }
}
