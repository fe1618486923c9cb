//! The demo's teardown, in reverse order of the flow (the container,
//! NodeUnpublish, NodeUnstage, ControllerUnpublish, DeleteVolume, the
//! server), then the leak check against the kernel: no mount under the work
//! dir, no loop device over its files or the measured image. Anything the
//! teardown missed is reported as a failure and then removed by force, so
//! even a failed demo leaves the machine clean; only then is the work dir
//! deleted (never across a mount).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haina_csi::v1 as csi;
use haina_sys::mountinfo::MountTable;

use super::{Demo, call, k8s, more, row, rpc, rpc_text};
use crate::cli::explain::chain;

impl Demo {
    /// Tears down whatever `up` did, in reverse; returns what went wrong.
    pub(super) async fn down(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        println!("\n  Teardown, in reverse:");
        let mut pod_row = false;
        if let Some(mut ct) = self.container.take() {
            let how = if self.cancel.is_set() || !ct.is_running() {
                ct.kill().await;
                "stopped"
            } else {
                match ct.finish().await {
                    Ok(()) => "exited",
                    Err(e) => {
                        failures.push(e);
                        "killed"
                    }
                }
            };
            row(
                7,
                "kubelet",
                format!(
                    "pod {}/{} deleted: the container {how}",
                    k8s::NAMESPACE,
                    k8s::POD
                ),
            );
            self.forget("pod.json");
            pod_row = true;
        }
        if let Some(c) = self.clients.clone() {
            let handle = self
                .done
                .volume
                .as_ref()
                .map(|v| v.volume_id.clone())
                .filter(|h| !h.is_empty());
            let mut kubelet_row = !pod_row;
            let mut say = |num, actor: &str, text: String| {
                if std::mem::take(&mut kubelet_row) || num != 7 {
                    row(num, actor, text);
                } else {
                    more(text);
                }
            };
            if let (Some(h), Some(paths)) = (&handle, self.paths.clone()) {
                if self.done.publish {
                    let req = csi::NodeUnpublishVolumeRequest {
                        volume_id: h.clone(),
                        target_path: paths.target.display().to_string(),
                    };
                    match call(
                        "NodeUnpublishVolume",
                        rpc!(c.node, node_unpublish_volume, req),
                    )
                    .await
                    {
                        Ok((_, dt)) => say(7, "kubelet", rpc_text("NodeUnpublishVolume", dt)),
                        Err(e) => failures.push(e),
                    }
                }
                if self.done.stage {
                    let req = csi::NodeUnstageVolumeRequest {
                        volume_id: h.clone(),
                        staging_target_path: paths.staging.display().to_string(),
                    };
                    match call("NodeUnstageVolume", rpc!(c.node, node_unstage_volume, req)).await {
                        Ok((_, dt)) => say(7, "kubelet", rpc_text("NodeUnstageVolume", dt)),
                        Err(e) => failures.push(e),
                    }
                }
            }
            if let (Some(h), true) = (&handle, self.done.controller_publish) {
                let req = csi::ControllerUnpublishVolumeRequest {
                    volume_id: h.clone(),
                    node_id: self.node.clone(),
                    secrets: self.secrets.clone(),
                };
                match call(
                    "ControllerUnpublishVolume",
                    rpc!(c.controller, controller_unpublish_volume, req),
                )
                .await
                {
                    Ok((_, dt)) => {
                        row(
                            6,
                            "external-attacher",
                            rpc_text("ControllerUnpublishVolume", dt),
                        );
                        more("VolumeAttachment deleted");
                        self.forget("volumeattachment.json");
                    }
                    Err(e) => failures.push(e),
                }
            }
            if let Some(h) = &handle {
                let req = csi::DeleteVolumeRequest {
                    volume_id: h.clone(),
                    secrets: self.secrets.clone(),
                };
                match call("DeleteVolume", rpc!(c.controller, delete_volume, req)).await {
                    Ok((_, dt)) => {
                        row(2, "external-provisioner", rpc_text("DeleteVolume", dt));
                        more(format!(
                            "PVC deleted, PV {} released; reclaimPolicy Delete: volume and PV deleted",
                            self.names.pv
                        ));
                        self.forget("pv.json");
                        self.forget("pvc.json");
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        self.clients = None;
        if let Some(e) = self.stop_server().await {
            failures.push(e);
        }
        failures.extend(self.check_and_clean().await);
        failures
    }

    /// SIGTERM, then SIGKILL after 10s.
    async fn stop_server(&mut self) -> Option<String> {
        let mut server = self.server.take()?;
        if let Some(pid) = rustix::process::Pid::from_raw(server.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = match tokio::time::timeout(Duration::from_secs(10), server.child.wait()).await
        {
            Ok(s) => s.ok(),
            Err(_) => {
                let _ = server.child.kill().await;
                return Some(format!(
                    "haina serve (pid {}) did not stop within 10s of SIGTERM; killed it",
                    server.pid
                ));
            }
        };
        row(
            "",
            "haina serve",
            format!(
                "stopped (SIGTERM){}",
                status
                    .filter(|s| !s.success())
                    .map(|s| format!(", {s}"))
                    .unwrap_or_default()
            ),
        );
        if self.args.keep_temp {
            more(format!("its log: {}", server.log.display()));
        }
        None
    }

    /// What is still held: mounts under the work dir, loop devices over its
    /// files (or over the measured image). The kernel may need a moment to
    /// let a loop device go after its last user, so this polls briefly.
    async fn leftovers(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = Vec::new();
            if let Ok(t) = MountTable::read() {
                for e in chain::mounts_under(&t, &self.work) {
                    left.push(format!(
                        "mount at {} ({} {})",
                        e.mount_point.display(),
                        e.fs_type,
                        e.source
                    ));
                }
            }
            let mut loops = chain::loops_under(&self.work);
            if let Some(img) = self.image.as_ref().filter(|i| !i.starts_with(&self.work)) {
                loops.extend(chain::loops_under(img));
            }
            for (dev, file) in &loops {
                left.push(format!(
                    "loop device {} over {}",
                    dev.path.display(),
                    file.display()
                ));
            }
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks the kernel for leftovers, cleans them up by force if the
    /// teardown missed any (reported as failures), and removes the work dir.
    async fn check_and_clean(&mut self) -> Vec<String> {
        let left = self.leftovers().await;
        let mut failures: Vec<String> = left.iter().map(|l| format!("left behind: {l}")).collect();
        if !left.is_empty() {
            force_clean(&self.work, self.image.as_deref());
            let still = self.leftovers().await;
            for l in &still {
                failures.push(format!("could not clean up: {l}"));
            }
        }
        if failures.is_empty() {
            row(
                "",
                "leak check",
                "no mounts, no loop devices, no processes left",
            );
        }
        let mounted = MountTable::read()
            .map(|t| !chain::mounts_under(&t, &self.work).is_empty())
            .unwrap_or(true);
        if self.args.keep_temp {
            more(format!("work dir kept: {}", self.work.display()));
        } else if mounted {
            failures.push(format!(
                "{} still has mounts; not removing it",
                self.work.display()
            ));
        } else {
            match std::fs::remove_dir_all(&self.work) {
                Ok(()) => more(format!("work dir {} removed", self.work.display())),
                Err(e) => failures.push(format!("removing {}: {e}", self.work.display())),
            }
        }
        failures
    }
}

/// The safety net: lazily unmounts what is mounted under `work` and
/// detaches loop devices over its files. Only runs when the teardown left
/// something, which the demo reports as a failure.
fn force_clean(work: &Path, image: Option<&Path>) {
    // Loop devices first: one over a FUSE-served file shows as `/image`
    // once that mount is gone, and could not be found any more.
    let mut loops = chain::loops_under(work);
    if let Some(img) = image {
        loops.extend(chain::loops_under(img));
    }
    if let Ok(t) = MountTable::read() {
        let points: Vec<PathBuf> = chain::mounts_under(&t, work)
            .iter()
            .map(|e| e.mount_point.clone())
            .collect();
        for p in points.iter().rev() {
            let _ = haina_sys::mount::unmount_lazy(p);
        }
    }
    for (dev, _) in loops {
        if let Some(l) = haina_sys::loopdev::LoopDevice::from_path(&dev.path) {
            let _ = haina_sys::loopdev::detach(&l);
        }
    }
}
