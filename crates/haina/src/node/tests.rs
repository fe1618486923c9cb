//! Node operations against a fake kernel ([`FakeHost`]) and a real local
//! pool in a temp dir: every safety rule of this module, and a fault at
//! every step, as fast tests that need no root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use haina_sys::fake::{Action, Call, Content, FakeHost, Rule};
use haina_sys::fs::FsType;
use rustix::io::Errno;

use super::*;
use crate::backend::{CreateSpec, SharedBackend};
use crate::config::Config;
use crate::driver::{Driver, Services};
use crate::volume::{AccessMode, AccessType, Capability, Secrets};

struct Node {
    _dir: tempfile::TempDir,
    host: Arc<FakeHost>,
    d: Driver,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::new());
        let d = Driver::with_host(
            &Config::load(None).unwrap(),
            "node-a".into(),
            dir.path().join("data"),
            Services {
                controller: true,
                node: true,
            },
            host.clone(),
        )
        .unwrap();
        host.mkdir("/kubelet/plugins");
        host.mkdir("/kubelet/pods");
        Node { _dir: dir, host, d }
    }

    fn backend(&self) -> SharedBackend {
        self.d.pools.values().next().unwrap().clone()
    }

    fn create(&self, name: &str) -> VolumeId {
        let id = VolumeId::for_name(self.backend().name(), name);
        let spec = CreateSpec {
            id: id.clone(),
            name: name.into(),
            capacity: 64 << 20,
            context: BTreeMap::new(),
            source: None,
            qos: Default::default(),
        };
        self.backend()
            .create_volume(&spec, &Secrets::default())
            .unwrap();
        id
    }

    fn image(&self, id: &VolumeId) -> PathBuf {
        let local = self.backend();
        let root = local
            .describe()
            .into_iter()
            .find(|(k, _)| k == "path")
            .unwrap()
            .1;
        PathBuf::from(root)
            .join("volumes")
            .join(format!("{}.img", id.object()))
    }

    fn stage(&self, id: &VolumeId, staging: &str, cap: &Capability) -> Result<()> {
        self.host.mkdir(staging);
        self.stage_at(id, staging, cap)
    }

    fn stage_at(&self, id: &VolumeId, staging: &str, cap: &Capability) -> Result<()> {
        let ctx = BTreeMap::new();
        let req = StageRequest {
            volume_id: id,
            staging: Path::new(staging),
            capability: cap,
            context: &ctx,
            readonly: false,
        };
        stage(&self.d, self.backend().as_ref(), &req, &Secrets::default())
    }

    fn unstage(&self, id: &VolumeId, staging: &str) -> Result<()> {
        unstage(&self.d, self.backend().as_ref(), id, Path::new(staging))
    }

    fn publish(&self, id: &VolumeId, staging: &str, target: &str, cap: &Capability) -> Result<()> {
        let req = PublishRequest {
            volume_id: id,
            staging: Path::new(staging),
            target: Path::new(target),
            capability: cap,
            readonly: false,
        };
        publish(&self.d, self.backend().as_ref(), &req)
    }

    fn unpublish(&self, id: &VolumeId, target: &str) -> Result<()> {
        unpublish(&self.d, self.backend().as_ref(), id, Path::new(target))
    }

    fn unmounts(&self) -> Vec<PathBuf> {
        self.host
            .changes()
            .into_iter()
            .filter_map(|c| match c {
                Call::Unmount { target, .. } => Some(target),
                _ => None,
            })
            .collect()
    }

    /// Nothing of haina's left: no mounts but the foreign ones given, no
    /// loop devices, no node record.
    fn assert_clean(&self, foreign: usize) {
        let t = self.host.table();
        assert_eq!(
            t.entries.len(),
            1 + foreign,
            "mounts left: {:#?}",
            t.entries
        );
        assert!(
            self.host.loop_devices().is_empty(),
            "{:?}",
            self.host.loop_devices()
        );
        let records = self.d.data_dir.join("node/volumes");
        let left: Vec<_> = std::fs::read_dir(&records)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "records left: {left:?}");
    }
}

fn fs_cap(fs: &str) -> Capability {
    Capability {
        access: AccessType::Mount {
            fs_type: fs.into(),
            mount_flags: vec![],
        },
        mode: AccessMode::SingleNodeWriter,
    }
}

fn block_cap() -> Capability {
    Capability {
        access: AccessType::Block,
        mode: AccessMode::SingleNodeWriter,
    }
}

