//! Two haina pools on one RADOS pool never share images: each works in its
//! own RBD namespace, so the same volume name in both makes two images,
//! each pool lists only its own, and deleting one leaves the other. A
//! config where two pools would share a namespace is refused at start, and
//! an image whose `haina.pool` names another pool is never taken over
//! (two drivers configured with the same namespace under different names).

mod common;
#[path = "common/rbd.rs"]
mod rbd;

use std::process::{Command, Stdio};

use common::expect_code;
use haina_csi::v1 as csi;
use rbd::*;
use tonic::Code;

fn two_pools(ceph: &Ceph, keyring: &std::path::Path, b_namespace: Option<&str>) -> String {
    let mut s = String::new();
    for (name, ns) in [("pa", None), ("pb", b_namespace)] {
        s += &format!(
            "[pools.{name}]\nkind = \"rbd\"\nmonitors = [\"{}\"]\nrados_pool = \"{}\"\n\
             mounter = \"fuse\"\nuser = \"{}\"\nkeyring = \"{}\"\n",
            ceph.mon,
            ceph.pool,
            ceph.user,
            keyring.display()
        );
        if let Some(ns) = ns {
            s += &format!("namespace = \"{ns}\"\n");
        }
    }
    s
}

fn ids(list: &csi::ListVolumesResponse) -> Vec<String> {
    list.entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_two_pools_on_one_rados_pool_are_isolated() {
    let Some(ceph) = Ceph::from_env("rbd_two_pools_on_one_rados_pool_are_isolated") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keyring = ceph.write_keyring(dir.path());
    let p = Plugin::start_with_config(&ceph, "controller", &[], &two_pools(&ceph, &keyring, None))
        .await;
    let mut c = p.clients().await;
    let name = p.unique("pvc-same");
    let mut made = Vec::new();
    for pool in ["pa", "pb"] {
        let v = c
            .controller
            .create_volume(create(&ceph, pool, &name, 16 * MIB, ext4()))
            .await
            .unwrap_or_else(|e| panic!("create in {pool}: {e}"))
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.volume_id, format!("{pool}.{name}"));
        made.push(v.volume_id);
    }
    // Two images, one per namespace.
    let image = format!("csi-vol-{name}");
    assert_eq!(ceph.images_in("pa", &name), vec![image.clone()]);
    assert_eq!(ceph.images_in("pb", &name), vec![image.clone()]);
    assert!(
        ceph.images_in("", &name).is_empty(),
        "an image in the default namespace"
    );
    let owner = |ns: &str| {
        ceph.connect_ns(ns)
            .open_read_only(&image)
            .unwrap()
            .metadata_list()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "haina.pool")
            .map(|(_, v)| v)
    };
    assert_eq!(owner("pa").as_deref(), Some("pa"));
    assert_eq!(owner("pb").as_deref(), Some("pb"));

    // Each volume is listed once, under its own pool.
    let listed = ids(&c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner());
    let ours: Vec<&String> = listed.iter().filter(|i| i.ends_with(&name)).collect();
    assert_eq!(ours, vec![&made[0], &made[1]], "{listed:?}");

    // Deleting pb's volume leaves pa's image and volume alone.
    delete(&ceph, &mut c, &made[1]).await;
    assert_eq!(ceph.images_in("pa", &name), vec![image.clone()]);
    c.controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: made[0].clone(),
        })
        .await
        .expect("pa's volume survives the delete of pb's");
    delete(&ceph, &mut c, &made[0]).await;
    assert!(ceph.images_in("pa", &name).is_empty());
    assert!(ceph.images_in("pb", &name).is_empty());
}

#[test]
fn rbd_pools_sharing_a_namespace_are_refused_at_start() {
    let Some(ceph) = Ceph::from_env("rbd_pools_sharing_a_namespace_are_refused_at_start") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keyring = ceph.write_keyring(dir.path());
    // pb names pa's namespace: both would keep their images in one place.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, two_pools(&ceph, &keyring, Some("pa"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_haina"))
        .args(["serve", "--endpoint"])
        .arg(format!("unix://{}", dir.path().join("csi.sock").display()))
        .args(["--node-id", "n1", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "haina serve started with a shared namespace"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools pa and pb") && err.contains("namespace"),
        "{err}"
    );
}

/// Two drivers whose configs give different pool names the same namespace
/// (which no single config check can see): the second never takes over,
/// lists or deletes the first's image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_images_of_another_pool_are_never_taken_over() {
    let Some(ceph) = Ceph::from_env("rbd_images_of_another_pool_are_never_taken_over") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keyring = ceph.write_keyring(dir.path());
    let ns = format!("shared-{}", std::process::id());
    let one = |pool: &str| {
        format!(
            "[pools.{pool}]\nkind = \"rbd\"\nmonitors = [\"{}\"]\nrados_pool = \"{}\"\n\
             namespace = \"{ns}\"\nuser = \"{}\"\nkeyring = \"{}\"\n",
            ceph.mon,
            ceph.pool,
            ceph.user,
            keyring.display()
        )
    };
    let pa = Plugin::start_with_config(&ceph, "controller", &[], &one("pa")).await;
    let pb = Plugin::start_with_config(&ceph, "controller", &[], &one("pb")).await;
    let (mut ca, mut cb) = (pa.clients().await, pb.clients().await);
    let name = pa.unique("pvc-owned");
    let id = ca
        .controller
        .create_volume(create(&ceph, "pa", &name, 16 * MIB, ext4()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    // The same name in pb meets pa's image: ALREADY_EXISTS naming pa.
    let m = expect_code(
        cb.controller
            .create_volume(create(&ceph, "pb", &name, 16 * MIB, ext4()))
            .await,
        Code::AlreadyExists,
    );
    assert!(m.contains("\"pa\""), "{m}");
    // pb neither lists nor finds it, and its delete leaves it alone.
    let listed = ids(&cb
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner());
    assert!(!listed.iter().any(|i| i.ends_with(&name)), "{listed:?}");
    expect_code(
        cb.controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: format!("pb.{name}"),
            })
            .await,
        Code::NotFound,
    );
    delete(&ceph, &mut cb, &format!("pb.{name}")).await;
    assert_eq!(ceph.images_in(&ns, &name), vec![format!("csi-vol-{name}")]);
    delete(&ceph, &mut ca, &id).await;
    assert!(ceph.images_in(&ns, &name).is_empty());
}
