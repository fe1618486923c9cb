//! Mutable parameters: the QoS limits a VolumeAttributesClass can change on
//! a live volume, parsed and merged in this one place.
//!
//! | key | limit | value |
//! |---|---|---|
//! | `qosReadIops` | read operations per second | integer |
//! | `qosWriteIops` | write operations per second | integer |
//! | `qosReadBps` | bytes read per second | integer, or with a suffix `k M G T` (×1000ⁿ) or `Ki Mi Gi Ti` (×1024ⁿ) |
//! | `qosWriteBps` | bytes written per second | same |
//!
//! `0` means unlimited. Anything else (a sign, a fraction, spaces, an
//! unknown suffix, more than [`MAX_IOPS`] / [`MAX_BPS`]) is INVALID_ARGUMENT
//! naming the key and the value. The same names serve both pool kinds; each
//! pool says whether it can enforce them ([`crate::backend::Backend::qos_support`]):
//! an RBD pool with librbd's QoS (`rbd_qos_*_limit` image settings), a
//! local pool with the kernel's block-layer throttling of the volume's loop
//! device. A pool that cannot enforce them refuses them, naming why.
//!
//! Where they may appear:
//! - CreateVolume `mutable_parameters`, and `parameters` (a StorageClass
//!   default): mutable parameters win key by key, as the CSI spec says;
//! - ControllerModifyVolume `mutable_parameters`: only the keys given change
//!   (the spec forbids acting on absent keys);
//! - ValidateVolumeCapabilities `mutable_parameters`: validated, echoed in
//!   `confirmed` only when valid.
//!
//! Any other key in `mutable_parameters` is INVALID_ARGUMENT: the keys a
//! StorageClass may set once (`fsType`, `pool`, ...) are named immutable.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::echo;

pub use haina_sys::throttle::{MAX_BPS, MAX_IOPS};

/// One limit a volume can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Knob {
    ReadIops,
    WriteIops,
    ReadBps,
    WriteBps,
}

impl Knob {
    pub const ALL: [Knob; 4] = [
        Knob::ReadIops,
        Knob::WriteIops,
        Knob::ReadBps,
        Knob::WriteBps,
    ];

    /// The parameter name.
    pub fn key(self) -> &'static str {
        match self {
            Self::ReadIops => "qosReadIops",
            Self::WriteIops => "qosWriteIops",
            Self::ReadBps => "qosReadBps",
            Self::WriteBps => "qosWriteBps",
        }
    }

    pub fn from_key(key: &str) -> Option<Knob> {
        Self::ALL.into_iter().find(|k| k.key() == key)
    }

    fn is_bytes(self) -> bool {
        matches!(self, Self::ReadBps | Self::WriteBps)
    }

    fn max(self) -> u64 {
        if self.is_bytes() { MAX_BPS } else { MAX_IOPS }
    }

    pub fn get(self, l: &Limits) -> u64 {
        match self {
            Self::ReadIops => l.read_iops,
            Self::WriteIops => l.write_iops,
            Self::ReadBps => l.read_bps,
            Self::WriteBps => l.write_bps,
        }
    }

    pub fn set(self, l: &mut Limits, v: u64) {
        match self {
            Self::ReadIops => l.read_iops = v,
            Self::WriteIops => l.write_iops = v,
            Self::ReadBps => l.read_bps = v,
            Self::WriteBps => l.write_bps = v,
        }
    }

    /// Parses a value for this knob (see the module doc); the error names
    /// `field`, the key and the value.
    pub fn parse(self, field: &str, raw: &str) -> Result<u64> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{field}: {} {} is not valid: {why}",
                self.key(),
                echo(raw)
            ))
        };
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (digits, suffix) = raw.split_at(split);
        if digits.is_empty() {
            return Err(bad(if self.is_bytes() {
                "expected a non-negative integer (bytes per second), optionally with a suffix \
                 k, M, G, T, Ki, Mi, Gi or Ti; 0 means unlimited"
            } else {
                "expected a non-negative integer (operations per second); 0 means unlimited"
            }));
        }
        let unit: u64 = match (self.is_bytes(), suffix) {
            (_, "") => 1,
            (true, "k") => 1000,
            (true, "M") => 1000u64.pow(2),
            (true, "G") => 1000u64.pow(3),
            (true, "T") => 1000u64.pow(4),
            (true, "Ki") => 1 << 10,
            (true, "Mi") => 1 << 20,
            (true, "Gi") => 1 << 30,
            (true, "Ti") => 1 << 40,
            (true, _) => {
                return Err(bad(
                    "unknown suffix (k, M, G, T, Ki, Mi, Gi or Ti; no spaces, signs or fractions)",
                ));
            }
            (false, _) => {
                return Err(bad(
                    "expected a plain non-negative integer (no suffix, sign, fraction or spaces)",
                ));
            }
        };
        let n = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .filter(|n| *n <= self.max())
            .ok_or_else(|| bad(&format!("the largest limit is {}", self.max())))?;
        Ok(n)
    }
}

