//! Shared by the QoS tests: fio runs (what a workload achieves on a file
//! or a block device), the kernel's throttle rules of a device, and the
//! csi-sanity ModifyVolume specs with the mutable parameters the docs give.
//!
//! The QoS tests assert *upper* bounds only (measured ≤ 1.25 × limit): the
//! machine is shared and noisy, so a workload may run slower than its
//! limit for reasons of its own, never faster. Every run has a ramp-up
//! that fio leaves out of its figures, so a token bucket's initial burst
//! (librbd allows one second's worth) does not count.
//! Include it with `#[path = "common/fio.rs"] mod fio;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use haina_csi::v1 as csi;

use crate::common::{Clients, expect_code, params};

const MIB: i64 = 1 << 20;

/// One fio job: what it does, on which file or device.
#[derive(Debug, Clone)]
pub struct Job {
    pub rw: &'static str,
    pub bs: &'static str,
    pub target: PathBuf,
    /// Bytes of the file or device the job stays within.
    pub size: &'static str,
}

impl Job {
    pub fn new(rw: &'static str, bs: &'static str, target: &Path) -> Job {
        Job {
            rw,
            bs,
            target: target.to_path_buf(),
            size: "24M",
        }
    }
}

/// What one job achieved: operations and bytes per second.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub iops: f64,
    pub bps: f64,
}

/// Seconds each measurement runs (after a 1.5 s ramp-up that is not counted).
pub const RUNTIME: &str = "4";

