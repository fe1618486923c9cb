//! [`Cluster`]: one connected librados client (`rados_t`), configured
//! entirely in memory (`rados_conf_set`: monitors, cephx key, timeouts) so no
//! key is ever written to disk. Meant to be opened once and shared (it is
//! cheap to clone, `Send + Sync`) by every operation of a process; also owns
//! pool-level queries: capacity ([`PoolStats`]) and monitor commands.

use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, check};
use crate::ffi::{self, Api, RadosClusterStat, RadosPoolStat, RadosT};
use crate::ioctx::IoCtx;
use crate::secret::{Secret, wipe};

/// How to reach and authenticate to a cluster.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Monitor addresses as librados' `mon_host` takes them:
    /// `"127.0.0.1:3300"`, `"10.0.0.1,10.0.0.2"`,
    /// `"[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"`. May be empty if
    /// `conf_file` names the monitors.
    pub mon_host: String,
    /// The cephx user without its `client.` prefix (a prefix is tolerated).
    pub user: String,
    /// The user's cephx key.
    pub key: Secret,
    /// An optional ceph.conf to read first; the options above override it.
    /// When `None`, no config file is read at all (not even
    /// /etc/ceph/ceph.conf).
    pub conf_file: Option<PathBuf>,
    /// Bounds the connection (`client_mount_timeout`) and each monitor and
    /// OSD request (`rados_mon_op_timeout`, `rados_osd_op_timeout`).
    /// Rounded up to whole seconds; zero means librados' defaults (wait
    /// forever for OSD ops).
    pub timeout: Duration,
    /// Bounds the connection alone (`client_mount_timeout`), overriding
    /// `timeout` for it: a client that must never time its I/O out can
    /// still give up connecting quickly.
    pub connect_timeout: Option<Duration>,
}

impl ConnectOpts {
    pub fn new(mon_host: impl Into<String>, user: impl Into<String>, key: Secret) -> Self {
        ConnectOpts {
            mon_host: mon_host.into(),
            user: user.into(),
            key,
            conf_file: None,
            timeout: Duration::from_secs(30),
            connect_timeout: None,
        }
    }

    fn entity(&self) -> String {
        let user = self.user.strip_prefix("client.").unwrap_or(&self.user);
        format!("client.{user}")
    }
}

pub(crate) struct ClusterInner {
    pub(crate) api: &'static Api,
    pub(crate) handle: RadosT,
    /// `client.NAME@MONS`, for error messages.
    pub(crate) desc: String,
}

// SAFETY: a connected rados_t is thread-safe: librados serialises access to
// its client state internally, and every C entry point may be called from
// any thread.
unsafe impl Send for ClusterInner {}
unsafe impl Sync for ClusterInner {}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and, since this is the last reference
        // (every IoCtx/Image holds an Arc), nothing else uses it.
        unsafe { (self.api.rados.rados_shutdown)(self.handle) };
    }
}

/// A connected librados client. Clones share the same connection.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("client", &self.inner.desc)
            .finish()
    }
}

/// Space and object counts of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Raw bytes used by the pool (including replicas), from `ceph df`;
    /// without the mgr's statistics, the pool's stored bytes.
    pub bytes_used: u64,
    /// Logical bytes stored in the pool (what clients wrote).
    pub bytes_stored: u64,
    /// Bytes that can still be written to the pool: the pool's `max_avail`
    /// (replication and full ratios accounted for) when `ceph df` answers,
    /// else the cluster's raw free space (see `avail_is_pool_max`).
    pub bytes_avail: u64,
    pub objects: u64,
    /// Whether `bytes_avail` is the pool's `max_avail` (true) or the
    /// cluster-wide `kb_avail` fallback (false).
    pub avail_is_pool_max: bool,
}

/// Converts a Rust string into a C string, naming the operation on failure.
pub(crate) fn cstring(op: &'static str, what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(op, format!("{what} contains a NUL byte")))
}

fn timeout_secs(t: Duration) -> u64 {
    let s = t.as_secs();
    if t.subsec_nanos() > 0 { s + 1 } else { s }
}

