//! Integration tests of haina-rbd against a real Ceph cluster, as booted by
//! `scripts/ceph/cluster.sh up DIR` (connection from HAINA_CEPH_MON,
//! HAINA_CEPH_USER, HAINA_CEPH_KEY, HAINA_CEPH_POOL). Without those variables
//! every test fails with instructions, unless HAINA_SKIP_CEPH=1, which skips
//! them. Image names are unique per test and process, so tests run in
//! parallel and leave nothing behind (guards remove what they created).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use haina_rbd::{Cluster, ConnectOpts, Error, Features, IoCtx, LockMode, Secret};

const BOOT_HELP: &str = "\
HAINA_CEPH_MON / HAINA_CEPH_USER / HAINA_CEPH_KEY / HAINA_CEPH_POOL are not set.
Boot the single-node test cluster and export its env:
    scripts/ceph/install.sh
    scripts/ceph/cluster.sh up /tmp/haina-ceph
    eval \"$(scripts/ceph/cluster.sh env /tmp/haina-ceph)\"
(and `scripts/ceph/cluster.sh down /tmp/haina-ceph` afterwards),
or set HAINA_SKIP_CEPH=1 to skip the Ceph tests.";

struct Env {
    opts: ConnectOpts,
    pool: String,
    cluster: Cluster,
}

/// The shared connection, or `None` if the Ceph tests are skipped.
fn env() -> Option<&'static Env> {
    if std::env::var("HAINA_SKIP_CEPH").as_deref() == Ok("1") {
        println!("skipped: HAINA_SKIP_CEPH=1");
        return None;
    }
    static ENV: OnceLock<Env> = OnceLock::new();
    Some(ENV.get_or_init(|| {
        let var = |k: &str| match std::env::var(k) {
            Ok(v) if !v.is_empty() => v,
            _ => panic!("{k} missing.\n{BOOT_HELP}"),
        };
        let mut opts = ConnectOpts::new(
            var("HAINA_CEPH_MON"),
            var("HAINA_CEPH_USER"),
            Secret::new(var("HAINA_CEPH_KEY")),
        );
        opts.timeout = Duration::from_secs(20);
        let pool = var("HAINA_CEPH_POOL");
        let cluster = Cluster::connect(&opts).unwrap_or_else(|e| {
            panic!("cannot connect to the test cluster: {e}\n(is it up? `scripts/ceph/cluster.sh up DIR`)")
        });
        Env {
            opts,
            pool,
            cluster,
        }
    }))
}

impl Env {
    fn io(&self) -> IoCtx {
        self.cluster.ioctx(&self.pool).expect("ioctx")
    }

    /// A second, independent client (as another node would be).
    fn second_client(&self) -> Cluster {
        Cluster::connect(&self.opts).expect("second connection")
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes an image (and its snapshots) when dropped.
struct Cleanup {
    io: IoCtx,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(img) = self.io.open(&self.name) {
            for s in img.snap_list().unwrap_or_default() {
                if img.snap_is_protected(&s.name).unwrap_or(false) {
                    let _ = img.snap_unprotect(&s.name);
                }
                let _ = img.snap_remove(&s.name);
            }
        }
        match self.io.remove_image(&self.name) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => eprintln!("cleanup of {}: {e}", self.name),
        }
    }
}

