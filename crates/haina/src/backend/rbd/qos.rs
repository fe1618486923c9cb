//! QoS limits of RBD volumes: librbd's own QoS (`rbd_qos_*_limit`), kept
//! as image-level config overrides, i.e. the image metadata keys
//! `conf_rbd_qos_{read,write}_{iops,bps}_limit` (what `rbd config image
//! set` writes). They are the record: no `haina.*` copy that could
//! disagree with what librbd enforces.
//!
//! Every librbd client of the image applies them: the FUSE server (and
//! rbd-nbd) reads them when it opens the image and again on the header
//! update a `metadata_set` from the controller sends, so a ControllerModifyVolume
//! takes effect on a live mount within about a second. A read-only
//! attachment opens the image without a watch, receives no header update,
//! and keeps the limits it opened with until it is staged again (measured;
//! ControllerModifyVolume logs a warning naming such nodes). The kernel
//! client (krbd) has no QoS and ignores them, so:
//! - a pool configured with `mounter = "krbd"` refuses the parameters
//!   ([`support`]);
//! - `auto` never maps a volume that has limits with krbd: it takes nbd,
//!   else fuse ([`pick_mounter`]);
//! - a node whose config says krbd while the volume has limits (a config
//!   that differs from the controller's) refuses to attach it.
//!
//! A limit of 0 removes the key, so the pool- and cluster-level `rbd_qos_*`
//! settings (the Ceph operator's, normally none) apply again.
//!
//! librbd copies a parent's metadata into a clone, so a clone or restore of
//! a limited volume would inherit its limits: a new image's QoS keys are
//! set to exactly what the CreateVolume asked for (inherited ones removed)
//! before the image is marked complete.

use std::collections::BTreeMap;

use crate::attach::Mounter;
use crate::qos::{Knob, Limits, Support};

/// Every key this module owns starts with this.
pub const CONF_PREFIX: &str = "conf_rbd_qos_";

/// The metadata key that holds a knob.
pub fn key(k: Knob) -> &'static str {
    match k {
        Knob::ReadIops => "conf_rbd_qos_read_iops_limit",
        Knob::WriteIops => "conf_rbd_qos_write_iops_limit",
        Knob::ReadBps => "conf_rbd_qos_read_bps_limit",
        Knob::WriteBps => "conf_rbd_qos_write_bps_limit",
    }
}

/// The limits an image's metadata holds. A value haina cannot read (set by
/// hand) is reported as unlimited, with a warning: librbd's own parsing
/// decides what it enforces.
pub fn from_meta(image: &str, meta: &BTreeMap<String, String>) -> Limits {
    let mut l = Limits::default();
    for k in Knob::ALL {
        if let Some(v) = meta.get(key(k)) {
            match k.parse(key(k), v) {
                Ok(n) => k.set(&mut l, n),
                Err(e) => tracing::warn!(image, error = %e, "unreadable QoS setting on image"),
            }
        }
    }
    l
}

/// The metadata keys for `limits` (unlimited knobs have none).
pub fn meta_keys(limits: &Limits) -> Vec<(&'static str, String)> {
    Knob::ALL
        .into_iter()
        .filter(|k| k.get(limits) != 0)
        .map(|k| (key(k), k.get(limits).to_string()))
        .collect()
}

/// Whether a pool with this mounter enforces the limits.
pub fn support(pool: &str, mounter: Mounter) -> Support {
    match mounter {
        Mounter::Krbd => Support::No(format!(
            "pool {pool} attaches images with krbd (mounter = \"krbd\"), and the kernel RBD \
             client ignores librbd's QoS settings; use mounter fuse, nbd or auto"
        )),
        _ => Support::Yes,
    }
}

/// The mounter for a new attachment: `resolved` is what the pool's
/// `configured` mounter resolves to on this node; `nbd_ok` / `fuse_ok` say
/// whether those can run here. A volume with limits never goes to krbd:
/// `auto` takes nbd, else fuse; an explicit krbd is refused (the error
/// names the limits and the way out).
pub fn pick_mounter(
    configured: Mounter,
    resolved: Mounter,
    limits: &Limits,
    nbd_ok: bool,
    fuse_ok: bool,
) -> Result<Mounter, String> {
    if resolved != Mounter::Krbd || limits.is_unlimited() {
        return Ok(resolved);
    }
    match configured {
        Mounter::Auto if nbd_ok => Ok(Mounter::Nbd),
        Mounter::Auto if fuse_ok => Ok(Mounter::Fuse),
        _ => Err(format!(
            "the volume has QoS limits ({limits}) and the kernel RBD client (krbd) cannot \
             enforce them; configure mounter fuse, nbd or auto on this node, or remove the \
             limits (ControllerModifyVolume with 0)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_zero_has_no_key() {
        let l = Limits {
            read_iops: 0,
            write_iops: 100,
            read_bps: 5 << 20,
            write_bps: 0,
        };
        let keys = meta_keys(&l);
        assert_eq!(
            keys,
            vec![
                ("conf_rbd_qos_write_iops_limit", "100".to_string()),
                ("conf_rbd_qos_read_bps_limit", "5242880".to_string()),
            ]
        );
        let meta: BTreeMap<String, String> = keys
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain([
                ("haina.id".to_string(), "x".to_string()),
                // Not ours: the total limits haina does not model.
                ("conf_rbd_qos_iops_limit".to_string(), "7".to_string()),
            ])
            .collect();
        assert_eq!(from_meta("img", &meta), l);
        // Something set by hand that haina cannot read counts as no limit.
        let odd = BTreeMap::from([(key(Knob::ReadIops).to_string(), "lots".to_string())]);
        assert!(from_meta("img", &odd).is_unlimited());
        for k in Knob::ALL {
            assert!(key(k).starts_with(CONF_PREFIX));
        }
    }

    #[test]
    fn krbd_never_carries_a_limited_volume() {
        use Mounter::*;
        let limited = Limits {
            write_iops: 10,
            ..Default::default()
        };
        let none = Limits::default();
        // (configured, resolved, limits, nbd_ok, fuse_ok) -> outcome
        let table = [
            (Auto, Krbd, none, true, true, Ok(Krbd)),
            (Auto, Krbd, limited, true, true, Ok(Nbd)),
            (Auto, Krbd, limited, false, true, Ok(Fuse)),
            (Auto, Fuse, limited, false, true, Ok(Fuse)),
            (Nbd, Nbd, limited, true, true, Ok(Nbd)),
            (Krbd, Krbd, none, false, false, Ok(Krbd)),
        ];
        for (configured, resolved, l, nbd, fuse, want) in table {
            assert_eq!(
                pick_mounter(configured, resolved, &l, nbd, fuse),
                want,
                "{configured:?} {resolved:?} {l}"
            );
        }
        let e = pick_mounter(Krbd, Krbd, &limited, true, true).unwrap_err();
        assert!(e.contains("qosWriteIops=10") && e.contains("krbd"), "{e}");
        assert!(pick_mounter(Auto, Krbd, &limited, false, false).is_err());
        assert!(matches!(support("p", Krbd), Support::No(m) if m.contains("krbd")));
        assert_eq!(support("p", Auto), Support::Yes);
    }
}