/// A volume's limits; 0 means unlimited. Stored with the volume (the local
/// pool's record; an RBD image's `conf_rbd_qos_*` metadata).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Limits {
    pub read_iops: u64,
    pub write_iops: u64,
    pub read_bps: u64,
    pub write_bps: u64,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// As the kernel's block layer takes them.
    pub fn io(&self) -> haina_sys::throttle::IoLimits {
        haina_sys::throttle::IoLimits {
            read_iops: self.read_iops,
            write_iops: self.write_iops,
            read_bps: self.read_bps,
            write_bps: self.write_bps,
        }
    }

    /// The limits as mutable parameters (every key, `0` for unlimited).
    pub fn to_params(&self) -> BTreeMap<String, String> {
        Knob::ALL
            .iter()
            .map(|k| (k.key().to_string(), k.get(self).to_string()))
            .collect()
    }
}

impl fmt::Display for Limits {
    /// `qosWriteIops=100, qosReadBps=1048576`, or `unlimited`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: Vec<String> = Knob::ALL
            .iter()
            .filter(|k| k.get(self) != 0)
            .map(|k| format!("{}={}", k.key(), k.get(self)))
            .collect();
        if set.is_empty() {
            f.write_str("unlimited")
        } else {
            f.write_str(&set.join(", "))
        }
    }
}

/// The limits a request names: only the keys it gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update(BTreeMap<Knob, u64>);

/// Keys of `parameters` that are not mutable: named as such when they show
/// up in `mutable_parameters`.
const IMMUTABLE: &[&str] = &[
    "pool",
    "fsType",
    "csi.storage.k8s.io/fstype",
    "mkfsOptions",
    "mountOptions",
];

impl Update {
    /// Parses `mutable_parameters` (`field` names the map): every key must
    /// be a mutable parameter, every value valid.
    pub fn parse_mutable(field: &str, map: &BTreeMap<String, String>) -> Result<Update> {
        let mut u = Update::default();
        for (k, v) in map {
            let Some(knob) = Knob::from_key(k) else {
                let known = Knob::ALL.map(Knob::key).join(", ");
                let why = if IMMUTABLE.contains(&k.as_str()) {
                    "is not mutable: it is fixed when the volume is created (set it in the \
                     StorageClass parameters)"
                } else {
                    "is not a mutable parameter haina knows"
                };
                return Err(Error::InvalidArgument(format!(
                    "{field}: key {} {why} (mutable parameters: {known})",
                    echo(k)
                )));
            };
            u.0.insert(knob, knob.parse(field, v)?);
        }
        Ok(u)
    }