fn create(io: &IoCtx, prefix: &str, size: u64, features: Features) -> (String, Cleanup) {
    let name = unique(prefix);
    io.create_image(&name, size, features)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let guard = Cleanup {
        io: io.clone(),
        name: name.clone(),
    };
    (name, guard)
}

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn image_lifecycle() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (name, _guard) = create(&io, "life", 64 * MIB, Features::DEFAULT);

    assert!(io.list_images().unwrap().contains(&name));
    assert!(
        io.list_image_specs()
            .unwrap()
            .iter()
            .any(|s| s.name == name && !s.id.is_empty())
    );
    let err = io.create_image(&name, MIB, Features::LAYERING).unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(err.errno_name(), Some("EEXIST"));
    assert!(io.image_exists(&name).unwrap());

    let img = io.open(&name).unwrap();
    assert_eq!(img.size().unwrap(), 64 * MIB);
    assert_eq!(img.features().unwrap(), Features::DEFAULT);
    let st = img.stat().unwrap();
    assert_eq!((st.size, st.order, st.obj_size), (64 * MIB, 22, 4 * MIB));
    assert!(st.block_name_prefix.starts_with("rbd_data."), "{st:?}");
    assert!(!img.id().unwrap().is_empty());

    img.resize(128 * MIB).unwrap();
    assert_eq!(img.size().unwrap(), 128 * MIB);

    // Metadata, including more keys than one listing page (64).
    assert_eq!(img.metadata_get("haina.io/missing").unwrap(), None);
    img.metadata_set("haina.io/owner", "pvc-1234").unwrap();
    assert_eq!(
        img.metadata_get("haina.io/owner").unwrap().as_deref(),
        Some("pvc-1234")
    );
    let long = "v".repeat(1000); // longer than the first 256-byte buffer
    img.metadata_set("haina.io/long", &long).unwrap();
    assert_eq!(
        img.metadata_get("haina.io/long").unwrap(),
        Some(long.clone())
    );
    for i in 0..70 {
        img.metadata_set(&format!("k{i:03}"), &format!("value-{i}"))
            .unwrap();
    }
    let all = img.metadata_list().unwrap();
    assert_eq!(all.len(), 72, "{:?}", &all[..3]);
    assert!(all.contains(&("k069".to_string(), "value-69".to_string())));
    assert!(all.contains(&("haina.io/long".to_string(), long)));
    assert!(img.metadata_remove("haina.io/owner").unwrap());
    assert!(!img.metadata_remove("haina.io/owner").unwrap());
    assert_eq!(img.metadata_get("haina.io/owner").unwrap(), None);

    // I/O round trip, discard, flush.
    let data = pattern(7, 100_000);
    img.write_at(5 * MIB + 17, &data).unwrap();
    img.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(img.read_at(5 * MIB + 17, &mut back).unwrap(), data.len());
    assert_eq!(back, data);
    img.discard(5 * MIB, 4 * MIB).unwrap();
    img.read_at(5 * MIB + 17, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // Reads stop at the end of the image.
    let mut tail = vec![0u8; 4096];
    assert_eq!(img.read_at(128 * MIB - 1000, &mut tail).unwrap(), 1000);
    img.close().unwrap();

    io.remove_image(&name).unwrap();
    assert!(!io.list_images().unwrap().contains(&name));
    let err = io.remove_image(&name).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn missing_things_are_not_found() {
    let Some(env) = env() else { return };
    let io = env.io();
    let name = unique("missing");

    let err = io.open(&name).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.errno_name(), Some("ENOENT"));
    assert_eq!(
        err.to_string(),
        format!("rbd_open {}/{name}: not found (ENOENT)", env.pool)
    );
    assert!(io.open_read_only(&name).unwrap_err().is_not_found());
    assert!(io.remove_image(&name).unwrap_err().is_not_found());
    assert!(!io.image_exists(&name).unwrap());
    let err = env.cluster.ioctx("no-such-pool-haina").unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let (img_name, _g) = create(&io, "nosnap", MIB, Features::LAYERING);
    let img = io.open(&img_name).unwrap();
    assert!(img.snap_remove("nope").unwrap_err().is_not_found());
    assert!(!img.snap_exists("nope").unwrap());
    assert!(
        io.open_snapshot(&img_name, "nope")
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn snapshot_clone_v2_and_flatten() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (parent_name, _pg) = create(&io, "parent", 32 * MIB, Features::DEFAULT);
    let parent = io.open(&parent_name).unwrap();
    let a = pattern(1, 64 * 1024);
    let a2 = pattern(2, 5000);
    parent.write_at(0, &a).unwrap();
    parent.write_at(4 * MIB + 123, &a2).unwrap();
    parent.flush().unwrap();

    parent.snap_create("s1").unwrap();
    assert!(parent.snap_exists("s1").unwrap());
    let snaps = parent.snap_list().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].name.as_str(), snaps[0].size), ("s1", 32 * MIB));
    assert!(parent.snap_create("s1").unwrap_err().is_already_exists());

    // Overwrite after the snapshot: clones must not see this.
    let b = pattern(99, 64 * 1024);
    parent.write_at(0, &b).unwrap();
    parent.flush().unwrap();

    // Clone v2 from an unprotected snapshot.
    assert!(!parent.snap_is_protected("s1").unwrap());
    let child_name = unique("child");
    io.clone_image(&io, &parent_name, "s1", &child_name, Features::DEFAULT)
        .unwrap();
    let _cg = Cleanup {
        io: io.clone(),
        name: child_name.clone(),
    };
    let child = io.open(&child_name).unwrap();
    let p = child.parent_info().unwrap().expect("clone has a parent");
    assert_eq!(
        (
            p.pool_name.as_str(),
            p.image_name.as_str(),
            p.snap_name.as_str()
        ),
        (env.pool.as_str(), parent_name.as_str(), "s1")
    );
    assert_eq!(p.snap_id, snaps[0].id);
    assert!(!p.image_in_trash);
    assert_eq!(parent.parent_info().unwrap(), None);

    let mut buf = vec![0u8; a.len()];
    child.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, a, "clone must show the data as of the snapshot");
    let mut buf2 = vec![0u8; a2.len()];
    child.read_at(4 * MIB + 123, &mut buf2).unwrap();
    assert_eq!(buf2, a2);

    // The snapshot itself, opened read-only, shows the same.
    let snap = io.open_snapshot(&parent_name, "s1").unwrap();
    snap.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, a);
    drop(snap);

    // Writes to the clone do not reach the parent.
    let c = pattern(50, 4096);
    child.write_at(0, &c).unwrap();
    let mut pb = vec![0u8; 4096];
    parent.read_at(0, &mut pb).unwrap();
    assert_eq!(pb, b[..4096]);

    // Flatten detaches the clone and keeps its data.
    child.flatten().unwrap();
    assert_eq!(child.parent_info().unwrap(), None);
    child.read_at(4 * MIB + 123, &mut buf2).unwrap();
    assert_eq!(buf2, a2);

    // Protect / unprotect round trip, then remove the snapshot.
    parent.snap_protect("s1").unwrap();
    assert!(parent.snap_is_protected("s1").unwrap());
    assert!(
        parent.snap_remove("s1").is_err(),
        "protected snapshot removed"
    );
    parent.snap_unprotect("s1").unwrap();
    parent.snap_remove("s1").unwrap();
    assert!(parent.snap_list().unwrap().is_empty());
}

