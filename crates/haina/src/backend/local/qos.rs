//! QoS limits of local volumes: the kernel's block-layer throttling
//! (blk-throttle) of the volume's loop device, through cgroup files
//! ([`haina_sys::throttle`], behind the [`haina_sys::host::Host`] trait so
//! every write has a deadline and unit tests see each one).
//!
//! The volume record holds the limits; the kernel holds a rule per device
//! number, and loop device numbers are reused. So:
//! - [`LocalPool::apply_qos`] runs at every attach (NodeStage) and at
//!   ControllerModifyVolume when the volume is attached on this node, and
//!   writes all four values, zeros included: a rule some earlier volume left
//!   on the reused device (a crash between attach and detach) is
//!   overwritten, never inherited;
//! - [`LocalPool::clear_qos`] runs before every detach, so a detached
//!   device keeps no rule for the next image attached to it.
//!
//! A stage and a modify in two processes (node and controller plugins on one
//! machine do not share the per-volume guard) could interleave their
//! "read the record, write the rule" steps; each apply therefore re-reads
//! the record after writing and applies again until the two agree, so the
//! device ends up with the latest record's limits whatever the interleaving.

use std::path::Path;

use haina_sys::host::FileKind;
use haina_sys::loopdev::LoopDevice;
use haina_sys::throttle::{DevNum, Throttle};

use super::LocalPool;
use crate::config::QosMode;
use crate::error::{Error, Result};
use crate::ids::VolumeId;
use crate::qos::{Limits, Support};
use crate::state;

/// Applies before giving up on a record that keeps changing under us.
const APPLY_ROUNDS: u32 = 4;

impl LocalPool {
    /// Enforces the QoS mutable parameters as the config says: `auto`
    /// detects the node's blk-throttle interface (`qos_cgroups` for cgroup
    /// v2); `off`, or nothing found, refuses them with the reason.
    pub fn with_qos(self, mode: QosMode, cgroups: &[std::path::PathBuf]) -> Self {
        let throttle = match mode {
            QosMode::Off => Err(format!("qos = \"off\" in the config of pool {}", self.name)),
            QosMode::Auto => haina_sys::throttle::detect(Path::new("/sys/fs/cgroup"), cgroups),
        };
        match &throttle {
            Ok(t) => tracing::info!(pool = %self.name, throttle = %t, "QoS limits enforced"),
            Err(why) => {
                tracing::info!(pool = %self.name, reason = %why, "QoS limits not available")
            }
        }
        self.with_throttle(throttle)
    }

    /// Sets where the rules go (or why there are none), as found.
    pub fn with_throttle(mut self, throttle: std::result::Result<Throttle, String>) -> Self {
        self.throttle = throttle;
        self
    }

    pub(super) fn support(&self) -> Support {
        match &self.throttle {
            Ok(_) => Support::Yes,
            Err(why) => Support::No(format!(
                "this node cannot throttle the loop devices of local volumes ({why})"
            )),
        }
    }

    /// The device number of a loop device, from its node in `/dev`.
    fn dev_num(&self, dev: &LoopDevice) -> Result<DevNum> {
        match self.host.lstat(&dev.path())? {
            Some(FileKind::BlockDevice(major, minor)) => Ok(DevNum { major, minor }),
            other => Err(Error::internal(
                format!("device number of {}", dev.path().display()),
                std::io::Error::other(format!("not a block device: {other:?}")),
            )),
        }
    }

    /// The limits the volume's record holds now (none if it is gone).
    fn recorded_limits(&self, id: &VolumeId) -> Result<Limits> {
        Ok(
            state::read::<crate::volume::Volume>(&self.volume_record(id))?
                .map(|v| v.qos)
                .unwrap_or_default(),
        )
    }