    /// Takes one `parameters` entry if it is a QoS key (a StorageClass
    /// default); `Ok(false)` for any other key.
    pub fn take_param(&mut self, field: &str, key: &str, value: &str) -> Result<bool> {
        match Knob::from_key(key) {
            Some(knob) => {
                self.0.insert(knob, knob.parse(field, value)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first key given (for error messages).
    pub fn first_key(&self) -> Option<&'static str> {
        self.0.keys().next().map(|k| k.key())
    }

    /// `self`, with `over`'s keys replacing its own (mutable parameters
    /// over `parameters`).
    pub fn overridden_by(&self, over: &Update) -> Update {
        let mut u = self.clone();
        u.0.extend(over.0.iter().map(|(k, v)| (*k, *v)));
        u
    }

    /// `base` with the keys given here changed; the others kept.
    pub fn apply_to(&self, base: Limits) -> Limits {
        let mut l = base;
        for (k, v) in &self.0 {
            k.set(&mut l, *v);
        }
        l
    }

    /// Refuses a non-empty update with `reason` (the pool cannot enforce
    /// limits), naming the first key.
    pub fn check_supported(&self, field: &str, pool: &str, support: &Support) -> Result<()> {
        match (self.first_key(), support) {
            (Some(key), Support::No(reason)) => Err(Error::InvalidArgument(format!(
                "{field}: {key} is not supported by pool {pool}: {reason}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Whether a pool enforces the QoS limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Why not, for the INVALID_ARGUMENT.
    No(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[track_caller]
    fn refused(kv: &[(&str, &str)], named: &[&str]) {
        let e = Update::parse_mutable("mutable_parameters", &map(kv)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        for n in named {
            assert!(e.to_string().contains(n), "{kv:?}: {e} does not name {n}");
        }
    }

    #[test]
    fn values() {
        let iops = |s: &str| Knob::WriteIops.parse("f", s);
        let bps = |s: &str| Knob::ReadBps.parse("f", s);
        assert_eq!(iops("0").unwrap(), 0);
        assert_eq!(iops("100").unwrap(), 100);
        assert_eq!(iops("007").unwrap(), 7);
        assert_eq!(iops(&MAX_IOPS.to_string()).unwrap(), MAX_IOPS);
        assert_eq!(bps("1048576").unwrap(), 1 << 20);
        assert_eq!(bps("1Mi").unwrap(), 1 << 20);
        assert_eq!(bps("10M").unwrap(), 10_000_000);
        assert_eq!(bps("3k").unwrap(), 3000);
        assert_eq!(bps("2Gi").unwrap(), 2 << 30);
        assert_eq!(bps("1Ti").unwrap(), 1 << 40);
        assert_eq!(bps(&MAX_BPS.to_string()).unwrap(), MAX_BPS);
        for bad in [
            "", "-1", "+1", " 1", "1 ", "1.5", "1e3", "0x10", "ten", "1Mi ", "1mi", "1K", "1KiB",
        ] {
            let e = bps(bad).unwrap_err();
            assert!(
                e.to_string().contains("qosReadBps") && e.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: {e}"
            );
        }
        // IOPS take no suffix; the limits stop where the kernel's do.
        for bad in [
            "1k",
            "1Mi",
            &(MAX_IOPS + 1).to_string(),
            "99999999999999999999",
        ] {
            let e = iops(bad).unwrap_err();
            assert!(e.to_string().contains("qosWriteIops"), "{bad:?}: {e}");
        }
        assert!(bps("8Ei").is_err());
        assert!(bps("9223372036854775808").is_err());
        assert!(bps("10000000T").is_err());
    }

    #[test]
    fn keys() {
        let u = Update::parse_mutable(
            "mutable_parameters",
            &map(&[("qosWriteIops", "100"), ("qosReadBps", "1Mi")]),
        )
        .unwrap();
        let base = Limits {
            read_iops: 7,
            write_iops: 1,
            ..Default::default()
        };
        // Only the keys given change.
        let l = u.apply_to(base);
        assert_eq!(
            l,
            Limits {
                read_iops: 7,
                write_iops: 100,
                read_bps: 1 << 20,
                write_bps: 0
            }
        );
        assert_eq!(
            l.to_string(),
            "qosReadIops=7, qosWriteIops=100, qosReadBps=1048576"
        );
        assert_eq!(Limits::default().to_string(), "unlimited");
        assert_eq!(l.to_params()["qosWriteBps"], "0");
        refused(
            &[("XXX_FakeKey", "XXX_FakeValue")],
            &["XXX_FakeKey", "qosWriteIops"],
        );
        refused(&[("fsType", "xfs")], &["fsType", "not mutable"]);
        refused(&[("qosWriteIops", "-5")], &["qosWriteIops", "\"-5\""]);
        refused(&[("qoswriteiops", "5")], &["qoswriteiops"]);
        // A key too long to echo whole is cut, never echoed in full.
        let long = "k".repeat(10_000);
        let e = Update::parse_mutable("m", &map(&[(long.as_str(), "1")])).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn mutable_parameters_win_over_parameters() {
        let mut defaults = Update::default();
        assert!(
            defaults
                .take_param("parameters", "qosWriteIops", "50")
                .unwrap()
        );
        assert!(
            defaults
                .take_param("parameters", "qosReadIops", "60")
                .unwrap()
        );
        assert!(!defaults.take_param("parameters", "fsType", "xfs").unwrap());
        assert!(
            defaults
                .take_param("parameters", "qosReadBps", "x")
                .is_err()
        );
        let mutable =
            Update::parse_mutable("mutable_parameters", &map(&[("qosWriteIops", "0")])).unwrap();
        let l = defaults.overridden_by(&mutable).apply_to(Limits::default());
        assert_eq!((l.write_iops, l.read_iops), (0, 60));
        let no = Support::No("the node has no blk-throttle".into());
        let e = mutable
            .check_supported("mutable_parameters", "p", &no)
            .unwrap_err();
        assert!(
            e.to_string().contains("qosWriteIops") && e.to_string().contains("blk-throttle"),
            "{e}"
        );
        Update::default()
            .check_supported("mutable_parameters", "p", &no)
            .unwrap();
        mutable
            .check_supported("mutable_parameters", "p", &Support::Yes)
            .unwrap();
    }
}
