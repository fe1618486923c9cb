//! Encryption at rest on a Ceph RBD pool (`encrypted: "true"`, librbd's
//! LUKS encryption, fuse mounter), against the real cluster with real FUSE,
//! loop devices and ext4:
//! - the bytes in RADOS are ciphertext behind a LUKS header (a plain volume
//!   written the same way shows the plaintext: the scan can see it), and
//!   the data survives a restage and an online expansion;
//! - the passphrase never appears in a log, the FUSE server's argv or
//!   environment, or any file under the plugin's directory;
//! - a wrong passphrase is UNAUTHENTICATED with nothing left attached; a
//!   missing one INVALID_ARGUMENT naming the secret key; krbd and local
//!   pools refuse encryption, saying why;
//! - snapshots, restores and clones stay encrypted and hold their data;
//!   mixing encrypted and plain sources is refused;
//! - a create killed right after formatting converges on retry.

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use haina_csi::v1 as csi;
use rbd::*;

/// A line that no ciphertext or filesystem metadata holds by chance.
const MARKER: &[u8] = b"HAINA-PLAINTEXT-MARKER-7f3a9c0e51\n";
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";

/// A passphrase unique to the test (so a search for it finds only leaks),
/// with a space, a non-ASCII letter and a newline: taken byte for byte.
fn passphrase(p: &Plugin, what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{what} {}-{nanos:x} é\n", p.unique("pw"))
}

/// The cluster's secrets plus an encryption passphrase.
fn secrets_with(ceph: &Ceph, pass: &str) -> HashMap<String, String> {
    let mut s = ceph.secrets();
    s.insert("encryptionPassphrase".into(), pass.into());
    s
}

/// A CreateVolume of an encrypted ext4 volume in `pool`.
fn create_encrypted(
    ceph: &Ceph,
    pool: &str,
    name: &str,
    bytes: i64,
    pass: Option<&str>,
) -> csi::CreateVolumeRequest {
    let mut r = create(ceph, pool, name, bytes, ext4());
    r.parameters.insert("encrypted".into(), "true".into());
    if let Some(p) = pass {
        r.secrets = secrets_with(ceph, p);
    }
    r
}

async fn create_ok(c: &mut Clients, req: csi::CreateVolumeRequest) -> csi::Volume {
    c.controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

async fn controller_publish(ceph: &Ceph, c: &mut Clients, node: &Plugin, id: &str) {
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.node_id.clone(),
            volume_capability: Some(ext4()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Writes 2 MiB of marked lines (tagged with `tag`) into `file` and fsyncs.
fn write_marked(m: &Mounted, file: &str, tag: &str) -> Vec<u8> {
    let line = [MARKER, tag.as_bytes(), b"\n"].concat();
    let data: Vec<u8> = line.iter().copied().cycle().take(2 << 20).collect();
    std::fs::write(m.target.join(file), &data).unwrap();
    std::fs::File::open(m.target.join(file))
        .unwrap()
        .sync_all()
        .unwrap();
    data
}

fn read(m: &Mounted, file: &str) -> Option<Vec<u8>> {
    std::fs::read(m.target.join(file)).ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|&b| b == first) {
        let at = i + p;
        if hay[at..].starts_with(needle) {
            return true;
        }
        i = at + 1;
    }
    false
}

/// What RADOS holds of an encrypted image: a LUKS header of `version` at
/// the start, and nowhere the plaintext marker.
fn assert_ciphertext(ceph: &Ceph, image: &str, version: u8) {
    let raw = ceph.raw_image(image);
    assert_eq!(&raw[..6], LUKS_MAGIC, "{image} has no LUKS header");
    assert_eq!(raw[7], version, "{image}: LUKS version");
    assert!(
        !contains(&raw, MARKER),
        "{image}: the plaintext is readable in RADOS"
    );
}

/// The size in bytes of the one loop device under the plugin's dir.
fn loop_size(p: &Plugin) -> u64 {
    let loops = loops_under(p.dir.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    let dev = loops[0].0.trim_start_matches("/dev/");
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{dev}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

/// Regular files under `root` (not through mount points) holding `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && !is_mount_point(&p) {
                dirs.push(p);
            } else if ft.is_file() && std::fs::read(&p).is_ok_and(|data| contains(&data, needle)) {
                found.push(p);
            }
        }
    }
    found
}

