//! `haina bench`: figures, never pass/fail, each next to a baseline measured
//! in the same run on the same machine (it is shared and noisy).
//!
//! - `lifecycle`: the full CSI lifecycle of an ext4 volume through a real
//!   `haina serve` (Create → ControllerPublish → Stage → Publish → Unpublish →
//!   Unstage → ControllerUnpublish → Delete) against the bare kernel work done
//!   with the stock tools (truncate, losetup --direct-io, mkfs.ext4, mount,
//!   bind mount, and the teardown), rounds interleaved; then the server's RSS
//!   after 100 more lifecycles against its RSS at start.
//! - `snapshot`: snapshot and clone of a 1 GiB volume holding 512 MiB of
//!   data, on a reflink pool (xfs, reflink=1) and on a copy pool (ext4),
//!   side by side: time and extra space used.
//! - `capacity`: the cost of the local pool's space accounting (what every
//!   CreateVolume, snapshot and expansion pays, and what GetCapacity
//!   answers from) on pools of 10, 100 and 1000 volumes, on a sparse-copy
//!   pool (st_blocks) and on a reflink pool whose every volume has a
//!   snapshot (FIEMAP), against one statvfs (what GetCapacity cost before)
//!   and against the CreateVolume it guards, measured in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haina_csi::endpoint::Endpoint;
use haina_csi::v1 as csi;
use haina_csi::v1::controller_client::ControllerClient;
use haina_csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error>;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// CSI lifecycle of an ext4 volume vs the bare kernel work.
    Lifecycle {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Volume size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Lifecycles before the RSS reading.
        #[arg(long, default_value_t = 100)]
        rss_rounds: usize,
        /// Parent directory for the run's temp dir.
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
    },
    /// Snapshot and clone cost on a reflink pool and a copy pool.
    Snapshot {
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
    },
    /// Cost of the local pool's space accounting with many volumes.
    Capacity {
        /// Pool sizes (volume counts) to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        volumes: Vec<usize>,
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
    },
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    match args.what {
        What::Lifecycle {
            rounds,
            size_mib,
            rss_rounds,
            work_dir,
        } => lifecycle(rounds, size_mib, rss_rounds, &work_dir).await,
        What::Snapshot { work_dir } => snapshot(&work_dir).await,
        What::Capacity { volumes, work_dir } => capacity(&volumes, &work_dir),
    }
}

/// A `haina serve` child on a socket in `dir`, killed on drop.
struct Plugin {
    child: Child,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    node_id: String,
}

impl Plugin {
    async fn start(dir: &Path, config: Option<&str>) -> Result<Self, BoxError> {
        let socket = dir.join("csi.sock");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--node-id", "bench", "--endpoint"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env(
                "RUST_LOG",
                std::env::var("HAINA_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log"))?);
        if let Some(text) = config {
            let path = dir.join("config.toml");
            std::fs::write(&path, text)?;
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn()?;
        let ep = Endpoint::parse(socket.to_str().ok_or("non-UTF-8 path")?)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            if let Ok(ch) = ep.connect().await {
                break ch;
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                return Err(format!(
                    "haina serve did not start; see {}",
                    dir.join("server.log").display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child,
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            node_id: "bench".into(),
        })
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cap(fs: &str) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Create → ... → Delete, once. Returns the wall time.
async fn csi_lifecycle(
    p: &mut Plugin,
    dir: &Path,
    name: &str,
    size: u64,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let (staging, target) = (dir.join("staging"), dir.join("target"));
    std::fs::create_dir_all(&staging)?;
    let vol = p
        .controller
        .create_volume(csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap("ext4")],
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let id = vol.volume_id;
    let ctx = p
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: p.node_id.clone(),
            volume_capability: Some(cap("ext4")),
            ..Default::default()
        })
        .await?
        .into_inner()
        .publish_context;
    let st = staging.to_string_lossy().into_owned();
    let tg = target.to_string_lossy().into_owned();
    p.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            publish_context: ctx.clone(),
            staging_target_path: st.clone(),
            volume_capability: Some(cap("ext4")),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await?;
    p.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: ctx,
            staging_target_path: st.clone(),
            target_path: tg.clone(),
            volume_capability: Some(cap("ext4")),
            volume_context: vol.volume_context,
            ..Default::default()
        })
        .await?;
    p.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: tg,
        })
        .await?;
    p.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st,
        })
        .await?;
    p.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: p.node_id.clone(),
            ..Default::default()
        })
        .await?;
    p.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
    Ok(start.elapsed())
}