/// Matches the `k`-th call (counting only changes when `changes_only`),
/// whatever its paths are (each test node has its own temp dir).
fn nth(k: usize, changes_only: bool) -> impl Fn(&Call) -> bool + Send + 'static {
    let seen = AtomicUsize::new(0);
    move |c: &Call| {
        if changes_only && !c.is_change() {
            return false;
        }
        seen.fetch_add(1, Ordering::SeqCst) == k
    }
}

const STAGE: &str = "/kubelet/plugins/pv1/globalmount";
const POD: &str = "/kubelet/pods/p1/mount";

#[test]
fn lifecycle_makes_one_filesystem_and_undoes_everything() {
    let n = Node::new();
    let id = n.create("pv1");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    n.stage(&id, STAGE, &cap).unwrap();
    n.publish(&id, STAGE, POD, &cap).unwrap();
    n.publish(&id, STAGE, POD, &cap).unwrap();
    let mkfs = n
        .host
        .changes()
        .iter()
        .filter(|c| matches!(c, Call::Mkfs { .. }))
        .count();
    assert_eq!(mkfs, 1);
    n.unpublish(&id, POD).unwrap();
    n.unpublish(&id, POD).unwrap();
    assert!(!n.host.exists(POD));
    n.unstage(&id, STAGE).unwrap();
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);
    assert_eq!(n.unmounts(), vec![PathBuf::from(POD), PathBuf::from(STAGE)]);
}

/// Issue 9, item 1: unpublish unmounts only the volume's own mounts.
#[test]
fn unpublish_leaves_foreign_mounts_and_other_volumes_alone() {
    let n = Node::new();
    n.host.mount_foreign("/dev/shm", "tmpfs", (0, 22));
    n.host
        .mount_foreign("/kubelet/pods/p9/tmp", "tmpfs", (0, 23));
    let a = n.create("a");
    let b = n.create("b");
    let cap = fs_cap("ext4");
    n.stage(&a, "/kubelet/plugins/a", &cap).unwrap();
    n.publish(&a, "/kubelet/plugins/a", "/kubelet/pods/pa/mount", &cap)
        .unwrap();
    n.stage(&b, "/kubelet/plugins/b", &cap).unwrap();
    n.host.clear_calls();
    // Foreign mounts, another volume's pod path, another volume's staging.
    for target in [
        "/dev/shm",
        "/kubelet/pods/p9/tmp",
        "/kubelet/pods/pa/mount",
        "/kubelet/plugins/a",
    ] {
        n.unpublish(&b, target).unwrap();
    }
    // `/` can never hold a volume.
    let e = n.unpublish(&b, "/").unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(n.unmounts().is_empty(), "{:?}", n.host.changes());
    assert!(n.host.changes().is_empty(), "{:?}", n.host.changes());
}

/// Issue 9, item 8: a publish onto the staging path is refused, and an
/// unpublish of the staging path never tears the staging mount down.
#[test]
fn the_staging_mount_is_never_a_publish_target() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    for target in [
        STAGE,
        "/kubelet/plugins/pv1/globalmount/sub",
        "/kubelet/plugins/pv1",
    ] {
        let e = n.publish(&id, STAGE, target, &cap).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{target}: {e}");
    }
    n.host.clear_calls();
    n.unpublish(&id, STAGE).unwrap();
    assert!(n.unmounts().is_empty());
    assert!(n.host.table().at(Path::new(STAGE)).is_some());
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);
}

/// Issue 9, item 8: a symlink in the staging path stages at the resolved
/// path, and the same request unstages it; a symlink as the last component
/// is refused.
#[test]
fn symlinks_in_paths_resolve_consistently() {
    let n = Node::new();
    n.host.mkdir("/real/kubelet/plugins");
    n.host.symlink("/var-kubelet", "/real/kubelet");
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.host.mkdir("/real/kubelet/plugins/pv");
    n.stage_at(&id, "/var-kubelet/plugins/pv", &cap).unwrap();
    assert!(
        n.host
            .table()
            .at(Path::new("/real/kubelet/plugins/pv"))
            .is_some()
    );
    n.publish(&id, "/var-kubelet/plugins/pv", "/var-kubelet/pods/x", &cap)
        .unwrap();
    n.unpublish(&id, "/var-kubelet/pods/x").unwrap();
    n.unstage(&id, "/var-kubelet/plugins/pv").unwrap();
    n.assert_clean(0);

    n.host
        .symlink("/kubelet/plugins/link", "/kubelet/plugins/elsewhere");
    let e = n.stage(&id, "/kubelet/plugins/link", &cap).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    n.assert_clean(0);
}

