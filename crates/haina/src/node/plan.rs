//! Plans: the host steps a decision calls for, each paired with the step
//! that undoes it, run in order by [`Plan::execute`].
//!
//! If a step fails, the undo steps of the ones that succeeded run in
//! reverse, and the error returned is the original one, with any undo
//! failure appended — a failed stage never leaves half a mount behind, and
//! a failed undo is never silent. Named failpoints sit before the steps
//! the crash tests abort at.

use std::path::PathBuf;

use haina_sys::fs::FsType;
use haina_sys::host::Host;
use haina_sys::mount::parse_mount_options;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::failpoint;

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateDir(PathBuf),
    CreateFile(PathBuf),
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    Mkfs {
        dev: PathBuf,
        fs: FsType,
        args: Vec<String>,
        uuid: String,
    },
    /// e2fsck + offline grow of ext4 (before it is mounted).
    GrowOffline {
        dev: PathBuf,
    },
    /// Online grow (xfs through its mount point, ext4 through the device).
    GrowOnline {
        dev: PathBuf,
        mount_point: PathBuf,
        fs: FsType,
    },
    Mount {
        dev: PathBuf,
        target: PathBuf,
        fs: FsType,
        /// Allow-listed mount options (flags and data), `ro` included.
        options: Vec<String>,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    RemountReadOnly(PathBuf),
    /// Makes a loop device detach itself when its last mount goes (so no
    /// way of losing the mount can orphan it).
    Autoclear(PathBuf),
    Unmount {
        target: PathBuf,
        lazy: bool,
    },
}

impl Step {
    /// The step that undoes this one, if it can be undone.
    fn undo(&self) -> Option<Step> {
        match self {
            Step::CreateDir(p) => Some(Step::RemoveDir(p.clone())),
            Step::CreateFile(p) => Some(Step::RemoveFile(p.clone())),
            Step::Mount { target, .. } | Step::Bind { target, .. } => Some(Step::Unmount {
                target: target.clone(),
                lazy: false,
            }),
            _ => None,
        }
    }

    fn failpoint(&self) -> Option<&'static str> {
        match self {
            Step::Mkfs { .. } => Some("stage-before-mkfs"),
            Step::Mount { .. } => Some("stage-before-mount"),
            _ => None,
        }
    }

    /// Runs the step. Idempotent where the kernel allows: an existing
    /// directory or file, or a missing one to remove, is success.
    pub fn run(&self, host: &dyn Host) -> Result<()> {
        let what = |s: String| move |e: haina_sys::host::HostError| Error::from(e).context(s);
        match self {
            Step::CreateDir(p) => host
                .create_dir_all(p)
                .map_err(what(format!("creating {}", p.display()))),
            Step::CreateFile(p) => host
                .create_file(p)
                .map_err(what(format!("creating {}", p.display()))),
            Step::RemoveDir(p) => match host.remove_dir(p) {
                Err(e) if e.errno() == Some(Errno::NOENT) => Ok(()),
                other => other.map_err(what(format!("removing {}", p.display()))),
            },
            Step::RemoveFile(p) => match host.remove_file(p) {
                Err(e) if e.errno() == Some(Errno::NOENT) => Ok(()),
                other => other.map_err(what(format!("removing {}", p.display()))),
            },
            Step::Mkfs {
                dev,
                fs,
                args,
                uuid,
            } => host
                .mkfs(dev, *fs, args, uuid)
                .map_err(what("making the filesystem".into())),
            Step::GrowOffline { dev } => {
                host.fsck(dev).map_err(what(format!(
                    "checking {} before growing it",
                    dev.display()
                )))?;
                host.grow(dev, dev, FsType::Ext4)
                    .map_err(what("growing the filesystem".into()))
            }
            Step::GrowOnline {
                dev,
                mount_point,
                fs,
            } => host
                .grow(dev, mount_point, *fs)
                .map_err(what("growing the filesystem".into())),
            Step::Mount {
                dev,
                target,
                fs,
                options,
            } => {
                let (flags, data) = parse_mount_options(options);
                host.mount(dev, target, fs.as_str(), flags, &data)
                    .map_err(|e| match e.errno() {
                        Some(Errno::INVAL) => Error::InvalidArgument(format!(
                            "mounting {} at {} rejected the options {options:?}: {e}",
                            dev.display(),
                            target.display()
                        )),
                        _ => Error::from(e).context("mounting the staging path"),
                    })
            }
            Step::Bind { source, target } => host
                .bind(source, target)
                .map_err(what(format!("bind-mounting {}", target.display()))),
            Step::RemountReadOnly(p) => host
                .remount_bind_readonly(p)
                .map_err(what(format!("remounting {} read-only", p.display()))),
            Step::Autoclear(dev) => match haina_sys::loopdev::LoopDevice::from_path(dev) {
                Some(d) => host.loop_autoclear(&d).map_err(what(format!(
                    "setting {} to detach on last close",
                    dev.display()
                ))),
                None => Ok(()),
            },
            Step::Unmount { target, lazy } => match host.unmount(target, *lazy) {
                // Not a mount point (any more): what we wanted.
                Err(e) if e.errno() == Some(Errno::INVAL) => Ok(()),
                other => other.map_err(what(format!("unmounting {}", target.display()))),
            },
        }
    }
}