fn sh(argv: &[&str]) -> Result<String, BoxError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The same kernel work with the stock tools, and its teardown.
fn bare_lifecycle(dir: &Path, size: u64) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let img = dir.join("bare.img");
    let (staging, target) = (dir.join("bare-staging"), dir.join("bare-target"));
    std::fs::create_dir_all(&staging)?;
    std::fs::create_dir_all(&target)?;
    let (i, s, t) = (
        img.to_string_lossy(),
        staging.to_string_lossy(),
        target.to_string_lossy(),
    );
    sh(&["truncate", "-s", &size.to_string(), &i])?;
    let dev = sh(&["losetup", "--direct-io=on", "-f", "--show", &i])?;
    sh(&[
        "mkfs.ext4",
        "-F",
        "-q",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1",
        &dev,
    ])?;
    sh(&["mount", &dev, &s])?;
    sh(&["mount", "--bind", &s, &t])?;
    sh(&["umount", &t])?;
    sh(&["umount", &s])?;
    sh(&["losetup", "-d", &dev])?;
    std::fs::remove_file(&img)?;
    Ok(start.elapsed())
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn lifecycle(
    rounds: usize,
    size_mib: u64,
    rss_rounds: usize,
    work_dir: &Path,
) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("haina-bench-")
        .tempdir_in(work_dir)?;
    let size = size_mib << 20;
    let mut plugin = Plugin::start(dir.path(), None).await?;
    let rss_start = plugin.rss_kib();
    println!(
        "lifecycle of a {size_mib} MiB ext4 volume, {rounds} rounds, interleaved with the bare kernel work"
    );
    let (mut haina, mut bare) = (Vec::new(), Vec::new());
    // One warm-up of each, not counted.
    csi_lifecycle(&mut plugin, dir.path(), "warmup", size).await?;
    bare_lifecycle(dir.path(), size)?;
    for i in 0..rounds {
        haina.push(csi_lifecycle(&mut plugin, dir.path(), &format!("bench-{i}"), size).await?);
        bare.push(bare_lifecycle(dir.path(), size)?);
        print!(".");
        std::io::stdout().flush()?;
    }
    println!();
    let (h50, h95) = (percentile(&mut haina, 0.5), percentile(&mut haina, 0.95));
    let (b50, b95) = (percentile(&mut bare, 0.5), percentile(&mut bare, 0.95));
    println!("{:<34} {:>9} {:>9}", "", "p50 ms", "p95 ms");
    println!(
        "{:<34} {:>9.1} {:>9.1}",
        "haina (8 CSI calls)",
        ms(h50),
        ms(h95)
    );
    println!(
        "{:<34} {:>9.1} {:>9.1}",
        "bare (truncate/losetup/mkfs/mount)",
        ms(b50),
        ms(b95)
    );
    println!(
        "{:<34} {:>9.2} {:>9.2}   (target <= 1.3)",
        "ratio haina/bare",
        ms(h50) / ms(b50),
        ms(h95) / ms(b95)
    );
    for i in 0..rss_rounds {
        csi_lifecycle(&mut plugin, dir.path(), &format!("rss-{i}"), size).await?;
    }
    let rss_end = plugin.rss_kib();
    println!(
        "server RSS: {:.1} MiB at start, {:.1} MiB after {rss_rounds} more lifecycles (ratio {:.2}; target < 20 MiB)",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_end as f64 / rss_start.max(1) as f64
    );
    Ok(())
}

/// A scratch xfs (reflink=1) filesystem on a loop device; removed on drop.
struct ScratchXfs {
    mount: PathBuf,
    dev: Option<haina_sys::loopdev::LoopDevice>,
}