/// Issue 9, item 8: one volume, one staging path; both unstages converge.
#[test]
fn a_second_staging_path_is_refused() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, "/kubelet/plugins/s1", &cap).unwrap();
    let e = n.stage(&id, "/kubelet/plugins/s2", &cap).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("/kubelet/plugins/s1"), "{e}");
    // Unstaging the path it is not staged at changes nothing.
    n.unstage(&id, "/kubelet/plugins/s2").unwrap();
    assert!(
        n.host
            .table()
            .at(Path::new("/kubelet/plugins/s1"))
            .is_some()
    );
    n.unstage(&id, "/kubelet/plugins/s1").unwrap();
    n.assert_clean(0);
}

/// Issue 9, item 8: block and filesystem stagings do not mix.
#[test]
fn block_and_filesystem_do_not_mix() {
    let n = Node::new();
    let id = n.create("v");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    let e = n.publish(&id, STAGE, POD, &block_cap()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let e = n
        .stage(&id, "/kubelet/plugins/blk", &block_cap())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);

    n.stage(&id, "/kubelet/plugins/blk", &block_cap()).unwrap();
    let e = n
        .publish(&id, "/kubelet/plugins/blk", POD, &fs_cap("ext4"))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    n.publish(
        &id,
        "/kubelet/plugins/blk",
        "/kubelet/pods/p1/dev",
        &block_cap(),
    )
    .unwrap();
    n.unpublish(&id, "/kubelet/pods/p1/dev").unwrap();
    assert!(!n.host.exists("/kubelet/pods/p1/dev"));
    n.unstage(&id, "/kubelet/plugins/blk").unwrap();
    n.assert_clean(0);
    assert!(!n.host.exists(format!("/kubelet/plugins/blk/{id}")));
}

/// Issue 9, item 8: a staging path that is a file is INVALID_ARGUMENT.
#[test]
fn a_staging_path_that_is_a_file_is_invalid() {
    let n = Node::new();
    let id = n.create("v");
    n.host.touch("/kubelet/plugins/file");
    let e = n
        .stage_at(&id, "/kubelet/plugins/file", &fs_cap("ext4"))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    n.assert_clean(0);
}

/// Issue 9, item 9: the image deleted behind the driver's back while
/// staged; unstage still cleans up what the kernel shows, and stats say so.
#[test]
fn unstage_cleans_up_after_an_image_deleted_behind_our_back() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    n.publish(&id, STAGE, POD, &cap).unwrap();
    n.host.delete_backing(n.image(&id));
    std::fs::remove_file(n.image(&id)).unwrap();
    let att = n.backend().attachment(&id).unwrap();
    let s = stats(&n.d, n.backend().as_ref(), &id, Path::new(POD), att).unwrap();
    assert!(
        s.abnormal.as_deref().is_some_and(|m| m.contains("deleted")),
        "{:?}",
        s.abnormal
    );
    let e = n.stage(&id, STAGE, &cap).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    // DeleteVolume refuses while the device is attached.
    let e = n
        .backend()
        .delete_volume(&id, &Secrets::default())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    n.unpublish(&id, POD).unwrap();
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);
}

/// Issue 9, item 4: a formatting record never beats a filesystem someone
/// else made, nor one of ours that has been used since.
#[test]
fn mkfs_only_on_blank_or_our_own_pristine_filesystem() {
    for (content, expect_mkfs) in [
        // Ours, interrupted before anything mounted it: made again.
        ("ours-pristine", true),
        // Ours, finished and mounted by another node since: kept.
        ("ours-used", false),
        // Made by another node, not even mounted yet: kept.
        ("theirs", false),
    ] {
        let n = Node::new();
        let id = n.create("v");
        let cap = fs_cap("ext4");
        // The first stage writes the record (with the mkfs UUID) and dies
        // in mkfs.
        n.host
            .rule(Rule::new(|c| matches!(c, Call::Mkfs { .. }), Action::Fail(Errno::IO)).once());
        n.stage(&id, STAGE, &cap).unwrap_err();
        let uuid = record::read(&n.d, &id).unwrap().unwrap().mkfs_uuid;
        let (uuid, pristine) = match content {
            "ours-pristine" => (uuid, true),
            "ours-used" => (uuid, false),
            _ => ("11111111-2222-4333-8444-555555555555".to_string(), true),
        };
        n.host.set_disk(
            n.image(&id),
            64 << 20,
            Content::Fs {
                fs: FsType::Ext4,
                uuid: uuid.clone(),
                size: 64 << 20,
                pristine,
            },
        );
        // The image file has data now: the pool cannot prove it blank.
        std::fs::write(n.image(&id), b"not blank").unwrap();
        n.host.clear_calls();
        n.stage(&id, STAGE, &cap).unwrap();
        let made = n
            .host
            .changes()
            .iter()
            .any(|c| matches!(c, Call::Mkfs { .. }));
        assert_eq!(made, expect_mkfs, "{content}: {:?}", n.host.changes());
        n.unstage(&id, STAGE).unwrap();
        n.assert_clean(0);
    }
}