/// Runs `jobs` at once (O_DIRECT, libaio, queue depth 8) and returns each
/// one's rate, in order.
pub fn run(jobs: &[Job]) -> Vec<Rate> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--output-format=json",
        "--ioengine=libaio",
        "--direct=1",
        "--iodepth=8",
        "--time_based",
        "--ramp_time=1500ms",
    ])
    .arg(format!("--runtime={RUNTIME}"));
    for (i, j) in jobs.iter().enumerate() {
        cmd.arg(format!("--name=j{i}"))
            .arg(format!("--filename={}", j.target.display()))
            .arg(format!("--rw={}", j.rw))
            .arg(format!("--bs={}", j.bs))
            .arg(format!("--size={}", j.size));
    }
    let out = cmd.output().expect("fio (apt install fio)");
    assert!(
        out.status.success(),
        "fio {jobs:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fio output: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    jobs.iter()
        .enumerate()
        .map(|(i, j)| {
            let side = if j.rw.contains("read") {
                "read"
            } else {
                "write"
            };
            let s = &v["jobs"][i][side];
            Rate {
                iops: s["iops"].as_f64().unwrap(),
                bps: s["bw_bytes"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// Asserts `measured` ≤ 1.25 × `limit` (an upper bound only, see the module doc).
#[track_caller]
pub fn at_most(what: &str, measured: f64, limit: f64) {
    println!(
        "{what}: {measured:.1} (limit {limit}, ratio {:.2})",
        measured / limit
    );
    assert!(
        measured <= 1.25 * limit,
        "{what}: measured {measured:.1}, more than 1.25 × the limit {limit}"
    );
}

/// Writes `mib` MiB of data to `file` with O_DIRECT in 1 MiB blocks (so
/// reads have real blocks to read; a hole would be answered without I/O).
pub fn fill(file: &Path, mib: u32) {
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "oflag=direct", "conv=fsync"])
        .arg(format!("of={}", file.display()))
        .arg(format!("count={mib}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `MAJ:MIN` of a block device (`/dev/loopN`), from sysfs.
pub fn dev_num(dev: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/dev"))
        .unwrap()
        .trim()
        .to_string()
}

/// The cgroup v1 blkio throttle files, in the order [`rules`] reports.
const THROTTLE_FILES: [&str; 4] = [
    "read_iops_device",
    "write_iops_device",
    "read_bps_device",
    "write_bps_device",
];

/// The cgroup v1 blkio throttle rules of `MAJ:MIN`:
/// `[read_iops, write_iops, read_bps, write_bps]`, 0 where there is none.
pub fn rules(devnum: &str) -> [u64; 4] {
    let mut out = [0; 4];
    for (i, f) in THROTTLE_FILES.iter().enumerate() {
        let text =
            std::fs::read_to_string(format!("/sys/fs/cgroup/blkio/blkio.throttle.{f}")).unwrap();
        out[i] = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{devnum} ")))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
    }
    out
}

/// Clears the throttle rules of the devices it watches when dropped by a
/// failing test, so a test that fails half-way leaves no rule on a loop
/// device number that the next attach (another test's) would get. A test
/// that passes has checked itself that none is left, and must not clear a
/// number another test may have attached since.
#[derive(Default)]
pub struct RuleGuard(Vec<String>);

impl RuleGuard {
    pub fn watch(&mut self, devnum: &str) {
        self.0.push(devnum.to_string());
    }
}

impl Drop for RuleGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for num in &self.0 {
            for f in THROTTLE_FILES {
                let _ = std::fs::write(
                    format!("/sys/fs/cgroup/blkio/blkio.throttle.{f}"),
                    format!("{num} 0\n"),
                );
            }
        }
    }
}

/// Whether this machine has the cgroup v1 blkio throttle files the local
/// QoS tests read (they skip, saying so, where it has not).
pub fn have_v1_blkio() -> bool {
    Path::new("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device").exists()
}

/// One workload of the QoS benchmarks: a limit on one parameter, and the
/// fio job it bounds.
pub struct BenchCase {
    pub key: &'static str,
    pub limit: u64,
    pub rw: &'static str,
    pub bs: &'static str,
    /// The limit is in bytes/s (else operations/s).
    pub bytes: bool,
}

/// The QoS benchmarks' workloads, one per limit.
pub const BENCH: [BenchCase; 4] = [
    BenchCase::new("qosWriteIops", 200, "randwrite", "4k", false),
    BenchCase::new("qosReadIops", 300, "randread", "4k", false),
    BenchCase::new("qosWriteBps", 8 << 20, "write", "128k", true),
    BenchCase::new("qosReadBps", 16 << 20, "read", "128k", true),
];

/// Every QoS limit off.
pub const NO_LIMITS: [(&str, &str); 4] = [
    ("qosWriteIops", "0"),
    ("qosReadIops", "0"),
    ("qosWriteBps", "0"),
    ("qosReadBps", "0"),
];

impl BenchCase {
    const fn new(
        key: &'static str,
        limit: u64,
        rw: &'static str,
        bs: &'static str,
        bytes: bool,
    ) -> Self {
        BenchCase {
            key,
            limit,
            rw,
            bs,
            bytes,
        }
    }

    pub fn job(&self, target: &Path) -> Job {
        Job::new(self.rw, self.bs, target)
    }

    /// The limit, as the mutable parameter's value.
    pub fn limit_param(&self) -> String {
        self.limit.to_string()
    }

    pub fn print_header() {
        println!(
            "{:<40} {:>10} {:>12} {:>7} {:>14}",
            "workload", "limit", "measured", "ratio", "unlimited"
        );
    }

    /// Prints the rate under the limit as a ratio of the limit, beside the
    /// rate without one (measured in the same run).
    pub fn print_row(&self, label: &str, limited: Rate, free: Rate) {
        let pick = |r: Rate| if self.bytes { r.bps } else { r.iops };
        let m = pick(limited);
        println!(
            "{:<40} {:>10} {:>12.1} {:>6.2}x {:>14.1}",
            format!("{label} {} {} ({})", self.rw, self.bs, self.key),
            self.limit,
            m,
            m / self.limit as f64,
            pick(free)
        );
    }
}

/// The mutable parameters the csi-sanity runs get (README, docs/qos.md).
pub fn sanity_params() -> HashMap<String, String> {
    params(&[
        ("qosReadIops", "2000"),
        ("qosWriteIops", "1000"),
        ("qosReadBps", "200Mi"),
        ("qosWriteBps", "100Mi"),
    ])
}

/// The specs, for one configuration; `parameters` and `secrets` as the
/// suite's files would give them.
pub async fn sanity_specs(
    c: &mut Clients,
    tag: &str,
    cap: csi::VolumeCapability,
    parameters: HashMap<String, String>,
    secrets: HashMap<String, String>,
) {
    let size = 64 * MIB;
    let req = |name: &str, mutable: HashMap<String, String>| csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: size,
        }),
        volume_capabilities: vec![cap.clone()],
        parameters: parameters.clone(),
        secrets: secrets.clone(),
        mutable_parameters: mutable,
        ..Default::default()
    };
    let modify_req =
        |id: &str, mutable: HashMap<String, String>| csi::ControllerModifyVolumeRequest {
            volume_id: id.into(),
            secrets: secrets.clone(),
            mutable_parameters: mutable,
        };
    let fake = params(&[("XXX_FakeKey", "XXX_FakeValue")]);
    let mut made = Vec::new();

    // CreateVolume "should create volume with a volume attribute class".
    let v = c
        .controller
        .create_volume(req(&format!("sanity-{tag}-vac"), sanity_params()))
        .await
        .unwrap_or_else(|e| panic!("{tag}: create with mutable parameters: {e}"))
        .into_inner();
    made.push(v.volume.unwrap().volume_id);
    // "should not create volume with an invalid volume attribute class".
    expect_code(
        c.controller
            .create_volume(req(&format!("sanity-{tag}-bad"), fake.clone()))
            .await,
        tonic::Code::InvalidArgument,
    );
    // ModifyVolume "should fail if no volume id is given".
    expect_code(
        c.controller
            .controller_modify_volume(modify_req("", sanity_params()))
            .await,
        tonic::Code::InvalidArgument,
    );
    // "should fail if volume does not exist".
    expect_code(
        c.controller
            .controller_modify_volume(modify_req("non-existing-volume-id", sanity_params()))
            .await,
        tonic::Code::NotFound,
    );
    for (with_vac, name) in [(false, "without"), (true, "with")] {
        let v = c
            .controller
            .create_volume(req(
                &format!("sanity-{tag}-{name}"),
                if with_vac {
                    sanity_params()
                } else {
                    HashMap::new()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        made.push(v.clone());
        // "should fail if specified mutable parameters are not supported".
        expect_code(
            c.controller
                .controller_modify_volume(modify_req(&v, fake.clone()))
                .await,
            tonic::Code::InvalidArgument,
        );
        // "should modify a volume created with(out) a volume attribute class".
        c.controller
            .controller_modify_volume(modify_req(&v, sanity_params()))
            .await
            .unwrap_or_else(|e| panic!("{tag}: modify {name} a VAC: {e}"));
    }
    for id in made {
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                secrets: secrets.clone(),
            })
            .await
            .unwrap();
    }
}
