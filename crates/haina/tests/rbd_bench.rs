//! Benchmark (ignored by default; prints figures, asserts nothing about
//! them): CreateVolume/DeleteVolume latency through CSI on the cluster, and
//! fio through a mounted RBD volume (ext4 on the loop device over the FUSE
//! server) next to `rbd bench` (librbd directly) on the same cluster.
//!
//!     cargo test -p haina --release --test rbd_bench -- --ignored --nocapture
//!
//! Knobs: HAINA_BENCH_ROUNDS (create/delete rounds, default 30),
//! HAINA_BENCH_SECONDS (per fio job, default 10).

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rbd::*;

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// One workload: (name, rw, block size).
const JOBS: [(&str, &str, &str); 4] = [
    ("seq write 1M", "write", "1M"),
    ("seq read 1M", "read", "1M"),
    ("rand write 4k", "randwrite", "4k"),
    ("rand read 4k", "randread", "4k"),
];
const DEPTH: u32 = 16;

/// (IOPS, MiB/s) of a fio job on `file`.
fn fio(file: &std::path::Path, rw: &str, bs: &str, secs: u64) -> (f64, f64) {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--ioengine=libaio",
            "--direct=1",
            "--size=256M",
        ])
        .arg(format!("--filename={}", file.display()))
        .args([
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            format!("--iodepth={DEPTH}"),
            format!("--runtime={secs}"),
            "--time_based".into(),
            "--output-format=json".into(),
        ])
        .output()
        .expect("fio (apt install fio)");
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["jobs"][0];
    let side = if rw.contains("read") { "read" } else { "write" };
    let iops = job[side]["iops"].as_f64().unwrap();
    let bw = job[side]["bw_bytes"].as_f64().unwrap() / (1 << 20) as f64;
    (iops, bw)
}

/// (IOPS, MiB/s) of `rbd bench` on `image`.
fn rbd_bench(
    ceph: &Ceph,
    keyfile: &std::path::Path,
    image: &str,
    rw: &str,
    bs: &str,
) -> (f64, f64) {
    let (io_type, pattern) = match rw {
        "write" => ("write", "seq"),
        "read" => ("read", "seq"),
        "randwrite" => ("write", "rand"),
        _ => ("read", "rand"),
    };
    // rbd takes plain byte counts.
    let (size, total) = if bs == "1M" {
        ("1048576", "1073741824")
    } else {
        ("4096", "67108864")
    };
    let out = Command::new("rbd")
        .args(["-m", &ceph.mon, "--id", &ceph.user])
        .arg("--keyfile")
        .arg(keyfile)
        .args(["bench", "--io-type", io_type, "--io-pattern", pattern])
        .args([
            "--io-size",
            size,
            "--io-threads",
            &DEPTH.to_string(),
            "--io-total",
            total,
        ])
        .arg(format!("{}/{image}", ceph.pool))
        .output()
        .expect("rbd");
    assert!(
        out.status.success(),
        "rbd bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("elapsed"))
        .unwrap_or_default();
    let field = |k: &str| -> f64 {
        let rest = last.split(k).nth(1).unwrap_or_default().trim();
        let mut it = rest.split_whitespace();
        let n: f64 = it.next().unwrap_or("0").parse().unwrap_or(0.0);
        match it.next() {
            Some("KiB/s") => n / 1024.0,
            Some("MiB/s") => n,
            Some("GiB/s") => n * 1024.0,
            _ => n,
        }
    };
    (field("ops/sec:"), field("bytes/sec:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn rbd_bench_csi_and_io() {
    let Some(ceph) = Ceph::from_env("rbd_bench_csi_and_io") else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let rounds = env_or("HAINA_BENCH_ROUNDS", 30);
    let secs = env_or("HAINA_BENCH_SECONDS", 10);

    // ---- CreateVolume / DeleteVolume through CSI: a burst of creates,
    // then a burst of deletes (as a provisioner sees them). Deletes move
    // images to the RBD trash and purge them in the background; that work
    // overlaps the following deletes and is part of what they measure.
    let (mut creates, mut deletes) = (Vec::new(), Vec::new());
    let cap = block_cap(Mode::SingleNodeWriter);
    let mut ids = Vec::new();
    for i in 0..rounds {
        let name = plugin.unique(&format!("bench-cd{i}"));
        let t = Instant::now();
        let id = c
            .controller
            .create_volume(create(&ceph, "ceph", &name, 1 << 30, cap.clone()))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        creates.push(t.elapsed());
        ids.push(id);
    }
    for id in ids {
        let t = Instant::now();
        delete(&ceph, &mut c, &id).await;
        deletes.push(t.elapsed());
    }
    println!("\n== CSI on RBD ({rounds} rounds, 1 GiB volumes)");
    println!(
        "CreateVolume  p50 {:7.2} ms  p95 {:7.2} ms",
        pct(&mut creates, 0.5),
        pct(&mut creates, 0.95)
    );
    println!(
        "DeleteVolume  p50 {:7.2} ms  p95 {:7.2} ms",
        pct(&mut deletes, 0.5),
        pct(&mut deletes, 0.95)
    );

    // ---- fio through the mounted volume vs rbd bench
    let name = plugin.unique("bench-io");
    let id = c
        .controller
        .create_volume(create(&ceph, "ceph", &name, 1 << 30, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let m = publish_and_mount(&ceph, &mut c, &plugin, &id, &ext4(), "bench")
        .await
        .unwrap();
    let file = m.target.join("fio.dat");
    let mut fuse = Vec::new();
    for (_, rw, bs) in JOBS {
        fuse.push(fio(&file, rw, bs, secs));
    }
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;

    let raw = format!("bench-raw-{}", plugin.unique("x"));
    let io = ceph.connect();
    io.create_image(
        &raw,
        1 << 30,
        haina_rbd::Features::LAYERING | haina_rbd::Features::EXCLUSIVE_LOCK,
    )
    .unwrap();
    let keyfile = plugin.path("bench.key");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&keyfile)
            .unwrap();
        f.write_all(ceph.key.as_bytes()).unwrap();
    }
    let mut librbd = Vec::new();
    for (_, rw, bs) in JOBS {
        librbd.push(rbd_bench(&ceph, &keyfile, &raw, rw, bs));
    }
    let _ = std::fs::remove_file(&keyfile);
    io.remove_image(&raw).unwrap();

    println!(
        "\n== I/O, queue depth {DEPTH}: fio on ext4 over loop+FUSE (O_DIRECT, {secs} s) vs rbd bench (librbd)"
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "workload", "fuse IOPS", "fuse MiB/s", "rbd IOPS", "rbd MiB/s", "ratio"
    );
    for (i, (label, _, _)) in JOBS.iter().enumerate() {
        let (fi, fb) = fuse[i];
        let (ri, rb) = librbd[i];
        println!(
            "{label:<14} {fi:>10.0} {fb:>10.1} {ri:>10.0} {rb:>10.1} {:>6.2}x",
            if ri > 0.0 { fi / ri } else { 0.0 }
        );
    }
    plugin.assert_no_leaks();
}