/// Issue 9, item 6: an unmount that stalls on a hung data path costs the
/// call its deadline; the retried unstage forces (lazy unmount + forced
/// detach) and converges.
#[test]
fn a_stalled_unstage_is_forced_on_retry() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    // The unmount leaves the table but hangs flushing the dead device.
    n.host.rule(
        Rule::new(
            |c| matches!(c, Call::Unmount { lazy: false, .. }),
            Action::HangAfter,
        )
        .once(),
    );
    let e = n.unstage(&id, STAGE).unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    assert!(e.to_string().contains("Retry NodeUnstageVolume"), "{e}");
    assert!(n.d.is_stalled(&id));
    n.unstage(&id, STAGE).unwrap();
    assert!(!n.d.is_stalled(&id));
    n.assert_clean(0);

    // A hang before the unmount took effect, and still there on the
    // retry: the retry unmounts lazily.
    n.stage(&id, STAGE, &cap).unwrap();
    n.host.rule(Rule::new(
        |c| matches!(c, Call::Unmount { lazy: false, .. }),
        Action::Hang,
    ));
    n.unstage(&id, STAGE).unwrap_err();
    n.host.clear_calls();
    n.unstage(&id, STAGE).unwrap();
    n.host.clear_rules();
    assert!(
        n.host.changes().contains(&Call::Unmount {
            target: STAGE.into(),
            lazy: true
        }),
        "{:?}",
        n.host.changes()
    );
    n.assert_clean(0);
}

/// Issue 9, item 6: a stalled stat or statvfs is an abnormal condition, not
/// a hung call.
#[test]
fn stats_of_a_hung_volume_are_abnormal() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    n.publish(&id, STAGE, POD, &cap).unwrap();
    n.host
        .rule(Rule::new(|c| matches!(c, Call::Statvfs(_)), Action::Hang).once());
    let att = n.backend().attachment(&id).unwrap();
    let s = stats(&n.d, n.backend().as_ref(), &id, Path::new(POD), att.clone()).unwrap();
    assert!(
        s.abnormal.as_deref().is_some_and(|m| m.contains("hung")),
        "{:?}",
        s.abnormal
    );
    let s = stats(&n.d, n.backend().as_ref(), &id, Path::new(POD), att).unwrap();
    assert_eq!(s.abnormal, None);
}

/// Every change a stage makes, failed in turn: the stage reports the error,
/// leaves nothing behind, and a retry converges.
#[test]
fn a_fault_at_every_stage_step_rolls_back() {
    for cap in [fs_cap("ext4"), fs_cap("xfs"), block_cap()] {
        // The steps of a clean stage + publish.
        let n = Node::new();
        let id = n.create("v");
        n.stage(&id, STAGE, &cap).unwrap();
        n.publish(&id, STAGE, POD, &cap).unwrap();
        let steps = n.host.changes();
        assert!(steps.len() >= 4, "{steps:?}");
        for (k, step) in steps.iter().enumerate() {
            let n = Node::new();
            let id = n.create("v");
            n.host
                .rule(Rule::new(nth(k, true), Action::Fail(Errno::IO)).once());
            let r = n
                .stage(&id, STAGE, &cap)
                .and_then(|()| n.publish(&id, STAGE, POD, &cap));
            assert!(r.is_err(), "step {k} {step:?}: no error");
            // The half-done work is undone, or picked up by the retry.
            n.stage(&id, STAGE, &cap)
                .and_then(|()| n.publish(&id, STAGE, POD, &cap))
                .unwrap_or_else(|e| panic!("step {k} {step:?}: retry: {e}"));
            n.unpublish(&id, POD).unwrap();
            n.unstage(&id, STAGE).unwrap();
            n.assert_clean(0);
            // No mount is ever left over a failed stage that the retry did not need.
            assert!(
                n.host.table().entries.len() == 1,
                "step {k}: {:?}",
                n.host.table()
            );
        }
    }
}

