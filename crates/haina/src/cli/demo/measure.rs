//! The demo's chain, measured while the container runs: the container's
//! own `/proc/<pid>/mountinfo` for `/data`, the host's mountinfo for the
//! pod path and the staging mount, sysfs for the device and what backs it.
//! Every link is checked against the next (same device, the filesystem's
//! root); a mismatch is a failure, not a footnote.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use haina_sys::mountinfo::{MountEntry, MountTable};

use super::Demo;
use crate::cli::ctl::render::human_bytes;
use crate::cli::explain::chain::{self, Backing};

impl Demo {
    /// The chain as the kernel shows it right now.
    pub(super) fn measure(&self) -> Result<Measured, String> {
        let ct = self.container.as_ref().ok_or("no container is running")?;
        let paths = self.paths.as_ref().ok_or("nothing was published")?;
        let inside = MountTable::parse(&ct.mountinfo()?)
            .map_err(|e| format!("the container's mountinfo: {e}"))?;
        let inside = inside
            .at(Path::new(ct.at))
            .cloned()
            .ok_or_else(|| format!("nothing is mounted at {} in the container", ct.at))?;
        let host = MountTable::read().map_err(|e| format!("reading mountinfo: {e}"))?;
        let pod = host.at(&paths.target).cloned().ok_or_else(|| {
            format!(
                "the pod path {} is not a mount point",
                paths.target.display()
            )
        })?;
        let rw = |e: &MountEntry| if e.is_read_only() { "ro" } else { "rw" };
        let mut rows = Vec::new();
        let (device, links) = if self.args.block {
            let node = chain::bound_node(&pod).ok_or_else(|| {
                format!(
                    "the pod path is a {} mount of {}, not a bind of a device node",
                    pod.fs_type, pod.source
                )
            })?;
            if chain::bound_node(&inside).as_ref() != Some(&node) {
                return Err(format!(
                    "the container's {} is not a bind of {} (it shows {} {})",
                    ct.at,
                    node.display(),
                    inside.fs_type,
                    inside.root.display()
                ));
            }
            let device = chain::device_at(&node)
                .ok_or_else(|| format!("{} is not a block device", node.display()))?;
            rows.push((
                "container",
                ct.at.to_string(),
                format!(
                    "bind of {}, {}; pid {}'s mount namespace",
                    node.display(),
                    rw(&inside),
                    ct.pid
                ),
            ));
            rows.push((
                "pod path",
                paths.target.display().to_string(),
                format!("bind of {}, {}", node.display(), rw(&pod)),
            ));
            let links = format!(
                "container {} <- bind of {} <- bind of {}",
                ct.at,
                paths.target.display(),
                node.display()
            );
            (device, links)
        } else {
            let st = host.at(&paths.staging).cloned().ok_or_else(|| {
                format!(
                    "the staging path {} is not a mount point",
                    paths.staging.display()
                )
            })?;
            let same = |e: &MountEntry| {
                (e.major, e.minor) == (st.major, st.minor) && e.root == Path::new("/")
            };
            for (what, e) in [("the pod path", &pod), ("the container's /data", &inside)] {
                if !same(e) {
                    return Err(format!(
                        "{what} shows {}:{} root {}, not the staging mount's {}:{} root /",
                        e.major,
                        e.minor,
                        e.root.display(),
                        st.major,
                        st.minor
                    ));
                }
            }
            let device = chain::device(st.major, st.minor)
                .ok_or_else(|| format!("{}:{} is not a block device", st.major, st.minor))?;
            rows.push((
                "container",
                ct.at.to_string(),
                format!(
                    "bind, {} {}:{}, {}; pid {}'s mount namespace",
                    inside.fs_type,
                    inside.major,
                    inside.minor,
                    rw(&inside),
                    ct.pid
                ),
            ));
            rows.push((
                "pod path",
                paths.target.display().to_string(),
                format!(
                    "bind of the staging mount, {}:{}, {}",
                    pod.major,
                    pod.minor,
                    rw(&pod)
                ),
            ));
            rows.push((
                "staging",
                paths.staging.display().to_string(),
                format!(
                    "{} on {}, {}:{}, {}",
                    st.fs_type,
                    st.source,
                    st.major,
                    st.minor,
                    rw(&st)
                ),
            ));
            let links = format!(
                "container {} <- bind of {} <- bind of {} <- {} on {}",
                ct.at,
                paths.target.display(),
                paths.staging.display(),
                st.fs_type,
                device.path.display()
            );
            (device, links)
        };
        let backing = chain::backing(&device);
        let dio = matches!(
            backing,
            Backing::File {
                direct_io: true,
                ..
            }
        );
        rows.push((
            "device",
            device.path.display().to_string(),
            format!(
                "{}, {}{}",
                device
                    .size_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "?".into()),
                chain::mounter(&host, &backing),
                if dio { ", direct-io" } else { "" }
            ),
        ));
        let image = match &backing {
            Backing::File { path, deleted, .. } => {
                let facts = match std::fs::metadata(path) {
                    Ok(m) => format!(
                        "{} file, {} allocated{}",
                        human_bytes(m.len()),
                        human_bytes(m.blocks() * 512),
                        if *deleted { ", DELETED" } else { "" }
                    ),
                    Err(e) => format!("cannot stat: {e}"),
                };
                rows.push(("image", path.display().to_string(), facts));
                if let Some(m) = chain::fuse_mount_of(&host, path) {
                    rows.push((
                        "served by",
                        m.source.clone(),
                        format!("{} mounted at {}", m.fs_type, m.mount_point.display()),
                    ));
                }
                Some(path.clone())
            }
            Backing::Rbd { pool, image } => {
                rows.push(("image", format!("{pool}/{image}"), "Ceph RBD image".into()));
                None
            }
            _ => None,
        };
        if let Backing::File { deleted: true, .. } | Backing::Detached = backing {
            return Err(format!(
                "{} lost its backing: {}",
                device.path.display(),
                chain::describe_backing(&host, &backing)
            ));
        }
        let line = format!("{links} <- {}", chain::describe_backing(&host, &backing));
        Ok(Measured { rows, line, image })
    }
}

/// The chain, measured.
pub(super) struct Measured {
    rows: Vec<(&'static str, String, String)>,
    line: String,
    pub(super) image: Option<PathBuf>,
}

pub(super) fn print_chain(m: &Measured) {
    println!("\n  The chain, measured (the container's and the host's mountinfo, sysfs):");
    for (label, path, detail) in &m.rows {
        println!("    {label:<10} {path}  ({detail})");
    }
    println!();
    println!("    {}", m.line);
}
