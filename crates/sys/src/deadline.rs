//! Deadlines for host calls that can stall.
//!
//! A system call on a path or device whose data path hangs (a stopped FUSE
//! server, an unreachable Ceph cluster behind a loop device) blocks in
//! uninterruptible sleep: `stat`, `statvfs`, `open`, `umount2` and `mount`
//! cannot be cancelled or timed out from the calling thread. So every such
//! call runs on a helper thread and the caller waits at most a deadline:
//! past it the caller gets [`Stalled`] and moves on, and the helper thread
//! is abandoned (it finishes, or is freed, when the kernel lets go — e.g.
//! once the FUSE connection is aborted).
//!
//! Calls carry a key (e.g. `umount /var/lib/kubelet/.../globalmount`).
//! While a call with that key is still stuck, a new call with the same key
//! fails at once with [`Stalled`] naming how long the first has been
//! stuck, instead of piling up another stuck thread. [`stuck`] lists them
//! (for logs, `explain` and the volume condition).
//!
//! The default deadlines can be scaled down for tests with
//! `HAINA_HOST_DEADLINE_MS` (it replaces [`Deadline::Quick`] and
//! [`Deadline::Mount`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a class of call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// stat, statvfs, open, readlink, sysfs/proc reads: 10 s.
    Quick,
    /// mount, umount, loop attach (opens the backing file), freeze: 30 s.
    Mount,
    /// mkfs, fsck, resize of a large device: 10 min.
    Long,
}

impl Deadline {
    pub fn duration(self) -> Duration {
        let scaled = scaled();
        match self {
            Self::Quick => scaled.unwrap_or(Duration::from_secs(10)),
            Self::Mount => scaled.unwrap_or(Duration::from_secs(30)),
            Self::Long => Duration::from_secs(600).max(scaled.unwrap_or_default()),
        }
    }
}

fn scaled() -> Option<Duration> {
    static SCALED: OnceLock<Option<Duration>> = OnceLock::new();
    *SCALED.get_or_init(|| {
        std::env::var("HAINA_HOST_DEADLINE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// A call that did not finish within its deadline (or whose earlier
/// instance is still stuck).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} did not return within {after:?}{}", stuck_note(*.stuck_for))]
pub struct Stalled {
    pub what: String,
    pub after: Duration,
    /// Set when an earlier call with the same key is still stuck: how long.
    pub stuck_for: Option<Duration>,
}

fn stuck_note(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(
            " (an earlier identical call has been stuck for {}s)",
            d.as_secs()
        ),
        None => " (the data path is stalled; the call is left running)".into(),
    }
}

/// A call abandoned past its deadline, still running: when it started to be
/// waited on, and which call it is (so that only its own helper clears it).
struct Stuck {
    since: Instant,
    token: u64,
}

fn registry() -> &'static Mutex<HashMap<String, Stuck>> {
    static STUCK: OnceLock<Mutex<HashMap<String, Stuck>>> = OnceLock::new();
    STUCK.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Stuck>> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls still stuck past their deadline: (key, how long).
pub fn stuck() -> Vec<(String, Duration)> {
    let mut v: Vec<_> = lock()
        .iter()
        .map(|(k, s)| (k.clone(), s.since.elapsed()))
        .collect();
    v.sort();
    v
}

/// Whether a call whose key starts with `prefix` is stuck right now.
pub fn is_stuck(prefix: &str) -> Option<Duration> {
    lock()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, s)| s.since.elapsed())
        .max()
}

/// Runs `f` on a helper thread and waits for it at most `deadline`.
/// `what` names the call in errors and is its key (see the module doc).
pub fn run<T, F>(what: impl Into<String>, deadline: Deadline, f: F) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_for(what, deadline.duration(), f)
}

/// [`run`] with an explicit duration.
pub fn run_for<T, F>(what: impl Into<String>, after: Duration, f: F) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_or_undo(what, after, f, |_| {})
}

/// Where a call stands, decided under one lock by whichever of the caller
/// (giving up) and the helper (finishing) gets there first.
enum Outcome<T> {
    Running,
    Done(T),
    Abandoned,
}