    /// Gives `dev` (the volume's loop device) the limits `want`, then the
    /// record's until they agree (see the module doc). Without blk-throttle
    /// on this node, an unlimited volume needs nothing and a limited one is
    /// refused (FAILED_PRECONDITION): it is never attached unlimited.
    pub(super) fn apply_qos(&self, id: &VolumeId, dev: &LoopDevice, want: Limits) -> Result<()> {
        let t = match &self.throttle {
            Ok(t) => t,
            Err(_) if want.is_unlimited() => return Ok(()),
            Err(why) => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} has QoS limits ({want}) but this node cannot enforce them: {why}"
                )));
            }
        };
        let num = self.dev_num(dev)?;
        let ctx = |e: haina_sys::host::HostError| {
            Error::from(e).context(format!(
                "volume {id}: the I/O limits of {} ({num}, {t})",
                dev.path().display()
            ))
        };
        let mut want = want;
        for _ in 0..APPLY_ROUNDS {
            let have = self.host.throttle_get(t, num).map_err(ctx)?;
            if have.iter().any(|h| *h != want.io()) {
                self.host.throttle_set(t, num, &want.io()).map_err(ctx)?;
                tracing::info!(volume = %id, device = %dev.path().display(), dev = %num,
                    limits = %want, "set the I/O limits of the volume's loop device");
            }
            let now = self.recorded_limits(id)?;
            if now == want {
                return Ok(());
            }
            want = now;
        }
        Err(Error::Aborted(format!(
            "the QoS limits of volume {id} kept changing while they were applied; retry"
        )))
    }

    /// Removes the rules of every loop device over `image` (before they are
    /// detached: a detached number is free for the next image).
    pub(super) fn clear_qos(&self, id: &VolumeId, image: &Path) -> Result<()> {
        let Ok(t) = &self.throttle else {
            return Ok(());
        };
        for (dev, _) in self.loops_of(image)? {
            let num = self.dev_num(&dev)?;
            let ctx = |e: haina_sys::host::HostError| {
                Error::from(e).context(format!(
                    "volume {id}: clearing the I/O limits of {} ({num}, {t})",
                    dev.path().display()
                ))
            };
            let have = self.host.throttle_get(t, num).map_err(ctx)?;
            if have.iter().any(|h| !h.is_unlimited()) {
                self.host
                    .throttle_set(t, num, &Limits::default().io())
                    .map_err(ctx)?;
                tracing::info!(volume = %id, device = %dev.path().display(), dev = %num,
                    "cleared the I/O limits of the volume's loop device before detaching it");
            }
        }
        Ok(())
    }

    /// ControllerModifyVolume: the record first (crash-safe; it is what a
    /// later stage applies), then the live device on this node, if any.
    pub(super) fn store_qos(&self, id: &VolumeId, limits: Limits) -> Result<()> {
        let record = self.volume_record(id);
        // The raw record: publications live in files of their own.
        let mut v = state::read::<crate::volume::Volume>(&record)?
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
        if v.qos != limits {
            v.qos = limits;
            state::write(&record, &v)?;
        }
        let image = self.volume_image(id);
        if let Some(dev) = self.live_loop(&image)? {
            self.apply_qos(id, &dev, limits)?;
            if self.live_loop(&image)? != Some(dev) {
                self.settle_device(&dev)?;
            }
        }
        Ok(())
    }

    /// A device this call just limited was detached meanwhile (an unstage
    /// in the node plugin's process) and maybe attached again for another
    /// image: it gets that image's volume's limits, or none.
    fn settle_device(&self, dev: &LoopDevice) -> Result<()> {
        let dir = self.root.join("volumes");
        let owner = self
            .host
            .loops()?
            .into_iter()
            .find(|(d, _, deleted)| d == dev && !deleted)
            .and_then(|(_, backing, _)| {
                let object = backing
                    .strip_prefix(&dir)
                    .ok()?
                    .to_str()?
                    .strip_suffix(".img")?
                    .to_string();
                VolumeId::parse_existing("volume", &format!("{}.{object}", self.name)).ok()
            });
        match owner {
            Some(other) => {
                let want = self.recorded_limits(&other)?;
                self.apply_qos(&other, dev, want)
            }
            None => {
                if let Ok(t) = &self.throttle {
                    let num = self.dev_num(dev)?;
                    self.host.throttle_set(t, num, &Limits::default().io())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use haina_sys::Errno;
    use haina_sys::fake::{Action, Call, FakeHost, Rule};
    use haina_sys::throttle::IoLimits;

    use super::*;
    use crate::backend::{Backend, CreateSpec};
    use crate::ids::PoolName;
    use crate::volume::{MIB, Secrets};

    const LOOP0: DevNum = DevNum { major: 7, minor: 0 };

    fn pool(
        throttle: std::result::Result<Throttle, String>,
    ) -> (tempfile::TempDir, Arc<FakeHost>, LocalPool) {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::new());
        let p = LocalPool::open(
            PoolName::parse("p").unwrap(),
            dir.path().join("pool"),
            "n".into(),
            true,
            host.clone(),
        )
        .unwrap()
        .with_throttle(throttle);
        (dir, host, p)
    }

    fn v1() -> std::result::Result<Throttle, String> {
        Ok(Throttle::V1("/sys/fs/cgroup/blkio".into()))
    }

    fn create(p: &LocalPool, name: &str, qos: Limits) -> VolumeId {
        let id = VolumeId::parse_existing("volume_id", &format!("p.{name}")).unwrap();
        let spec = CreateSpec {
            id: id.clone(),
            name: name.into(),
            capacity: MIB,
            context: BTreeMap::new(),
            source: None,
            qos,
        };
        p.create_volume(&spec, &Secrets::default()).unwrap();
        id
    }

    fn limits(write_iops: u64) -> Limits {
        Limits {
            write_iops,
            read_bps: 4 << 20,
            ..Default::default()
        }
    }

    /// The throttle and loop calls, in order.
    fn qos_calls(h: &FakeHost) -> Vec<Call> {
        h.changes()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::ThrottleSet(..) | Call::LoopAttach(_) | Call::LoopDetach(_)
                )
            })
            .collect()
    }

    #[test]
    fn attach_limits_the_device_before_use_and_detach_clears_it_first() {
        let (_d, h, p) = pool(v1());
        let id = create(&p, "v", limits(100));
        let att = p.attach(&id, &Secrets::default()).unwrap();
        assert_eq!(att.device, std::path::Path::new("/dev/loop0"));
        assert_eq!(h.throttles(), BTreeMap::from([(LOOP0, limits(100).io())]));
        // Attaching again (a retried stage) writes nothing new.
        h.clear_calls();
        p.attach(&id, &Secrets::default()).unwrap();
        assert!(
            qos_calls(&h)
                .iter()
                .all(|c| !matches!(c, Call::ThrottleSet(..)))
        );
        h.clear_calls();
        p.detach(&id).unwrap();
        let image = p.volume_image(&id);
        assert_eq!(
            qos_calls(&h),
            vec![
                Call::ThrottleSet(LOOP0, IoLimits::default()),
                Call::LoopDetach(image),
            ],
            "the rule goes before the device number is freed"
        );
        assert!(h.throttles().is_empty());
    }

    #[test]
    fn a_rule_left_on_a_reused_device_is_not_inherited() {
        let (_d, h, p) = pool(v1());
        // A crash left a rule on loop0, the device the next attach gets.
        h.set_throttle(LOOP0, limits(5).io());
        let id = create(&p, "plain", Limits::default());
        p.attach(&id, &Secrets::default()).unwrap();
        assert!(h.throttles().is_empty(), "{:?}", h.throttles());
    }

    #[test]
    fn modify_records_and_applies_live_and_zero_removes_the_rule() {
        let (_d, h, p) = pool(v1());
        let id = create(&p, "v", Limits::default());
        // Not attached: the record only.
        p.set_qos(&id, limits(50), &Secrets::default()).unwrap();
        assert!(h.throttles().is_empty());
        assert_eq!(
            p.get_volume(&id, &Secrets::default()).unwrap().unwrap().qos,
            limits(50)
        );
        p.attach(&id, &Secrets::default()).unwrap();
        assert_eq!(h.throttles()[&LOOP0], limits(50).io());
        // Attached: live, and idempotent.
        for _ in 0..2 {
            p.set_qos(&id, limits(70), &Secrets::default()).unwrap();
            assert_eq!(h.throttles()[&LOOP0], limits(70).io());
        }
        p.set_qos(&id, Limits::default(), &Secrets::default())
            .unwrap();
        assert!(h.throttles().is_empty());
        assert!(
            p.get_volume(&id, &Secrets::default())
                .unwrap()
                .unwrap()
                .qos
                .is_unlimited()
        );
        let e = p
            .set_qos(
                &VolumeId::parse_existing("volume_id", "p.none").unwrap(),
                limits(1),
                &Secrets::default(),
            )
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[test]
    fn an_apply_with_stale_limits_ends_with_the_record() {
        // A stage that read the record before a modify in another process
        // rewrote it: its apply converges on what the record says now.
        let (_d, h, p) = pool(v1());
        let id = create(&p, "v", limits(30));
        let att = p.attach(&id, &Secrets::default()).unwrap();
        let dev = LoopDevice::from_path(&att.device).unwrap();
        p.apply_qos(&id, &dev, limits(999)).unwrap();
        assert_eq!(h.throttles()[&LOOP0], limits(30).io());
    }

    #[test]
    fn without_throttling_a_limited_volume_is_refused_before_attaching() {
        let (_d, h, p) = pool(Err("no cgroup here".into()));
        assert!(matches!(p.support(), crate::qos::Support::No(m) if m.contains("no cgroup here")));
        let limited = create(&p, "limited", limits(10));
        let e = p.attach(&limited, &Secrets::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.to_string().contains("qosWriteIops=10"), "{e}");
        assert!(qos_calls(&h).is_empty(), "{:?}", h.changes());
        // An unlimited one attaches, and no rule is touched.
        let plain = create(&p, "plain", Limits::default());
        p.attach(&plain, &Secrets::default()).unwrap();
        p.detach(&plain).unwrap();
        assert!(
            h.calls()
                .iter()
                .all(|c| !matches!(c, Call::ThrottleGet(_) | Call::ThrottleSet(..)))
        );
    }

    #[test]
    fn a_failed_limit_detaches_the_new_device() {
        let (_d, h, p) = pool(v1());
        let id = create(&p, "v", limits(10));
        h.rule(
            Rule::new(
                |c| matches!(c, Call::ThrottleSet(_, l) if !l.is_unlimited()),
                Action::Fail(Errno::ACCESS),
            )
            .once(),
        );
        let e = p.attach(&id, &Secrets::default()).unwrap_err();
        assert!(e.to_string().contains("7:0"), "{e}");
        assert!(h.loop_devices().is_empty(), "{:?}", h.loop_devices());
        assert!(h.throttles().is_empty());
    }
}