#[test]
fn watchers_follow_opens() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (name, _g) = create(&io, "watch", 8 * MIB, Features::DEFAULT);

    // A read-only open does not watch.
    let ro = io.open_read_only(&name).unwrap();
    assert!(ro.is_read_only());
    assert!(ro.list_watchers().unwrap().is_empty());

    let h1 = io.open(&name).unwrap();
    let w = h1.list_watchers().unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].id as u64, env.cluster.instance_id());
    assert!(w[0].addr.starts_with("127.0.0.1:"), "{w:?}");

    let other = env.second_client();
    let h2 = other.ioctx(&env.pool).unwrap().open(&name).unwrap();
    let mut ids: Vec<u64> = h1
        .list_watchers()
        .unwrap()
        .iter()
        .map(|w| w.id as u64)
        .collect();
    ids.sort();
    let mut want = vec![env.cluster.instance_id(), other.instance_id()];
    want.sort();
    assert_eq!(ids, want);

    // An image in use cannot be removed.
    let err = io.remove_image(&name).unwrap_err();
    assert!(err.is_busy(), "{err}");

    drop(h2);
    assert_eq!(ro.list_watchers().unwrap().len(), 1);
    drop(h1);
    assert!(ro.list_watchers().unwrap().is_empty());
}

#[test]
fn exclusive_lock_is_exclusive() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (name, _g) = create(&io, "lock", 8 * MIB, Features::DEFAULT);

    let h1 = io.open(&name).unwrap();
    assert_eq!(h1.lock_get_owners().unwrap(), None);
    h1.lock_acquire_exclusive().unwrap();
    assert!(h1.is_exclusive_lock_owner().unwrap());

    let other = env.second_client();
    let h2 = other.ioctx(&env.pool).unwrap().open(&name).unwrap();
    let owners = h2.lock_get_owners().unwrap().expect("lock is held");
    assert_eq!(owners.mode, LockMode::Exclusive);
    assert_eq!(owners.owners.len(), 1, "{owners:?}");
    assert!(!h2.is_exclusive_lock_owner().unwrap());
    let err = h2.lock_acquire_exclusive().unwrap_err();
    assert!(
        matches!(err.errno_name(), Some("EROFS" | "EBUSY")),
        "second acquire: {err}"
    );
    let err = h2.write_at(0, b"nope").unwrap_err();
    assert_eq!(err.errno_name(), Some("EROFS"), "write without lock: {err}");

    h1.write_at(0, b"mine").unwrap();
    h1.lock_release().unwrap();
    assert!(!h1.is_exclusive_lock_owner().unwrap());
    h2.lock_acquire_exclusive().unwrap();
    assert!(h2.is_exclusive_lock_owner().unwrap());
    h2.write_at(0, b"ours").unwrap();
    h2.lock_release().unwrap();
}