impl ScratchXfs {
    fn new(dir: &Path, size: u64) -> Result<Self, BoxError> {
        let img = dir.join("reflink-pool.img");
        std::fs::File::create(&img)?.set_len(size)?;
        let dev = haina_sys::loopdev::attach(&img, &Default::default())?;
        let mut me = Self {
            mount: dir.join("reflink-pool"),
            dev: Some(dev),
        };
        sh(&[
            "mkfs.xfs",
            "-q",
            "-m",
            "reflink=1",
            &dev.path().to_string_lossy(),
        ])?;
        std::fs::create_dir_all(&me.mount)?;
        haina_sys::mount::mount_fs(
            &dev.path(),
            &me.mount,
            "xfs",
            haina_sys::MountFlags::empty(),
            "",
        )?;
        me.dev = Some(dev);
        Ok(me)
    }
}

impl Drop for ScratchXfs {
    fn drop(&mut self) {
        let _ = haina_sys::mount::unmount(&self.mount);
        if let Some(dev) = self.dev.take() {
            let _ = haina_sys::loopdev::detach(&dev);
        }
    }
}

fn used_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| (s.f_blocks - s.f_bfree) * s.f_frsize)
        .unwrap_or(0)
}

async fn snapshot(work_dir: &Path) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("haina-bench-")
        .tempdir_in(work_dir)?;
    let xfs = ScratchXfs::new(dir.path(), 4 << 30)?;
    let copy_root = dir.path().join("copy-pool");
    let config = format!(
        "[pools.reflink]\nkind = \"local\"\npath = \"{}\"\n[pools.copy]\nkind = \"local\"\npath = \"{}\"\n",
        xfs.mount.join("pool").display(),
        copy_root.display()
    );
    let result = async {
        let mut p = Plugin::start(dir.path(), Some(&config)).await?;
        println!("snapshot and clone of a 1 GiB ext4 volume holding 512 MiB of data");
        println!("{:<22} {:>12} {:>12} {:>16}", "pool", "snapshot ms", "clone ms", "extra space MiB");
        let mut rows = Vec::new();
        for (pool, fs_root) in [("copy", copy_root.clone()), ("reflink", xfs.mount.clone())] {
            let row = snapshot_one(&mut p, dir.path(), pool, &fs_root).await?;
            println!("{:<22} {:>12.1} {:>12.1} {:>16.1}", format!("{pool} ({})", row.3), row.0, row.1, row.2);
            rows.push(row);
        }
        println!(
            "reflink/copy time ratio: snapshot {:.3}, clone {:.3}   (target: reflink < 50 ms and < 1 MiB extra)",
            rows[1].0 / rows[0].0,
            rows[1].1 / rows[0].1
        );
        Ok::<(), BoxError>(())
    }
    .await;
    drop(xfs);
    result
}

/// Returns (snapshot ms, clone ms, extra MiB, method).
async fn snapshot_one(
    p: &mut Plugin,
    dir: &Path,
    pool: &str,
    fs_root: &Path,
) -> Result<(f64, f64, f64, &'static str), BoxError> {
    let params: std::collections::HashMap<String, String> =
        [("pool".to_string(), pool.to_string())].into();
    let vol = p
        .controller
        .create_volume(csi::CreateVolumeRequest {
            name: format!("src-{pool}"),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap("ext4")],
            parameters: params.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let id = vol.volume_id.clone();
    let staging = dir.join(format!("staging-{pool}"));
    std::fs::create_dir_all(&staging)?;
    let st = staging.to_string_lossy().into_owned();
    p.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st.clone(),
            volume_capability: Some(cap("ext4")),
            ..Default::default()
        })
        .await?;
    {
        let mut f = std::fs::File::create(staging.join("data"))?;
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..512 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let before = used_bytes(fs_root);
    let t = Instant::now();
    let snap = p
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: format!("snap-{pool}"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .snapshot
        .ok_or("no snapshot")?;
    let snap_ms = ms(t.elapsed());
    let t = Instant::now();
    let clone = p
        .controller
        .create_volume(csi::CreateVolumeRequest {
            name: format!("clone-{pool}"),
            volume_capabilities: vec![cap("ext4")],
            parameters: params,
            volume_content_source: Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: id.clone(),
                    },
                )),
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .ok_or("no clone")?;
    let clone_ms = ms(t.elapsed());
    let extra = used_bytes(fs_root).saturating_sub(before) as f64 / (1u64 << 20) as f64;
    let method = if pool == "reflink" {
        "reflink"
    } else {
        "sparse copy"
    };
    p.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st,
        })
        .await?;
    for v in [clone.volume_id, id] {
        p.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v,
                ..Default::default()
            })
            .await?;
    }
    p.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await?;
    Ok((snap_ms, clone_ms, extra, method))
}