/// Every change an unpublish + unstage makes, failed in turn: the error is
/// reported, and the CO's retry converges with nothing left.
#[test]
fn a_fault_at_every_teardown_step_converges_on_retry() {
    for cap in [fs_cap("ext4"), block_cap()] {
        let n = Node::new();
        let id = n.create("v");
        n.stage(&id, STAGE, &cap).unwrap();
        n.publish(&id, STAGE, POD, &cap).unwrap();
        n.host.clear_calls();
        n.unpublish(&id, POD).unwrap();
        n.unstage(&id, STAGE).unwrap();
        let steps = n.host.changes();
        for (k, step) in steps.iter().enumerate() {
            let n = Node::new();
            let id = n.create("v");
            n.stage(&id, STAGE, &cap).unwrap();
            n.publish(&id, STAGE, POD, &cap).unwrap();
            n.host
                .rule(Rule::new(nth(k, true), Action::Fail(Errno::BUSY)).once());
            let r = n.unpublish(&id, POD).and_then(|()| n.unstage(&id, STAGE));
            assert!(r.is_err(), "step {k} {step:?}: no error");
            n.unpublish(&id, POD)
                .and_then(|()| n.unstage(&id, STAGE))
                .unwrap_or_else(|e| panic!("step {k} {step:?}: retry: {e}"));
            n.assert_clean(0);
        }
    }
}

/// A hang at any step of a stage is a DEADLINE_EXCEEDED, never a hung call.
#[test]
fn a_hang_at_any_step_is_reported_as_a_stall() {
    let n = Node::new();
    let id = n.create("v");
    let cap = fs_cap("ext4");
    n.stage(&id, STAGE, &cap).unwrap();
    let calls = n.host.calls();
    for (k, call) in calls.iter().enumerate() {
        let n = Node::new();
        let id = n.create("v");
        n.host.rule(Rule::new(nth(k, false), Action::Hang).once());
        let e = n.stage(&id, STAGE, &cap).unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::DeadlineExceeded,
            "call {k} {call:?}: {e}"
        );
    }
}

/// Issue 10, item 3: `max_volumes_per_node` refuses the (N+1)th volume;
/// restaging a staged one, and staging after an unstage, still work.
#[test]
fn the_attach_limit_refuses_one_volume_too_many() {
    let mut n = Node::new();
    n.d.max_volumes_per_node = 2;
    let cap = fs_cap("ext4");
    let ids: Vec<VolumeId> = ["v1", "v2", "v3"].iter().map(|v| n.create(v)).collect();
    let at = |i: usize| format!("/kubelet/plugins/{i}");
    n.stage(&ids[0], &at(0), &cap).unwrap();
    n.stage(&ids[1], &at(1), &cap).unwrap();
    let e = n.stage(&ids[2], &at(2), &cap).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("max_volumes_per_node"), "{e}");
    assert_eq!(n.host.loop_devices().len(), 2, "nothing attached for v3");
    n.stage(&ids[0], &at(0), &cap).unwrap();
    n.unstage(&ids[1], &at(1)).unwrap();
    n.stage(&ids[2], &at(2), &cap).unwrap();
    n.unstage(&ids[0], &at(0)).unwrap();
    n.unstage(&ids[2], &at(2)).unwrap();
    n.assert_clean(0);
}