#[test]
fn pool_stats_report_capacity() {
    let Some(env) = env() else { return };
    let s = env.cluster.pool_stats(&env.pool).unwrap();
    assert!(s.bytes_avail > 0, "{s:?}");
    assert!(s.avail_is_pool_max, "ceph df should answer: {s:?}");
    let err = env.cluster.pool_stats("no-such-pool-haina").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!env.cluster.fsid().unwrap().is_empty());
}

#[test]
fn bad_key_is_refused_without_leaking_it() {
    let Some(env) = env() else { return };
    let mut opts = env.opts.clone();
    // A well-formed key that is not the user's. Ceph keeps retrying the
    // handshake, so this fails with ETIMEDOUT once `timeout` has passed.
    opts.key = Secret::new("AQBzd3ZoAAAAABAAkSLmLkcvrgBqJZIbEiyZ1A==");
    opts.timeout = Duration::from_secs(3);
    let err = Cluster::connect(&opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("client.haina") || msg.contains(&env.opts.user),
        "{msg}"
    );
    assert!(!msg.contains("AQBzd3Zo"), "key leaked: {msg}");
    assert!(!format!("{err:?}").contains("AQBzd3Zo"));
    assert!(!format!("{opts:?}").contains("AQBzd3Zo"));
}

#[test]
fn one_handle_shared_by_threads() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (name, _g) = create(&io, "threads", 16 * MIB, Features::DEFAULT);
    let img = std::sync::Arc::new(io.open(&name).unwrap());
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                for round in 0..8u8 {
                    let off = u64::from(t) * 4 * MIB + u64::from(round) * 65536;
                    let data = pattern(t.wrapping_mul(16).wrapping_add(round), 65536);
                    img.write_at(off, &data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    img.read_at(off, &mut back).unwrap();
                    assert_eq!(back, data);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    img.flush().unwrap();
}

#[test]
fn namespaces_isolate_images() {
    let Some(env) = env() else { return };
    let root = env.io();
    let (a, b) = (unique("ns-a"), unique("ns-b"));
    for ns in [&a, &b] {
        assert!(!root.namespace_exists(ns).unwrap());
        root.namespace_create(ns).unwrap();
        assert!(root.namespace_exists(ns).unwrap());
        assert!(root.namespace_create(ns).unwrap_err().is_already_exists());
    }
    let io_a = env.cluster.ioctx_in(&env.pool, &a).unwrap();
    let io_b = env.cluster.ioctx_in(&env.pool, &b).unwrap();
    assert_eq!(io_a.namespace(), a);
    // The same name in both namespaces: two images, each seen only in its own.
    let name = unique("same");
    io_a.create_image(&name, 4 * MIB, Features::DEFAULT)
        .unwrap();
    let _ga = Cleanup {
        io: io_a.clone(),
        name: name.clone(),
    };
    io_b.create_image(&name, 8 * MIB, Features::DEFAULT)
        .unwrap();
    let _gb = Cleanup {
        io: io_b.clone(),
        name: name.clone(),
    };
    assert_eq!(io_a.open_read_only(&name).unwrap().size().unwrap(), 4 * MIB);
    assert_eq!(io_b.open_read_only(&name).unwrap().size().unwrap(), 8 * MIB);
    assert!(!root.list_images().unwrap().contains(&name));
    io_b.remove_image(&name).unwrap();
    assert!(
        io_a.open_read_only(&name).is_ok(),
        "removing b's image removed a's"
    );
    let err = io_b.open_read_only(&name).unwrap_err();
    assert!(err.is_not_found() && err.to_string().contains(&b), "{err}");
}

/// Removes a RADOS object when dropped.
struct ObjectCleanup {
    io: IoCtx,
    oid: String,
}

impl Drop for ObjectCleanup {
    fn drop(&mut self) {
        match self.io.remove_object(&self.oid) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => eprintln!("cleanup of object {}: {e}", self.oid),
        }
    }
}