impl Cluster {
    /// Connects to the cluster. Blocks up to `opts.timeout`.
    pub fn connect(opts: &ConnectOpts) -> Result<Cluster> {
        const OP: &str = "connect";
        let api = ffi::api()?;
        let entity = opts.entity();
        let desc = if opts.mon_host.is_empty() {
            entity.clone()
        } else {
            format!("{entity}@{}", opts.mon_host)
        };
        if opts.key.is_empty() {
            return Err(Error::invalid(OP, format!("{desc}: empty cephx key")));
        }
        let c_cluster = cstring(OP, "cluster name", "ceph")?;
        let c_entity = cstring(OP, "user", &entity)?;
        let mut handle: RadosT = std::ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated strings.
        let rc = unsafe {
            (api.rados.rados_create2)(&mut handle, c_cluster.as_ptr(), c_entity.as_ptr(), 0)
        };
        check(rc, "rados_create2", || desc.clone())?;
        // From here on the handle is shut down on every path.
        let inner = ClusterInner { api, handle, desc };

        if let Some(path) = &opts.conf_file {
            let p = path.to_string_lossy();
            let c_path = cstring(OP, "conf_file", &p)?;
            // SAFETY: handle not yet connected; valid string.
            let rc = unsafe { (api.rados.rados_conf_read_file)(handle, c_path.as_ptr()) };
            check(rc, "rados_conf_read_file", || p.to_string())?;
        }
        let set = |name: &str, value: &str| -> Result<()> {
            let c_name = cstring(OP, "option", name)?;
            let c_value = cstring(OP, name, value)?;
            // SAFETY: handle not yet connected; valid strings.
            let rc =
                unsafe { (api.rados.rados_conf_set)(handle, c_name.as_ptr(), c_value.as_ptr()) };
            check(rc, "rados_conf_set", || {
                format!("{} option {name}", inner.desc)
            })
            .map(|_| ())
        };
        if !opts.mon_host.is_empty() {
            set("mon_host", &opts.mon_host)?;
        }
        let secs = timeout_secs(opts.timeout);
        if secs > 0 {
            let s = secs.to_string();
            set("client_mount_timeout", &s)?;
            set("rados_mon_op_timeout", &s)?;
            set("rados_osd_op_timeout", &s)?;
        }
        if let Some(t) = opts.connect_timeout {
            set("client_mount_timeout", &timeout_secs(t).max(1).to_string())?;
        }
        // The key: through a C string that is wiped right after, so the only
        // copy left is librados' own (in memory).
        {
            let c_name = cstring(OP, "option", "key")?;
            let c_key = cstring(OP, "key", opts.key.expose())?;
            // SAFETY: as above.
            let rc = unsafe { (api.rados.rados_conf_set)(handle, c_name.as_ptr(), c_key.as_ptr()) };
            wipe(c_key.into_bytes());
            check(rc, "rados_conf_set", || {
                format!("{} option key", inner.desc)
            })?;
        }
        // SAFETY: configured handle.
        let rc = unsafe { (api.rados.rados_connect)(handle) };
        check(rc, "rados_connect", || inner.desc.clone())?;
        Ok(Cluster {
            inner: Arc::new(inner),
        })
    }