/// Steps to run in order, each with its undo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<(Step, Option<Step>)>,
}

impl Plan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step whose undo is the natural reverse (unmount a mount,
    /// remove a created directory).
    pub fn then(&mut self, step: Step) -> &mut Self {
        let undo = step.undo();
        self.steps.push((step, undo));
        self
    }

    /// Adds a step that is not undone on failure.
    pub fn then_keep(&mut self, step: Step) -> &mut Self {
        self.steps.push((step, None));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every step; on a failure, undoes the steps that ran (in
    /// reverse) and returns the original error (with undo failures named).
    pub fn execute(&self, host: &dyn Host) -> Result<()> {
        let mut done: Vec<&Step> = Vec::new();
        for (step, undo) in &self.steps {
            let run = match step.failpoint() {
                Some(name) => failpoint::hit(name).and_then(|()| step.run(host)),
                None => step.run(host),
            };
            match run {
                Ok(()) => done.extend(undo.as_ref()),
                Err(e) => return Err(rollback(host, e, done)),
            }
        }
        Ok(())
    }
}

/// Undoes `done` in reverse; the first error is kept, undo errors appended.
pub fn rollback(host: &dyn Host, err: Error, done: Vec<&Step>) -> Error {
    let mut failed = Vec::new();
    for step in done.into_iter().rev() {
        if let Err(e) = step.run(host) {
            tracing::error!(?step, error = %e, "undoing a step failed");
            failed.push(e.to_string());
        }
    }
    if failed.is_empty() {
        err
    } else {
        err.context(format!("(and undoing failed: {})", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haina_sys::fake::{Action, Call, FakeHost, Rule};
    use std::path::Path;

    #[test]
    fn a_failed_step_undoes_the_ones_before_in_reverse() {
        let h = FakeHost::new();
        h.mkdir("/src");
        let mut plan = Plan::new();
        plan.then(Step::CreateDir("/t".into()))
            .then(Step::Bind {
                source: "/src".into(),
                target: "/t".into(),
            })
            .then(Step::RemountReadOnly("/t".into()));
        h.rule(Rule::new(
            |c| matches!(c, Call::RemountReadOnly(_)),
            Action::Fail(Errno::PERM),
        ));
        let e = plan.execute(&h).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert_eq!(
            h.changes(),
            vec![
                Call::CreateDirAll("/t".into()),
                Call::Bind {
                    source: "/src".into(),
                    target: "/t".into()
                },
                Call::RemountReadOnly("/t".into()),
                Call::Unmount {
                    target: "/t".into(),
                    lazy: false
                },
                Call::RemoveDir("/t".into()),
            ]
        );
        assert!(!h.exists("/t"));
        assert!(h.table().at(Path::new("/t")).is_none());
    }

    #[test]
    fn undo_failures_are_reported_with_the_original_error() {
        let h = FakeHost::new();
        h.mkdir("/src");
        let mut plan = Plan::new();
        plan.then(Step::CreateDir("/t".into())).then(Step::Bind {
            source: "/nope".into(),
            target: "/t".into(),
        });
        h.rule(Rule::new(
            |c| matches!(c, Call::RemoveDir(_)),
            Action::Fail(Errno::BUSY),
        ));
        let e = plan.execute(&h).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("bind-mounting /t") && m.contains("undoing failed"),
            "{m}"
        );
    }

    #[test]
    fn a_stalled_step_is_a_stall_not_an_internal_error() {
        let h = FakeHost::new();
        h.rule(Rule::new(
            |c| matches!(c, Call::Unmount { .. }),
            Action::Hang,
        ));
        let mut plan = Plan::new();
        plan.then(Step::Unmount {
            target: "/x".into(),
            lazy: false,
        });
        let e = plan.execute(&h).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    }
}