#[test]
fn omap_keys_round_trip_and_page() {
    let Some(env) = env() else { return };
    let root = env.io();
    let ns = unique("omap-ns");
    let io = env.cluster.ioctx_in(&env.pool, &ns).unwrap();
    let oid = unique("registry");
    let _cleanup = ObjectCleanup {
        io: io.clone(),
        oid: oid.clone(),
    };

    // A missing object: reads and removals are NOT_FOUND, naming it.
    let err = io.omap_list(&oid).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(&format!("{ns}/{oid}")), "{err}");
    assert!(io.omap_get(&oid, &["a"]).unwrap_err().is_not_found());
    assert!(io.omap_remove(&oid, &["a"]).unwrap_err().is_not_found());

    // Setting creates the object; values are bytes, replaced whole.
    io.omap_set(
        &oid,
        &[("node-a", b"{\"v\":1}"), ("node-b", b"\x00\xffbin")],
    )
    .unwrap();
    io.omap_set(&oid, &[("node-a", b"{\"v\":2}")]).unwrap();
    let got = io.omap_get(&oid, &["node-a", "absent"]).unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got["node-a"], b"{\"v\":2}");
    let all = io.omap_list(&oid).unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["node-a", "node-b"]);
    assert_eq!(all["node-b"], b"\x00\xffbin");

    // More keys than one listing page (256), and a value larger than a page.
    let big = vec![b'x'; 70_000];
    let many: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| (format!("k{i:04}"), format!("value-{i}").into_bytes()))
        .collect();
    for chunk in many.chunks(100) {
        let entries: Vec<(&str, &[u8])> = chunk
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        io.omap_set(&oid, &entries).unwrap();
    }
    io.omap_set(&oid, &[("zz-big", &big)]).unwrap();
    let all = io.omap_list(&oid).unwrap();
    assert_eq!(all.len(), 603);
    assert_eq!(all["k0599"], b"value-599");
    assert_eq!(all["zz-big"].len(), big.len());

    // Removing keys (present or not) leaves the others.
    io.omap_remove(&oid, &["node-a", "never-there"]).unwrap();
    let left = io.omap_get(&oid, &["node-a", "node-b"]).unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["node-b"]);

    // The object lives in its namespace only.
    assert!(root.omap_list(&oid).unwrap_err().is_not_found());
    io.remove_object(&oid).unwrap();
    assert!(io.remove_object(&oid).unwrap_err().is_not_found());
    assert!(io.omap_list(&oid).unwrap_err().is_not_found());
}

#[test]
fn own_address_is_what_watchers_show() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (name, _g) = create(&io, "addr", MIB, Features::DEFAULT);
    let img = io.open(&name).unwrap();
    let me = env.cluster.instance_id();
    let watched = img
        .list_watchers()
        .unwrap()
        .into_iter()
        .find(|w| w.id as u64 == me)
        .expect("our own watch")
        .addr;
    let addrs = env.cluster.addrs().unwrap();
    assert!(
        addrs.contains(&watched),
        "rados_getaddrs {addrs:?} does not name our watcher address {watched:?}"
    );
    let other = env.second_client();
    assert_ne!(other.addrs().unwrap(), addrs, "two clients, one address");
}