    /// This client's global instance id (as seen in watcher lists).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle.
        unsafe { (self.inner.api.rados.rados_get_instance_id)(self.inner.handle) }
    }

    /// This client's address as the OSDs see it (`10.0.0.5:0/3777997993`),
    /// the form `ceph osd blocklist add` takes: blocklisting it fences this
    /// client, and only this client.
    pub fn addrs(&self) -> Result<String> {
        let api = self.inner.api;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: connected handle and out-pointer; librados allocates the
        // string (strdup), freed right after with rados_buffer_free (free).
        let rc = unsafe { (api.rados.rados_getaddrs)(self.inner.handle, &mut out) };
        check(rc, "rados_getaddrs", || self.inner.desc.clone())?;
        if out.is_null() {
            return Ok(String::new());
        }
        // SAFETY: a NUL-terminated string from librados.
        let s = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        unsafe { (api.rados.rados_buffer_free)(out) };
        Ok(s)
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> Result<String> {
        let mut buf = [0 as c_char; 64];
        // SAFETY: buffer and its length.
        let rc = unsafe {
            (self.inner.api.rados.rados_cluster_fsid)(
                self.inner.handle,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        check(rc, "rados_cluster_fsid", || self.inner.desc.clone())?;
        // SAFETY: librados NUL-terminates within the buffer on success.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Opens an I/O context on `pool` (its default namespace).
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        IoCtx::new(self.inner.clone(), pool, "")
    }

    /// Opens an I/O context on the RADOS namespace `namespace` of `pool`
    /// (`""` is the default namespace). Every image operation through it
    /// sees only that namespace's images.
    pub fn ioctx_in(&self, pool: &str, namespace: &str) -> Result<IoCtx> {
        IoCtx::new(self.inner.clone(), pool, namespace)
    }

    /// Sends a monitor command (a JSON object such as
    /// `{"prefix": "df", "format": "json"}`) and returns its output buffer
    /// and status string.
    pub fn mon_command(&self, cmd_json: &str) -> Result<(Vec<u8>, String)> {
        const OP: &str = "rados_mon_command";
        let api = self.inner.api;
        let c_cmd = cstring(OP, "command", cmd_json)?;
        let mut cmds = [c_cmd.as_ptr()];
        let mut outbuf: *mut c_char = std::ptr::null_mut();
        let mut outbuf_len = 0usize;
        let mut outs: *mut c_char = std::ptr::null_mut();
        let mut outs_len = 0usize;
        // SAFETY: one valid command string; librados allocates the outputs.
        let rc = unsafe {
            (api.rados.rados_mon_command)(
                self.inner.handle,
                cmds.as_mut_ptr(),
                1,
                std::ptr::null(),
                0,
                &mut outbuf,
                &mut outbuf_len,
                &mut outs,
                &mut outs_len,
            )
        };
        let take = |p: *mut c_char, len: usize| -> Vec<u8> {
            if p.is_null() {
                return Vec::new();
            }
            // SAFETY: librados returned `len` bytes at `p`, freed right after.
            let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
            unsafe { (api.rados.rados_buffer_free)(p) };
            v
        };
        let out = take(outbuf, outbuf_len);
        let status = String::from_utf8_lossy(&take(outs, outs_len)).into_owned();
        if rc < 0 {
            let prefix = serde_json::from_str::<serde_json::Value>(cmd_json)
                .ok()
                .and_then(|v| v.get("prefix").and_then(|p| p.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            return Err(Error::from_rc(
                OP,
                format!("'{prefix}' ({status})"),
                i64::from(rc),
            ));
        }
        Ok((out, status))
    }

    /// Space and object counts of `pool`. Uses the monitor's `df` (served
    /// from the mgr's statistics) for the pool's `max_avail`; falls back to
    /// the pool's own stats and the cluster's raw free space if that fails.
    pub fn pool_stats(&self, pool: &str) -> Result<PoolStats> {
        match self.df_pool(pool) {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => {
                return Err(Error::NotFound {
                    op: "pool_stats",
                    target: format!("pool {pool}"),
                });
            }
            Err(_) => {}
        }
        let io = self.ioctx(pool)?;
        let mut ps = RadosPoolStat::default();
        // SAFETY: valid ioctx and out struct (with slack).
        let rc = unsafe { (self.inner.api.rados.rados_ioctx_pool_stat)(io.handle(), &mut ps) };
        check(rc, "rados_ioctx_pool_stat", || format!("pool {pool}"))?;
        let mut cs = RadosClusterStat::default();
        // SAFETY: connected handle and out struct.
        let rc = unsafe { (self.inner.api.rados.rados_cluster_stat)(self.inner.handle, &mut cs) };
        check(rc, "rados_cluster_stat", || self.inner.desc.clone())?;
        Ok(PoolStats {
            bytes_used: ps.num_bytes,
            bytes_stored: ps.num_bytes,
            bytes_avail: cs.kb_avail.saturating_mul(1024),
            objects: ps.num_objects,
            avail_is_pool_max: false,
        })
    }

    fn df_pool(&self, pool: &str) -> Result<Option<PoolStats>> {
        let (out, _) = self.mon_command(r#"{"prefix": "df", "format": "json"}"#)?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Error::invalid("df", format!("bad JSON: {e}")))?;
        let Some(pools) = v.get("pools").and_then(|p| p.as_array()) else {
            return Err(Error::invalid("df", "no 'pools' in reply"));
        };
        let Some(p) = pools
            .iter()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(pool))
        else {
            return Ok(None);
        };
        let stats = p
            .get("stats")
            .ok_or_else(|| Error::invalid("df", "no 'stats' for pool"))?;
        let n = |k: &str| stats.get(k).and_then(|x| x.as_u64());
        let (Some(max_avail), Some(objects)) = (n("max_avail"), n("objects")) else {
            return Err(Error::invalid("df", "no max_avail/objects for pool"));
        };
        let stored = n("stored").or_else(|| n("bytes_used")).unwrap_or(0);
        Ok(Some(PoolStats {
            bytes_used: n("bytes_used").unwrap_or(stored),
            bytes_stored: stored,
            bytes_avail: max_avail,
            objects,
            avail_is_pool_max: true,
        }))
    }
}

/// Versions of the loaded libraries, e.g. for a startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryVersions {
    pub librados: (i32, i32, i32),
    pub librbd: (i32, i32, i32),
}

/// Loads librados/librbd (if not done yet) and reports their versions.
/// Fails with a [`crate::LibraryError`] telling which package to install.
pub fn library_versions() -> Result<LibraryVersions> {
    let api = ffi::api()?;
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: plain out-pointers.
    unsafe { (api.rados.rados_version)(&mut a, &mut b, &mut c) };
    let librados = (a, b, c);
    unsafe { (api.rbd.rbd_version)(&mut a, &mut b, &mut c) };
    Ok(LibraryVersions {
        librados,
        librbd: (a, b, c),
    })
}