/// Mean time of `f` over `rounds` calls.
fn mean(rounds: u32, mut f: impl FnMut() -> Result<(), BoxError>) -> Result<Duration, BoxError> {
    let t = Instant::now();
    for _ in 0..rounds {
        f()?;
    }
    Ok(t.elapsed() / rounds)
}

fn capacity(counts: &[usize], work_dir: &Path) -> Result<(), BoxError> {
    use crate::backend::local::LocalPool;
    use crate::backend::{Backend, CreateSpec};
    use crate::ids::{PoolName, VolumeId};
    use crate::volume::Secrets;
    use std::os::unix::fs::FileExt;

    let dir = tempfile::Builder::new()
        .prefix("haina-bench-")
        .tempdir_in(work_dir)?;
    let xfs = ScratchXfs::new(dir.path(), 8 << 30)?;
    println!(
        "space accounting per call (GetCapacity, and what each CreateVolume/snapshot/expansion adds)"
    );
    println!(
        "{:<9} {:>7} {:>12} {:>14} {:>12} {:>16} {:>16}",
        "pool",
        "volumes",
        "statvfs µs",
        "accounting µs",
        "ratio",
        "CreateVolume µs",
        "accounting/create"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (kind, root) in [
        ("sparse", dir.path().join("sparse-pool")),
        ("reflink", xfs.mount.join("pool")),
    ] {
        let name = PoolName::parse(kind)?;
        let host: haina_sys::host::SharedHost = std::sync::Arc::new(haina_sys::host::RealHost);
        let pool = LocalPool::open(name.clone(), root.clone(), "bench".into(), true, host)?;
        let mut made = 0;
        for &n in counts {
            // Grow the pool to n volumes, each with 16 written 4 KiB extents
            // (and, on the reflink pool, a snapshot sharing them).
            let mut create = Duration::ZERO;
            let new = n.saturating_sub(made);
            for i in made..n {
                let id = VolumeId::for_name(&name, &format!("v{i}"));
                let spec = CreateSpec {
                    id: id.clone(),
                    name: format!("v{i}"),
                    capacity: 1 << 20,
                    context: Default::default(),
                    source: None,
                    qos: Default::default(),
                };
                let t = Instant::now();
                pool.create_volume(&spec, &Secrets::default())?;
                create += t.elapsed();
                let img = std::fs::OpenOptions::new()
                    .write(true)
                    .open(pool.volume_image(&id))?;
                for k in 0..16u64 {
                    img.write_all_at(&[0xa5; 4096], k * 65536)?;
                }
                img.sync_all()?;
                if kind == "reflink" {
                    let snap = VolumeId::for_name(&name, &format!("s{i}"));
                    pool.create_snapshot(&snap, &format!("s{i}"), &id, &Secrets::default())?;
                }
            }
            made = made.max(n);
            let base = mean(200, || {
                rustix::fs::statvfs(&root)?;
                Ok(())
            })?;
            let acct = mean(20, || {
                pool.capacity(&Secrets::default())?;
                Ok(())
            })?;
            let per_create = if new > 0 {
                create / new as u32
            } else {
                Duration::ZERO
            };
            println!(
                "{:<9} {:>7} {:>12.1} {:>14.1} {:>12.1} {:>16.1} {:>16.2}",
                kind,
                n,
                us(base),
                us(acct),
                us(acct) / us(base).max(1e-3),
                us(per_create),
                us(acct) / us(per_create).max(1e-3),
            );
        }
    }
    drop(xfs);
    Ok(())
}