/// A stage that fails before anything is attached leaves no record behind
/// (it would hold an attach-limit slot forever).
#[test]
fn a_stage_that_attaches_nothing_leaves_no_record() {
    let n = Node::new();
    let id = n.create("v");
    n.host.rule(
        Rule::new(
            |c| matches!(c, Call::LoopAttach(_)),
            Action::Fail(Errno::NOENT),
        )
        .once(),
    );
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap_err();
    n.assert_clean(0);
    // A volume that does not exist at all: NOT_FOUND, nothing left.
    let gone = VolumeId::for_name(n.backend().name(), "never-created");
    let e = n.stage(&gone, STAGE, &fs_cap("ext4")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    n.assert_clean(0);
}

/// Issue 9, item 2: the volume_context reaching the node comes from the
/// CO: hostile mkfs and mount options are refused there too, before
/// anything is attached.
#[test]
fn hostile_options_in_the_volume_context_are_refused_at_stage() {
    let n = Node::new();
    let id = n.create("v");
    n.host.mkdir(STAGE);
    for (fs, key, value) in [
        ("xfs", "mkfsOptions", "-l logdev=/dev/loop0,size=64m"),
        ("ext4", "mkfsOptions", "-d /etc"),
        ("ext4", "mountOptions", "errors=panic"),
        ("ext4", "mountOptions", "journal_path=/dev/sda"),
    ] {
        let ctx = BTreeMap::from([(key.to_string(), value.to_string())]);
        let cap = fs_cap(fs);
        let req = StageRequest {
            volume_id: &id,
            staging: Path::new(STAGE),
            capability: &cap,
            context: &ctx,
            readonly: false,
        };
        let e = stage(&n.d, n.backend().as_ref(), &req, &Secrets::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{value}: {e}");
        assert!(e.to_string().contains(key), "{value}: {e}");
        assert!(
            n.host.changes().is_empty(),
            "{value}: {:?}",
            n.host.changes()
        );
    }
    let flags = Capability {
        access: AccessType::Mount {
            fs_type: "ext4".into(),
            mount_flags: vec!["errors=panic".into()],
        },
        mode: AccessMode::SingleNodeWriter,
    };
    let e = n.stage(&id, STAGE, &flags).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    n.assert_clean(0);
}

/// A stall that has passed by the retry costs nothing: the retry unmounts
/// normally (no lazy unmount, no forced detach, no lost writes).
#[test]
fn a_retry_after_a_passing_stall_does_not_force() {
    let n = Node::new();
    let id = n.create("v");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    n.host.rule(
        Rule::new(
            |c| matches!(c, Call::Unmount { lazy: false, .. }),
            Action::Hang,
        )
        .once(),
    );
    let e = n.unstage(&id, STAGE).unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    n.host.clear_calls();
    n.unstage(&id, STAGE).unwrap();
    assert!(
        !n.host
            .changes()
            .iter()
            .any(|c| matches!(c, Call::Unmount { lazy: true, .. })),
        "{:?}",
        n.host.changes()
    );
    n.assert_clean(0);
}

/// Unstage never looks up a path inside the volume's own mounted
/// filesystem before unmounting it: that lookup reads through the data
/// path, which may be the hung one.
#[test]
fn unstage_reads_nothing_through_the_volume_before_unmounting_it() {
    let n = Node::new();
    let id = n.create("v");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    n.host.clear_calls();
    n.unstage(&id, STAGE).unwrap();
    let calls = n.host.calls();
    let unmount = calls
        .iter()
        .position(|c| matches!(c, Call::Unmount { .. }))
        .expect("an unmount");
    let inside = calls[..unmount]
        .iter()
        .filter_map(Call::path)
        .find(|p| p.starts_with(STAGE) && *p != Path::new(STAGE));
    assert_eq!(inside, None, "{calls:?}");
    n.assert_clean(0);
}

/// A foreign mount stacked over the staging mount: unstage refuses, and
/// detaches and forgets nothing (the filesystem under it is still mounted).
#[test]
fn a_covered_staging_mount_is_not_torn_down() {
    let n = Node::new();
    let id = n.create("v");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    n.host.mount_foreign(STAGE, "tmpfs", (0, 60));
    let e = n.unstage(&id, STAGE).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("tmpfs"), "{e}");
    assert_eq!(n.host.loop_devices().len(), 1);
    assert!(record::read(&n.d, &id).unwrap().is_some());
    // Once the foreign mount goes, the unstage converges.
    n.host.unmount(Path::new(STAGE), false).unwrap();
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);
}

/// A repeated stage asking for another filesystem or access than the one
/// staged is the spec's ALREADY_EXISTS, not a silent OK.
#[test]
fn an_incompatible_restage_is_already_exists() {
    let n = Node::new();
    let id = n.create("v");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    let e = n.stage(&id, STAGE, &fs_cap("xfs")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    let ro = Capability {
        access: AccessType::Mount {
            fs_type: "ext4".into(),
            mount_flags: vec![],
        },
        mode: AccessMode::SingleNodeReaderOnly,
    };
    let e = n.stage(&id, STAGE, &ro).unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    n.stage(&id, STAGE, &fs_cap("ext4")).unwrap();
    n.stage(&id, STAGE, &fs_cap("")).unwrap();
    n.unstage(&id, STAGE).unwrap();
    n.assert_clean(0);
}