/// Whether `needle` occurs anywhere in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encryption_format_load_and_clone() {
    use haina_rbd::{EncryptionAlgorithm, EncryptionFormat, detect_format};
    let Some(env) = env() else { return };
    let io = env.io();
    let pass = Secret::new("correct horse battery staple");
    for (format, header) in [
        (EncryptionFormat::Luks2, 16 * MIB),
        (EncryptionFormat::Luks1, 4 * MIB),
    ] {
        let (name, _g) = create(&io, "crypt", 64 * MIB, Features::DEFAULT);
        let img = io.open(&name).unwrap();
        let t = std::time::Instant::now();
        img.encryption_format(format, EncryptionAlgorithm::Aes256, &pass)
            .unwrap();
        eprintln!("{format}: format took {:?}", t.elapsed());
        // Formatting loads the encryption on the handle: its size is the
        // data area's.
        assert_eq!(img.size().unwrap(), 64 * MIB - header, "{format}");
        drop(img);
        // Raw, the image starts with the header and keeps its size.
        let raw = io.open(&name).unwrap();
        let mut head = [0u8; 8];
        raw.read_at(0, &mut head).unwrap();
        assert_eq!(detect_format(&head), Some(format));
        assert_eq!(raw.size().unwrap(), 64 * MIB);
        let img = io.open(&name).unwrap();
        let t = std::time::Instant::now();
        img.encryption_load(format, &pass).unwrap();
        eprintln!("{format}: load took {:?}", t.elapsed());
        assert_eq!(img.size().unwrap(), 64 * MIB - header, "{format}");
        // Objects never written read as zeros (a blank device for mkfs);
        // 512-byte I/O (a loop device's sector) works; the raw bytes hold
        // no plaintext. (Sectors never written inside a written object
        // read as garbage, as on dm-crypt.)
        let mut z = vec![1u8; 8192];
        img.read_at(0, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        let small = pattern(7, 512);
        img.write_at(512, &small).unwrap();
        let p = pattern(9, 64 * 1024);
        img.write_at(MIB, &p).unwrap();
        img.flush().unwrap();
        let mut back = vec![0u8; 512];
        img.read_at(512, &mut back).unwrap();
        assert_eq!(back, small);
        let mut rawbuf = vec![0u8; 2 * MIB as usize];
        raw.read_at(header, &mut rawbuf).unwrap();
        assert!(!contains(&rawbuf, &p[..64]) && !contains(&rawbuf, &small[..64]));
        // A wrong passphrase is EPERM, the other format EINVAL.
        let e = io
            .open(&name)
            .unwrap()
            .encryption_load(format, &Secret::new("wrong"))
            .unwrap_err();
        assert_eq!(e.errno_name(), Some("EPERM"), "{e}");
        assert!(!e.to_string().contains("wrong"), "{e}");
        let other = match format {
            EncryptionFormat::Luks1 => EncryptionFormat::Luks2,
            EncryptionFormat::Luks2 => EncryptionFormat::Luks1,
        };
        let e = io
            .open(&name)
            .unwrap()
            .encryption_load(other, &pass)
            .unwrap_err();
        assert_eq!(e.errno_name(), Some("EINVAL"), "{e}");
        if format == EncryptionFormat::Luks1 {
            continue;
        }
        // Clone v2 of a snapshot: the clone inherits the header and opens
        // with the same passphrase; a write into an object only the parent
        // has (copy-up) keeps the parent's ciphertext; nothing is plain.
        drop(img);
        raw.snap_create("pit").unwrap();
        let after = io.open(&name).unwrap();
        after.encryption_load(format, &pass).unwrap();
        after.write_at(MIB, &pattern(10, 64 * 1024)).unwrap();
        after.flush().unwrap();
        let child = unique("crypt-child");
        io.clone_image(&io, &name, "pit", &child, Features::DEFAULT)
            .unwrap();
        let _cg = Cleanup {
            io: io.clone(),
            name: child.clone(),
        };
        let c = io.open(&child).unwrap();
        c.encryption_load(format, &pass).unwrap();
        let mut cb = vec![0u8; p.len()];
        c.read_at(MIB, &mut cb).unwrap();
        assert_eq!(cb, p, "the clone shows the snapshot's data");
        let q = pattern(11, 4096);
        c.write_at(MIB + 128 * 1024, &q).unwrap();
        c.flush().unwrap();
        c.read_at(MIB, &mut cb).unwrap();
        assert_eq!(cb, p, "copy-up kept the parent's data");
        let craw = io.open(&child).unwrap();
        craw.read_at(header, &mut rawbuf).unwrap();
        assert!(!contains(&rawbuf, &p[..64]) && !contains(&rawbuf, &q[..64]));
        // Grown (raw) and flattened, it still opens and holds its data.
        // (Closed first: with exclusive-lock, librbd forwards a flatten to
        // the lock owner, and one with encryption loaded copies the parent
        // up through it, encrypting the header a second time.)
        drop(c);
        craw.resize(96 * MIB).unwrap();
        craw.flatten().unwrap();
        drop(craw);
        raw.snap_remove("pit").unwrap();
        let c = io.open(&child).unwrap();
        c.encryption_load(format, &pass).unwrap();
        assert_eq!(c.size().unwrap(), 96 * MIB - header);
        c.read_at(MIB, &mut cb).unwrap();
        assert_eq!(cb, p);
        let mut qb = vec![0u8; q.len()];
        c.read_at(MIB + 128 * 1024, &mut qb).unwrap();
        assert_eq!(qb, q);
        let mut z = vec![1u8; 4096];
        c.read_at(70 * MIB, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0), "the grown area reads zeros");
    }
}

