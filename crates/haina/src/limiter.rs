//! One operation per volume in flight.
//!
//! The CSI spec lets a plugin refuse a call while another call for the same
//! volume is still running, with `ABORTED`; the CO retries with backoff. The
//! guard is an RAII value: it is released when dropped, on every path,
//! including a panic. No lock is held across slow work — the mutex only
//! guards the set of busy keys.
//!
//! ceph-csi's "operation already exists" loops come from operations that
//! never finish. Here the guard travels with the blocking work itself, and
//! every tool haina runs has a timeout, so a busy key always frees up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

#[derive(Clone, Default)]
pub struct Limiter {
    busy: Arc<Mutex<HashSet<String>>>,
}

#[must_use = "the key is released when the guard is dropped"]
pub struct Guard {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Limiter {
    /// Claims a volume for one operation, controller- or node-side alike:
    /// a DeleteVolume must never run beside a NodeStage of the same volume
    /// (it would leave a loop device over a deleted image).
    pub fn volume(&self, id: &crate::ids::VolumeId) -> Result<Guard> {
        self.try_lock(format!("volume/{id}"))
    }

    /// Claims a snapshot. Snapshot keys never collide with volume keys, so
    /// a snapshot named like its source volume does not abort itself.
    pub fn snapshot(&self, id: &crate::ids::SnapshotId) -> Result<Guard> {
        self.try_lock(format!("snapshot/{id}"))
    }

    /// Claims a group snapshot. Its create also claims every member volume
    /// and member snapshot, its delete every member snapshot.
    pub fn group(&self, id: &crate::ids::GroupSnapshotId) -> Result<Guard> {
        self.try_lock(format!("group/{id}"))
    }

    /// Claims `key` (e.g. `"volume/default.pvc-1"`), or `ABORTED` if it is busy.
    pub fn try_lock(&self, key: impl Into<String>) -> Result<Guard> {
        let key = key.into();
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(key.clone()) {
            return Err(Error::Aborted(format!(
                "an operation on {key} is already in progress; retry later"
            )));
        }
        Ok(Guard {
            busy: self.busy.clone(),
            key,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_release() {
        let l = Limiter::default();
        let g = l.try_lock("v1").unwrap();
        assert!(matches!(l.try_lock("v1"), Err(Error::Aborted(m)) if m.contains("v1")));
        let _other = l.try_lock("v2").unwrap();
        drop(g);
        let _again = l.try_lock("v1").unwrap();
    }

    #[test]
    fn volumes_and_snapshots_of_one_name_do_not_collide() {
        let l = Limiter::default();
        let id = crate::ids::VolumeId::parse_existing("id", "default.same").unwrap();
        let _v = l.volume(&id).unwrap();
        let _s = l.snapshot(&id).unwrap();
        assert!(matches!(l.volume(&id), Err(Error::Aborted(_))));
    }

    #[test]
    fn released_on_panic() {
        let l = Limiter::default();
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.try_lock("v").unwrap();
            panic!("boom");
        })
        .join();
        assert!(l.try_lock("v").is_ok());
    }
}