/// [`run_for`], and if the call is abandoned but later returns, `undo` gets
/// its result on the helper thread: a freeze that succeeds after its caller
/// gave up is thawed, never left without an owner.
pub fn run_or_undo<T, F, U>(
    what: impl Into<String>,
    after: Duration,
    f: F,
    undo: U,
) -> Result<T, Stalled>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    U: FnOnce(T) + Send + 'static,
{
    static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let what = what.into();
    if let Some(s) = lock().get(&what) {
        return Err(Stalled {
            what,
            after,
            stuck_for: Some(s.since.elapsed()),
        });
    }
    let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state = std::sync::Arc::new((Mutex::new(Outcome::<T>::Running), std::sync::Condvar::new()));
    let helper_state = state.clone();
    let key = what.clone();
    let spawned = std::thread::Builder::new()
        .name("host-call".into())
        .spawn(move || {
            let out = f();
            let (m, cv) = &*helper_state;
            let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
            match *st {
                Outcome::Abandoned => {
                    // The caller gave up on us: we were stuck, and now we
                    // are not. Undone first, while still registered: a twin
                    // call is refused until then, so it can neither meet
                    // our result half-undone (a freeze it would take over,
                    // a device it would adopt) nor lose its own to the
                    // undo. Then only our own entry goes (a later call
                    // with the same key may have registered since).
                    drop(st);
                    tracing::warn!(call = %key, "a stalled host call finally returned");
                    undo(out);
                    let mut reg = lock();
                    if reg.get(&key).is_some_and(|s| s.token == token) {
                        reg.remove(&key);
                    }
                }
                _ => {
                    *st = Outcome::Done(out);
                    cv.notify_all();
                }
            }
        });
    if let Err(e) = spawned {
        // No thread to spare (the node is out of threads or memory).
        tracing::error!(call = %what, error = %e, "spawning a host-call thread failed");
        return Err(Stalled {
            what,
            after: Duration::ZERO,
            stuck_for: None,
        });
    }
    let (m, cv) = &*state;
    let deadline = Instant::now() + after;
    let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Outcome::Done(_) = *st {
            return match std::mem::replace(&mut *st, Outcome::Running) {
                Outcome::Done(v) => Ok(v),
                _ => unreachable!("checked just above"),
            };
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        st = cv
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    // Still running: register it as stuck before the helper can look (it
    // needs the state lock we hold), then let it know it was abandoned.
    lock().insert(
        what.clone(),
        Stuck {
            since: Instant::now() - after,
            token,
        },
    );
    *st = Outcome::Abandoned;
    drop(st);
    tracing::error!(call = %what, ?after, "host call stalled past its deadline");
    Err(Stalled {
        what,
        after,
        stuck_for: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn fast_calls_return_their_value() {
        assert_eq!(run_for("add", Duration::from_secs(5), || 2 + 2), Ok(4));
    }

    #[test]
    fn stalled_call_is_abandoned_and_blocks_its_twin_until_it_returns() {
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let key = "test: stalled twin";
        let e = run_for(key, Duration::from_millis(50), move || {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap_err();
        assert_eq!(e.stuck_for, None);
        assert!(e.to_string().contains(key), "{e}");
        assert!(is_stuck(key).is_some());
        // The twin fails at once, without running.
        let ran = Arc::new(AtomicBool::new(false));
        let ran2 = ran.clone();
        let start = Instant::now();
        let e = run_for(key, Duration::from_secs(5), move || {
            ran2.store(true, Ordering::SeqCst)
        })
        .unwrap_err();
        assert!(e.stuck_for.is_some());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(!ran.load(Ordering::SeqCst));
        // Once the first returns, the key is free again.
        release.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_stuck(key).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(is_stuck(key).is_none());
        assert_eq!(run_for(key, Duration::from_secs(5), || 7), Ok(7));
    }

    #[test]
    fn calls_finishing_at_their_deadline_never_stay_registered() {
        // Finish around the deadline, in both orders, many times: a key is
        // either answered or registered, and a registered one always
        // clears once its helper returns.
        for i in 0..1000u64 {
            let key = format!("test: race {i}");
            let _ = run_for(key.clone(), Duration::from_millis(2), move || {
                std::thread::sleep(Duration::from_micros(1700 + (i % 7) * 100))
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while stuck().iter().any(|(k, _)| k.starts_with("test: race ")) {
            assert!(Instant::now() < deadline, "wedged: {:?}", stuck());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_abandoned_result_is_undone() {
        let undone = Arc::new(AtomicBool::new(false));
        let u = undone.clone();
        let e = run_or_undo(
            "test: undo",
            Duration::from_millis(20),
            || {
                std::thread::sleep(Duration::from_millis(100));
                "frozen"
            },
            move |v| {
                assert_eq!(v, "frozen");
                u.store(true, Ordering::SeqCst)
            },
        );
        assert!(e.is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !undone.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "never undone");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A call that returns in time is never undone.
        let again = Arc::new(AtomicBool::new(false));
        let a = again.clone();
        assert_eq!(
            run_or_undo(
                "test: undo 2",
                Duration::from_secs(5),
                || 1,
                move |_| { a.store(true, Ordering::SeqCst) }
            ),
            Ok(1)
        );
        assert!(!again.load(Ordering::SeqCst));
    }

    #[test]
    fn a_twin_is_refused_until_the_undo_is_done() {
        let (in_undo, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (i, r) = (in_undo.clone(), release.clone());
        let key = "test: undo before release";
        let e = run_or_undo(
            key,
            Duration::from_millis(20),
            || std::thread::sleep(Duration::from_millis(50)),
            move |()| {
                i.store(true, Ordering::SeqCst);
                while !r.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
        );
        assert!(e.is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !in_undo.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "never undone");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The call has returned, but its undo is still running.
        let twin = run_for(key, Duration::from_secs(5), || 1);
        assert!(
            twin.as_ref().is_err_and(|s| s.stuck_for.is_some()),
            "{twin:?}"
        );
        release.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while run_for(key, Duration::from_secs(5), || 1).is_err() {
            assert!(Instant::now() < deadline, "still refused after the undo");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