/// Why haina makes encrypted restores and clones flat: librbd 16.2 fails
/// I/O to an encrypted clone grown past its parent, over the header-sized
/// range after the parent's (decrypted) end; flattened, it works. (If this
/// starts failing after a Ceph upgrade, librbd fixed it.)
#[test]
fn encrypted_clone_grown_past_its_parent() {
    use haina_rbd::{EncryptionAlgorithm, EncryptionFormat};
    let Some(env) = env() else { return };
    let io = env.io();
    let pass = Secret::new("pw");
    let (format, header) = (EncryptionFormat::Luks1, 4 * MIB);
    let (name, _g) = create(&io, "egrow", 64 * MIB, Features::DEFAULT);
    let img = io.open(&name).unwrap();
    img.encryption_format(format, EncryptionAlgorithm::Aes256, &pass)
        .unwrap();
    drop(img);
    let raw = io.open(&name).unwrap();
    raw.snap_create("s").unwrap();
    let child = unique("egrow-child");
    io.clone_image(&io, &name, "s", &child, Features::DEFAULT)
        .unwrap();
    let _cg = Cleanup {
        io: io.clone(),
        name: child.clone(),
    };
    io.open(&child).unwrap().resize(128 * MIB).unwrap();
    let parent_end = 64 * MIB - header;
    let io_at = |c: &haina_rbd::Image, off: u64| {
        let mut b = vec![0u8; 4096];
        c.read_at(off, &mut b).map(drop)
    };
    let c = io.open(&child).unwrap();
    c.encryption_load(format, &pass).unwrap();
    assert_eq!(c.size().unwrap(), 128 * MIB - header);
    assert!(io_at(&c, parent_end - 4096).is_ok());
    let e = io_at(&c, parent_end).unwrap_err();
    assert_eq!(e.errno_name(), Some("EINVAL"), "{e}");
    assert!(io_at(&c, parent_end + header).is_ok());
    drop(c);
    io.open(&child).unwrap().flatten().unwrap();
    raw.snap_remove("s").unwrap();
    let c = io.open(&child).unwrap();
    c.encryption_load(format, &pass).unwrap();
    for off in [parent_end - 4096, parent_end, parent_end + header] {
        assert!(io_at(&c, off).is_ok(), "offset {off} after flatten");
    }
    c.write_at(parent_end, &[7u8; 4096]).unwrap();
}