/// The passphrase appears nowhere: not in the plugin's log, not in any
/// file under its directory (the FUSE servers' logs included), not in the
/// argv or environment of any FUSE server.
fn assert_nowhere(p: &Plugin, pass: &str) {
    let needle = pass.trim().as_bytes();
    assert!(
        !p.logs().contains(pass.trim()),
        "the passphrase is in the log"
    );
    let files = files_containing(p.dir.path(), needle);
    assert!(files.is_empty(), "the passphrase is in {files:?}");
    for pid in p.fuse_servers() {
        for what in ["cmdline", "environ"] {
            let data = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            assert!(
                !contains(&data, needle),
                "the passphrase is in the FUSE server's {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_encrypted_volume_holds_no_plaintext_and_survives_restage() {
    let Some(ceph) = Ceph::from_env("rbd_encrypted_volume_holds_no_plaintext_and_survives_restage")
    else {
        return;
    };
    // A keyring, for ListVolumes (which carries no secrets).
    let plugin = Plugin::start_with_keyring(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let pass = passphrase(&plugin, "volume");
    let name = plugin.unique("pvc-enc");
    let image = format!("csi-vol-{name}");
    let req = create_encrypted(&ceph, "ceph", &name, 64 * MIB, Some(&pass));
    let vol = create_ok(&mut c, req.clone()).await;
    let id = vol.volume_id.clone();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(
        vol.volume_context.get("encrypted").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        vol.volume_context
            .get("encryptionFormat")
            .map(String::as_str),
        Some("luks2")
    );
    // In Ceph: the raw image is larger by the LUKS2 header, which it starts
    // with, and records how it is encrypted (never the passphrase).
    assert_eq!(ceph.raw_image(&image).len() as i64, 80 * MIB);
    let record = ceph.image_meta(&image, "haina.encryption").unwrap();
    assert!(record.contains("luks2"), "{record}");
    // Idempotent by name.
    assert_eq!(create_ok(&mut c, req).await.volume_id, id);

    controller_publish(&ceph, &mut c, &plugin, &id).await;
    let m = mount_on_with(
        &plugin,
        &id,
        &ext4(),
        "p1",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    // The volume has the capacity asked for; the server was told the format.
    assert_eq!(loop_size(&plugin), 64 << 20);
    let servers = plugin.fuse_servers();
    assert_eq!(servers.len(), 1);
    let argv = std::fs::read_to_string(format!("/proc/{}/cmdline", servers[0])).unwrap();
    assert!(argv.contains("--encryption-format\0luks2"), "{argv:?}");
    let data = write_marked(&m, "secret.txt", "v1");
    assert_nowhere(&plugin, &pass);
    assert_ciphertext(&ceph, &image, 2);

    // Control: the same writes to a plain volume are readable in RADOS, so
    // the scan above would have seen plaintext.
    let plain_name = plugin.unique("pvc-plain");
    let plain = create_ok(&mut c, create(&ceph, "ceph", &plain_name, 64 * MIB, ext4())).await;
    controller_publish(&ceph, &mut c, &plugin, &plain.volume_id).await;
    let pm = mount_on(
        &ceph,
        &plugin,
        &plain.volume_id,
        &ext4(),
        "plain",
        Default::default(),
    )
    .await
    .unwrap();
    write_marked(&pm, "secret.txt", "v1");
    let plain_raw = ceph.raw_image(&format!("csi-vol-{plain_name}"));
    assert!(contains(&plain_raw, MARKER), "the control saw no plaintext");
    assert_ne!(&plain_raw[..6], LUKS_MAGIC);
    unmount_on(&plugin, &pm).await;
    unpublish(&ceph, &mut c, &plain.volume_id, &plugin.node_id).await;
    delete(&ceph, &mut c, &plain.volume_id).await;

    // Restage: the data is there.
    unmount_on(&plugin, &m).await;
    assert!(plugin.fuse_servers().is_empty());
    let m = mount_on_with(
        &plugin,
        &id,
        &ext4(),
        "p2",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    assert_eq!(read(&m, "secret.txt").as_deref(), Some(&data[..]));

    // ListVolumes shows the encryption, never the passphrase.
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entry = listed
        .entries
        .iter()
        .find(|e| e.volume.as_ref().unwrap().volume_id == id)
        .unwrap();
    let ctx = &entry.volume.as_ref().unwrap().volume_context;
    assert_eq!(ctx.get("encrypted").map(String::as_str), Some("true"));
    assert_eq!(entry.volume.as_ref().unwrap().capacity_bytes, 64 * MIB);
    assert!(!format!("{listed:?}").contains(pass.trim()));

    assert_nowhere(&plugin, &pass);
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;
    plugin.assert_no_leaks();
    assert_nowhere(&plugin, &pass);
    assert!(ceph.images_with(&name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_encryption_refusals_name_what_is_wrong() {
    let Some(ceph) = Ceph::from_env("rbd_encryption_refusals_name_what_is_wrong") else {
        return;
    };
    let config = ceph.config() + "[pools.local]\nkind = \"local\"\n";
    let plugin = Plugin::start_with_config(&ceph, "controller,node", &[], &config).await;
    let mut c = plugin.clients().await;
    let pass = passphrase(&plugin, "right");
    let wrong = passphrase(&plugin, "wrong");
    let name = plugin.unique("pvc-refuse");

    // No passphrase to format with: nothing is created.
    let err = c
        .controller
        .create_volume(create_encrypted(&ceph, "ceph", &name, 64 * MIB, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("secrets.encryptionPassphrase"),
        "{err:?}"
    );
    assert!(ceph.images_with(&name).is_empty());
    // Parameters are checked, naming the field.
    let mut bad = create_encrypted(&ceph, "ceph", &name, 64 * MIB, Some(&pass));
    bad.parameters.insert("encrypted".into(), "yes".into());
    let err = c.controller.create_volume(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("parameters.encrypted"), "{err:?}");
    // A local pool cannot encrypt, and says so.
    let err = c
        .controller
        .create_volume(create_encrypted(
            &ceph,
            "local",
            &name,
            64 * MIB,
            Some(&pass),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("parameters.encrypted") && err.message().contains("local"),
        "{err:?}"
    );

    let vol = create_ok(
        &mut c,
        create_encrypted(&ceph, "ceph", &name, 64 * MIB, Some(&pass)),
    )
    .await;
    let id = vol.volume_id.clone();
    controller_publish(&ceph, &mut c, &plugin, &id).await;

    // A wrong passphrase: UNAUTHENTICATED naming the volume, nothing left
    // attached (no mount, loop device or server; nobody has the image open).
    let err = mount_on_with(
        &plugin,
        &id,
        &ext4(),
        "wrong",
        Default::default(),
        secrets_with(&ceph, &wrong),
    )
    .await
    .err()
    .expect("staged with a wrong passphrase");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&id), "{err:?}");
    assert!(err.message().contains("encryptionPassphrase"), "{err:?}");
    assert!(!err.message().contains(wrong.trim()), "{err:?}");
    plugin.assert_no_leaks();
    let image = format!("csi-vol-{name}");
    let img = ceph.connect().open_read_only(&image).unwrap();
    assert!(img.list_watchers().unwrap().is_empty(), "left open");
    drop(img);
    let img = ceph.connect().open(&image).unwrap();
    assert!(img.lock_get_owners().unwrap().is_none(), "left locked");
    drop(img);
    // No passphrase at all: INVALID_ARGUMENT naming the secret key.
    let err = mount_on_with(
        &plugin,
        &id,
        &ext4(),
        "none",
        Default::default(),
        ceph.secrets(),
    )
    .await
    .err()
    .expect("staged without a passphrase");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("secrets.encryptionPassphrase"),
        "{err:?}"
    );
    plugin.assert_no_leaks();
    // The right one works.
    let m = mount_on_with(
        &plugin,
        &id,
        &ext4(),
        "right",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    write_marked(&m, "f", "refusals");
    assert_nowhere(&plugin, &wrong);
    assert_nowhere(&plugin, &pass);
    unmount_on(&plugin, &m).await;
    unpublish(&ceph, &mut c, &id, &plugin.node_id).await;
    delete(&ceph, &mut c, &id).await;

    // krbd cannot load librbd's encryption: refused, naming dm-crypt, before
    // anything is mapped. nbd can (it fails here only for its module).
    for (pool, needle) in [("ceph-krbd", "dm-crypt"), ("ceph-nbd", "\"nbd\"")] {
        let name = plugin.unique(&format!("pvc-{pool}"));
        let vol = create_ok(
            &mut c,
            create_encrypted(&ceph, pool, &name, 64 * MIB, Some(&pass)),
        )
        .await;
        controller_publish(&ceph, &mut c, &plugin, &vol.volume_id).await;
        let err = mount_on_with(
            &plugin,
            &vol.volume_id,
            &ext4(),
            pool,
            Default::default(),
            secrets_with(&ceph, &pass),
        )
        .await
        .err()
        .expect("staged on a mounter that cannot run");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(needle), "{pool}: {err:?}");
        if pool == "ceph-nbd" {
            assert!(!err.message().contains("dm-crypt"), "{err:?}");
        }
        plugin.assert_no_leaks();
        unpublish(&ceph, &mut c, &vol.volume_id, &plugin.node_id).await;
        delete(&ceph, &mut c, &vol.volume_id).await;
    }
    assert_nowhere(&plugin, &pass);
}

fn snap_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    }
}

fn volume_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_encrypted_snapshot_restore_and_clone_stay_encrypted() {
    let Some(ceph) = Ceph::from_env("rbd_encrypted_snapshot_restore_and_clone_stay_encrypted")
    else {
        return;
    };
    let plugin = Plugin::start(&ceph, "controller,node").await;
    let mut c = plugin.clients().await;
    let pass = passphrase(&plugin, "snap");
    let src_name = plugin.unique("pvc-esrc");
    let src = create_ok(
        &mut c,
        create_encrypted(&ceph, "ceph", &src_name, 64 * MIB, Some(&pass)),
    )
    .await
    .volume_id;
    controller_publish(&ceph, &mut c, &plugin, &src).await;
    let m = mount_on_with(
        &plugin,
        &src,
        &ext4(),
        "src",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    let v1 = write_marked(&m, "state", "before snapshot");

    // Snapshot while mounted (frozen around the RBD snapshot).
    let snap_name = plugin.unique("snap-enc");
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            name: snap_name.clone(),
            source_volume_id: src.clone(),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.size_bytes, 64 * MIB, "the size is the volume's");
    let snap_image = format!("csi-snap-{snap_name}");
    assert!(ceph.image_meta(&snap_image, "haina.encryption").is_some());
    assert_ciphertext(&ceph, &snap_image, 2);
    let v2 = write_marked(&m, "state", "after snapshot");

    // Restore (bigger): encrypted too, with the same passphrase, holding the
    // snapshot's data.
    let restored_name = plugin.unique("pvc-erest");
    let mut req = create_encrypted(&ceph, "ceph", &restored_name, 96 * MIB, Some(&pass));
    req.volume_content_source = Some(snap_source(&snap.snapshot_id));
    let restored = create_ok(&mut c, req).await;
    assert_eq!(restored.capacity_bytes, 96 * MIB);
    let restored_image = format!("csi-vol-{restored_name}");
    // A full copy (librbd 16.2 cannot grow an encrypted clone), and says so.
    assert_eq!(
        restored
            .volume_context
            .get("copyMethod")
            .map(String::as_str),
        Some("full")
    );
    assert!(
        ceph.connect()
            .open_read_only(&restored_image)
            .unwrap()
            .parent_info()
            .unwrap()
            .is_none(),
        "an encrypted restore is flat"
    );
    controller_publish(&ceph, &mut c, &plugin, &restored.volume_id).await;
    let rm = mount_on_with(
        &plugin,
        &restored.volume_id,
        &ext4(),
        "restored",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    // Grown at stage past the snapshot's end (where I/O to an encrypted
    // clone fails): the whole filesystem is usable.
    assert_eq!(read(&rm, "state").as_deref(), Some(&v1[..]));
    let st = rustix::fs::statvfs(&rm.target).unwrap();
    assert!(
        st.f_blocks * st.f_frsize > 80 << 20,
        "ext4 not grown: {}",
        st.f_blocks * st.f_frsize
    );
    let big: Vec<u8> = MARKER.iter().copied().cycle().take(60 << 20).collect();
    std::fs::write(rm.target.join("big"), &big).unwrap();
    std::fs::File::open(rm.target.join("big"))
        .unwrap()
        .sync_all()
        .unwrap();
    write_marked(&rm, "new", "written to the restore");
    assert_ciphertext(&ceph, &restored_image, 2);
    unmount_on(&plugin, &rm).await;

    // Clone of the (mounted) volume, as a raw block volume: its current
    // data, encrypted; then grown online, with I/O right past the old end.
    let clone_name = plugin.unique("pvc-eclone");
    let block = block_cap(Mode::SingleNodeWriter);
    let mut req = create_encrypted(&ceph, "ceph", &clone_name, 64 * MIB, Some(&pass));
    req.volume_capabilities = vec![block.clone()];
    req.volume_content_source = Some(volume_source(&src));
    let clone = create_ok(&mut c, req).await;
    c.controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: clone.volume_id.clone(),
            node_id: plugin.node_id.clone(),
            volume_capability: Some(block.clone()),
            secrets: ceph.secrets(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cm = mount_on_with(
        &plugin,
        &clone.volume_id,
        &block,
        "clone",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    let device = std::fs::read(&cm.target).unwrap();
    assert_eq!(device.len() as i64, 64 * MIB);
    assert!(
        contains(&device, &v2[..4096]),
        "the clone lacks the source's data"
    );
    let clone_image = format!("csi-vol-{clone_name}");
    assert_ciphertext(&ceph, &clone_image, 2);
    let grown = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: clone.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 96 * MIB,
                limit_bytes: 0,
            }),
            secrets: ceph.secrets(),
            volume_capability: Some(block.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 96 * MIB);
    // Raw: the capacity plus the LUKS2 header.
    assert_eq!(ceph.raw_image(&clone_image).len() as i64, 112 * MIB);
    plugin
        .clients()
        .await
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: clone.volume_id.clone(),
            volume_path: cm.target.to_str().unwrap().into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 96 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(block.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cm.target)
            .unwrap();
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 96 << 20);
        let tail: Vec<u8> = MARKER.iter().copied().cycle().take(24 << 20).collect();
        f.seek(SeekFrom::Start(66 << 20)).unwrap();
        f.write_all(&tail).unwrap();
        f.sync_all().unwrap();
        let mut back = vec![0u8; tail.len()];
        f.seek(SeekFrom::Start(66 << 20)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(
            back == tail,
            "the grown area does not hold what was written"
        );
    }
    assert_ciphertext(&ceph, &clone_image, 2);
    unmount_on(&plugin, &cm).await;

    // Mixing is refused, naming the parameter; nothing is created.
    let mixed = plugin.unique("pvc-mixed");
    let mut plain = create(&ceph, "ceph", &mixed, 64 * MIB, ext4());
    plain.volume_content_source = Some(snap_source(&snap.snapshot_id));
    let mut luks1 = create_encrypted(&ceph, "ceph", &mixed, 64 * MIB, Some(&pass));
    luks1
        .parameters
        .insert("encryptionFormat".into(), "luks1".into());
    luks1.volume_content_source = Some(snap_source(&snap.snapshot_id));
    for (req, needle) in [
        (plain, "parameters.encrypted"),
        (luks1, "encryptionFormat \"luks2\""),
    ] {
        let err = c.controller.create_volume(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{err:?}");
    }
    let plain_src = create_ok(
        &mut c,
        create(&ceph, "ceph", &plugin.unique("pvc-psrc"), 64 * MIB, ext4()),
    )
    .await;
    let mut enc_of_plain = create_encrypted(&ceph, "ceph", &mixed, 64 * MIB, Some(&pass));
    enc_of_plain.volume_content_source = Some(volume_source(&plain_src.volume_id));
    let err = c.controller.create_volume(enc_of_plain).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("is not encrypted"), "{err:?}");
    assert!(ceph.images_with(&mixed).is_empty());

    unmount_on(&plugin, &m).await;
    assert_nowhere(&plugin, &pass);
    for (id, published) in [
        (&clone.volume_id, true),
        (&restored.volume_id, true),
        (&src, true),
        (&plain_src.volume_id, false),
    ] {
        if published {
            unpublish(&ceph, &mut c, id, &plugin.node_id).await;
        }
        delete(&ceph, &mut c, id).await;
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            secrets: ceph.secrets(),
        })
        .await
        .unwrap();
    plugin.assert_no_leaks();
    for n in [&src_name, &restored_name, &clone_name, &snap_name] {
        assert!(ceph.images_with(n).is_empty(), "{n} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_encrypted_creates_killed_midway_converge() {
    let Some(ceph) = Ceph::from_env("rbd_encrypted_creates_killed_midway_converge") else {
        return;
    };
    let mut p = Plugin::start_full(
        &ceph,
        "controller,node",
        &[("HAINA_FAILPOINTS", "rbd-after-format=abort")],
        PluginConfig::Secrets,
    )
    .await;
    let pass = passphrase(&p, "crash");
    let name = p.unique("pvc-ecrash");
    let image = format!("csi-vol-{name}");
    let req = create_encrypted(&ceph, "ceph", &name, 64 * MIB, Some(&pass));

    // Killed after formatting, before the record: a header, no record.
    let mut c = p.clients().await;
    assert!(c.controller.create_volume(req.clone()).await.is_err());
    p.wait_exit();
    assert_eq!(&ceph.raw_image(&image)[..6], LUKS_MAGIC);
    assert!(ceph.image_meta(&image, "haina.encryption").is_none());

    // A plain create of that name meets the leftover: it never hands out an
    // image with a LUKS header as a plain volume.
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    let plain = create_ok(&mut c, create(&ceph, "ceph", &name, 64 * MIB, ext4())).await;
    assert_ne!(&ceph.raw_image(&image)[..6], LUKS_MAGIC);
    assert!(ceph.image_meta(&image, "haina.encryption").is_none());
    delete(&ceph, &mut c, &plain.volume_id).await;
    wait_gone(&ceph, &name).await;

    // Killed again; the retried encrypted create completes it, and the
    // volume opens with the passphrase.
    p.stop();
    p.env = vec![("HAINA_FAILPOINTS".into(), "rbd-after-format=abort".into())];
    p.spawn().await;
    let mut c = p.clients().await;
    assert!(c.controller.create_volume(req.clone()).await.is_err());
    p.wait_exit();
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    let vol = create_ok(&mut c, req).await;
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(ceph.raw_image(&image).len() as i64, 80 * MIB);
    assert!(ceph.image_meta(&image, "haina.encryption").is_some());
    controller_publish(&ceph, &mut c, &p, &vol.volume_id).await;
    let m = mount_on_with(
        &p,
        &vol.volume_id,
        &ext4(),
        "after-crash",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    let data = write_marked(&m, "f", "crash");
    assert_eq!(read(&m, "f").as_deref(), Some(&data[..]));
    assert_ciphertext(&ceph, &image, 2);
    unmount_on(&p, &m).await;

    // A clone killed right after its flatten (its parent link, and the
    // temporary snapshot it was cloned from, are gone): the retry keeps
    // the flat copy and completes it.
    p.stop();
    p.env = vec![("HAINA_FAILPOINTS".into(), "rbd-after-flatten=abort".into())];
    p.spawn().await;
    let mut c = p.clients().await;
    let clone_name = p.unique("pvc-eclone-crash");
    let mut clone_req = create_encrypted(&ceph, "ceph", &clone_name, 64 * MIB, Some(&pass));
    clone_req.volume_content_source = Some(volume_source(&vol.volume_id));
    assert!(c.controller.create_volume(clone_req.clone()).await.is_err());
    p.wait_exit();
    let clone_image = format!("csi-vol-{clone_name}");
    assert!(
        ceph.connect()
            .open_read_only(&clone_image)
            .unwrap()
            .parent_info()
            .unwrap()
            .is_none(),
        "killed after the flatten"
    );
    p.env.clear();
    p.spawn().await;
    let mut c = p.clients().await;
    let clone = create_ok(&mut c, clone_req).await;
    controller_publish(&ceph, &mut c, &p, &clone.volume_id).await;
    let cm = mount_on_with(
        &p,
        &clone.volume_id,
        &ext4(),
        "clone-after-crash",
        Default::default(),
        secrets_with(&ceph, &pass),
    )
    .await
    .unwrap();
    assert_eq!(read(&cm, "f").as_deref(), Some(&data[..]));
    unmount_on(&p, &cm).await;

    for id in [&clone.volume_id, &vol.volume_id] {
        unpublish(&ceph, &mut c, id, &p.node_id).await;
        delete(&ceph, &mut c, id).await;
    }
    p.assert_no_leaks();
    assert_nowhere(&p, &pass);
}

/// Waits until no image of `name` is left (a deleted plain volume's name is
/// free at once; this only guards the next create against a slow purge).
async fn wait_gone(ceph: &Ceph, name: &str) {
    for _ in 0..100 {
        if ceph.images_with(name).is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the image of {name} is still there");
}
