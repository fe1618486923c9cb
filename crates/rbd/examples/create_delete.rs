//! Benchmark: latency of creating and removing an RBD image through
//! haina-rbd (one shared connection) versus spawning the `rbd` CLI for each
//! step, against the cluster in HAINA_CEPH_MON/USER/KEY/POOL (see
//! scripts/ceph/cluster.sh).
//!
//!     cargo run --release -p haina-rbd --example create_delete -- [ROUNDS] [CLI_ROUNDS] [FEATURES]
//!
//! FEATURES: `default` (librbd's set) or a comma list such as
//! `layering,exclusive-lock`; `none` for no feature bits.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haina_rbd::{Cluster, ConnectOpts, Features, Secret};

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        eprintln!(
            "{k} not set: boot a cluster with `scripts/ceph/cluster.sh up DIR` and \
             `eval \"$(scripts/ceph/cluster.sh env DIR)\"`"
        );
        std::process::exit(2)
    })
}

struct Stats(Vec<Duration>);

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }

    fn line(&self, what: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{what:<28} n={:<4} p50 {:>7.2} ms   p95 {:>7.2} ms   max {:>7.2} ms",
            self.0.len(),
            ms(self.pct(0.5)),
            ms(self.pct(0.95)),
            ms(self.pct(1.0))
        )
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("create_delete: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let cli_rounds: usize = args.next().map_or(Ok(rounds.min(20)), |s| s.parse())?;
    let features_arg = args.next().unwrap_or_else(|| "default".into());
    let features = match features_arg.as_str() {
        "default" => Features::DEFAULT,
        "none" => Features::NONE,
        list => {
            let mut f = Features::NONE;
            for n in list.split(',') {
                f |= Features::from_name(n).ok_or_else(|| format!("unknown feature {n}"))?;
            }
            f
        }
    };
    let features_cli = features.names().join(",");
    let (mon, user, pool) = (
        var("HAINA_CEPH_MON"),
        var("HAINA_CEPH_USER"),
        var("HAINA_CEPH_POOL"),
    );
    let key = Secret::new(var("HAINA_CEPH_KEY"));
    let size: u64 = 1 << 30;

    let t = Instant::now();
    let cluster = Cluster::connect(&ConnectOpts::new(&mon, &user, key.clone()))?;
    println!(
        "connect: {:.1} ms (once per process); 1 GiB images, features: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        if features_cli.is_empty() {
            "none"
        } else {
            &features_cli
        }
    );
    let io = cluster.ioctx(&pool)?;
    let tag = std::process::id();

    let (mut create, mut remove, mut both, mut open) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let name = format!("bench-lib-{tag}-{i}");
        let t0 = Instant::now();
        io.create_image(&name, size, features)?;
        let t1 = Instant::now();
        drop(io.open(&name)?);
        let t2 = Instant::now();
        io.remove_image(&name)?;
        let t3 = Instant::now();
        create.push(t1 - t0);
        open.push(t2 - t1);
        remove.push(t3 - t2);
        both.push((t1 - t0) + (t3 - t2));
    }
    // The trash path: moving to the trash is what a delete must wait for;
    // the purge can run in the background.
    let (mut trash_mv, mut purge) = (vec![], vec![]);
    for i in 0..rounds {
        let name = format!("bench-trash-{tag}-{i}");
        io.create_image(&name, size, features)?;
        let id = io.open(&name)?.id()?;
        let t0 = Instant::now();
        io.trash_move(&name)?;
        let t1 = Instant::now();
        io.trash_remove(&id)?;
        trash_mv.push(t1 - t0);
        purge.push(t1.elapsed());
    }
    println!("{}", Stats(trash_mv).line("haina-rbd trash move"));
    println!("{}", Stats(purge).line("haina-rbd trash purge"));
    let lib = Stats(both);
    println!("{}", Stats(create).line("haina-rbd create"));
    println!("{}", Stats(remove).line("haina-rbd remove"));
    println!("{}", lib.line("haina-rbd create+remove"));
    println!("{}", Stats(open).line("haina-rbd open+close"));

    // Baseline: one `rbd` process per step, authenticating each time. The
    // key goes through a private temporary keyring, not the command line.
    let keyring = std::env::temp_dir().join(format!("haina-bench-{tag}.keyring"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keyring)?;
        writeln!(f, "[client.{user}]\n\tkey = {}", key.expose())?;
    }
    let rbd = |args: &[&str]| -> Result<Duration, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let st = Command::new("rbd")
            .args(["-c", "/dev/null", "-m", &mon, "--id", &user, "--keyring"])
            .arg(&keyring)
            .args(["-p", &pool])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        if !st.success() {
            return Err(format!("rbd {args:?}: {st}").into());
        }
        Ok(t.elapsed())
    };
    let mut cli = vec![];
    let mut result = Ok(());
    for i in 0..cli_rounds {
        let name = format!("bench-cli-{tag}-{i}");
        let mut create = vec![
            "create",
            "--size",
            "1G",
            "--image-feature",
            &features_cli,
            &name,
        ];
        if features_cli.is_empty() {
            // `--image-feature ""` is rejected; an explicit empty set is
            // spelled with the rbd_default_features option.
            create = vec![
                "create",
                "--size",
                "1G",
                "--rbd-default-features",
                "0",
                &name,
            ];
        }
        let r = rbd(&create).and_then(|c| Ok(c + rbd(&["rm", "--no-progress", &name])?));
        match r {
            Ok(d) => cli.push(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&keyring);
    result?;
    if !cli.is_empty() {
        let cli = Stats(cli);
        println!("{}", cli.line("rbd CLI create+rm (2 spawns)"));
        println!(
            "ratio (p50 CLI / p50 haina-rbd): {:.1}x",
            cli.pct(0.5).as_secs_f64() / lib.pct(0.5).as_secs_f64()
        );
    }
    Ok(())
}