#[test]
fn group_snapshots_are_atomic_readable_and_refused_by_an_explicit_lock_holder() {
    let Some(env) = env() else { return };
    let io = env.io();
    let (a, _ga) = create(&io, "grp-a", 16 * MIB, Features::DEFAULT);
    let (b, _gb) = create(&io, "grp-b", 16 * MIB, Features::DEFAULT);
    let group = unique("grp");
    io.group_create(&group).unwrap();
    assert!(io.group_create(&group).unwrap_err().is_already_exists());
    assert!(io.group_list().unwrap().contains(&group));
    io.group_image_add(&group, &a).unwrap();
    io.group_image_add(&group, &b).unwrap();
    let mut members = io.group_image_list(&group).unwrap();
    members.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(members, want);

    // A user snapshot, writes, then the group snapshot, then more writes.
    let img = io.open(&a).unwrap();
    img.write_at(0, &pattern(1, 4096)).unwrap();
    img.snap_create("before").unwrap();
    img.write_at(MIB, &pattern(2, 4096)).unwrap();
    img.write_at(5 * MIB, &pattern(2, 8192)).unwrap();
    img.flush().unwrap();
    drop(img);
    io.group_snap_create(&group, "g1").unwrap();
    let img = io.open(&a).unwrap();
    img.write_at(MIB, &pattern(3, 4096)).unwrap();
    assert_eq!(
        io.group_snap_list(&group).unwrap(),
        vec![haina_rbd::GroupSnap {
            name: "g1".into(),
            complete: true
        }]
    );
    // The member's part is in the group namespace, readable by id.
    let (id, size) = img
        .group_snap(&group, "g1")
        .unwrap()
        .expect("member snapshot");
    assert_eq!(size, 16 * MIB);
    let ns = img.snap_namespace(id).unwrap();
    assert!(
        matches!(&ns, haina_rbd::SnapNamespace::Group { group: g, group_snap, .. } if *g == group && group_snap == "g1"),
        "{ns:?}"
    );
    let at = io.open_read_only(&a).unwrap();
    at.set_snap_by_id(id).unwrap();
    let mut buf = vec![0u8; 4096];
    at.read_at(MIB, &mut buf).unwrap();
    assert_eq!(
        buf,
        pattern(2, 4096),
        "the group snapshot reads its point in time"
    );
    // What changed between the user snapshot and the group snapshot.
    // librbd reports a superset (per object, from the snapshot's end of
    // data), never less: every written extent is covered, untouched
    // objects are not reported.
    let diff = at.diff_since("before", 16 * MIB).unwrap();
    let covered = |off: u64, len: u64| {
        diff.iter()
            .any(|&(o, l, exists)| exists && o <= off && off + len <= o + l)
    };
    assert!(covered(MIB, 4096) && covered(5 * MIB, 8192), "{diff:?}");
    assert!(diff.iter().all(|&(o, l, _)| o + l <= 8 * MIB), "{diff:?}");
    drop(at);

    // A client that holds b's lock explicitly refuses to release it.
    let holder = io.open(&b).unwrap();
    holder.lock_acquire_exclusive().unwrap();
    let e = io.group_snap_create(&group, "g2").unwrap_err();
    assert_eq!(e.errno(), Some(haina_rbd::EROFS), "{e}");
    drop(holder);

    // Removing the group removes its snapshots from the members.
    io.group_image_remove(&group, &b).unwrap();
    assert_eq!(io.group_image_list(&group).unwrap(), vec![a.clone()]);
    io.group_remove(&group).unwrap();
    io.group_remove(&group).unwrap();
    assert!(!io.group_list().unwrap().contains(&group));
    // librbd 16 lists a missing group as empty.
    assert!(io.group_snap_list(&group).unwrap().is_empty());
    assert!(io.group_image_list(&group).unwrap().is_empty());
    let names: Vec<String> = img
        .snap_list()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["before"]);
}
