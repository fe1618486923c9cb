//! [`Image`]: an open RBD image (`rbd_image_t`) and everything done through
//! it: size and resize, key/value metadata, snapshots, parent (clone)
//! information and flatten, watchers, the exclusive lock, client-side
//! (LUKS) encryption, and synchronous I/O
//! (read/write/discard/flush).

use std::ffi::{c_char, c_int};
use std::fmt;

use crate::cluster::cstring;
use crate::encryption::{self, EncryptionAlgorithm, EncryptionFormat};
use crate::error::{ENOENT, ERANGE, Error, Result, check};
use crate::ffi::{
    self, RbdImageInfo, RbdImageT, RbdImageWatcher, RbdLinkedImageSpec, RbdSnapInfo, RbdSnapSpec,
};
use crate::ioctx::{Features, IoCtx, fill_array, image_target, opt_cstr};
use crate::secret::Secret;

/// Largest single librbd read/write: librbd returns the byte count as an
/// `int`, so one call must stay below 2 GiB.
const MAX_IO: usize = 1 << 30;

/// An open image. Closed on drop (or explicitly with [`Image::close`]).
/// Keeps its pool's [`IoCtx`] and the cluster connection alive.
pub struct Image {
    io: IoCtx,
    pub(crate) handle: RbdImageT,
    name: String,
    snap: Option<String>,
    read_only: bool,
}

// SAFETY: librbd's ImageCtx guards its state with its own locks, and its C
// API may be called concurrently from several threads on one handle (rbd-nbd
// and QEMU do). Only closing needs exclusivity, which `Drop`/`close(self)`
// guarantee.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("pool", &self.io.pool())
            .field("name", &self.name)
            .field("snap", &self.snap)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Result of [`Image::stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStat {
    pub size: u64,
    /// Object size in bytes (`1 << order`).
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: u32,
    /// Prefix of the image's data objects (`rbd_data.<id>`).
    pub block_name_prefix: String,
}

/// An entry of [`Image::snap_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    /// Image size when the snapshot was taken.
    pub size: u64,
    pub name: String,
}

/// The parent of a cloned image ([`Image::parent_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    pub pool_id: i64,
    pub pool_name: String,
    pub pool_namespace: String,
    pub image_id: String,
    pub image_name: String,
    /// The parent image is in the trash.
    pub image_in_trash: bool,
    pub snap_id: u64,
    pub snap_name: String,
}

/// A client watching an image (one per read-write open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// The client's address, e.g. `127.0.0.1:0/123456789`.
    pub addr: String,
    /// The client's global id (`client.<id>`), as [`crate::Cluster::instance_id`].
    pub id: i64,
    pub cookie: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Exclusive,
    Shared,
}

/// Current holders of an image's managed (exclusive-lock feature) lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwners {
    pub mode: LockMode,
    /// Owner descriptions as librbd gives them (`client.<id>`...).
    pub owners: Vec<String>,
}

impl Image {
    pub(crate) fn open(
        io: &IoCtx,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let op = if read_only {
            "rbd_open_read_only"
        } else {
            "rbd_open"
        };
        let c_name = cstring(op, "image name", name)?;
        let c_snap = snap.map(|s| cstring(op, "snapshot name", s)).transpose()?;
        let snap_ptr = c_snap.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let api = io.api();
        let mut handle: RbdImageT = std::ptr::null_mut();
        // SAFETY: valid ioctx, strings and out-pointer. librbd duplicates
        // the ioctx; we still keep it alive for the cluster connection.
        let rc = unsafe {
            if read_only {
                (api.rbd.rbd_open_read_only)(io.handle(), c_name.as_ptr(), &mut handle, snap_ptr)
            } else {
                (api.rbd.rbd_open)(io.handle(), c_name.as_ptr(), &mut handle, snap_ptr)
            }
        };
        let target = || match snap {
            Some(s) => format!("{}@{s}", image_target(io, name)),
            None => image_target(io, name),
        };
        check(rc, op, target)?;
        Ok(Image {
            io: io.clone(),
            handle,
            name: name.to_string(),
            snap: snap.map(str::to_string),
            read_only,
        })
    }

    pub(crate) fn api(&self) -> &'static ffi::Api {
        self.io.api()
    }

    pub(crate) fn target(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", image_target(&self.io, &self.name)),
            None => image_target(&self.io, &self.name),
        }
    }

    fn snap_target(&self, snap: &str) -> String {
        format!("{}@{snap}", image_target(&self.io, &self.name))
    }

    fn check(&self, rc: c_int, op: &'static str) -> Result<c_int> {
        check(rc, op, || self.target())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ioctx(&self) -> &IoCtx {
        &self.io
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Closes the image, reporting a failure (drop ignores it).
    pub fn close(mut self) -> Result<()> {
        let h = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        // SAFETY: open handle, owned exclusively; Drop skips a null handle.
        let rc = unsafe { (self.api().rbd.rbd_close)(h) };
        self.check(rc, "rbd_close").map(|_| ())
    }

    /// The image's internal id.
    pub fn id(&self) -> Result<String> {
        let mut buf = vec![0 as c_char; 128];
        // SAFETY: buffer and its length.
        let rc = unsafe { (self.api().rbd.rbd_get_id)(self.handle, buf.as_mut_ptr(), buf.len()) };
        self.check(rc, "rbd_get_id")?;
        // SAFETY: NUL-terminated within the buffer on success.
        Ok(unsafe { opt_cstr(buf.as_ptr()) })
    }

    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open handle, out-pointer.
        let rc = unsafe { (self.api().rbd.rbd_get_size)(self.handle, &mut size) };
        self.check(rc, "rbd_get_size")?;
        Ok(size)
    }

    pub fn features(&self) -> Result<Features> {
        let mut f = 0u64;
        // SAFETY: open handle, out-pointer.
        let rc = unsafe { (self.api().rbd.rbd_get_features)(self.handle, &mut f) };
        self.check(rc, "rbd_get_features")?;
        Ok(Features::from_bits(f))
    }

    pub fn stat(&self) -> Result<ImageStat> {
        let mut info = RbdImageInfo {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; ffi::RBD_MAX_BLOCK_NAME_SIZE],
            parent_pool: 0,
            parent_name: [0; ffi::RBD_MAX_IMAGE_NAME_SIZE],
        };
        // SAFETY: open handle, struct and its size.
        let rc = unsafe {
            (self.api().rbd.rbd_stat)(self.handle, &mut info, std::mem::size_of::<RbdImageInfo>())
        };
        self.check(rc, "rbd_stat")?;
        let prefix = info.block_name_prefix.map(|c| c as u8);
        let end = prefix.iter().position(|&b| b == 0).unwrap_or(prefix.len());
        Ok(ImageStat {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: u32::try_from(info.order).unwrap_or(0),
            block_name_prefix: String::from_utf8_lossy(&prefix[..end]).into_owned(),
        })
    }

    /// Grows or shrinks the image (shrinking discards the data past the end).
    pub fn resize(&self, new_size: u64) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_resize)(self.handle, new_size) };
        self.check(rc, "rbd_resize").map(|_| ())
    }

    // ----- metadata -----

    /// The value of an image metadata key, `None` if it is not set.
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        const OP: &str = "rbd_metadata_get";
        let c_key = cstring(OP, "key", key)?;
        let mut cap = 256usize;
        loop {
            let mut buf = vec![0u8; cap];
            let mut len = cap;
            // SAFETY: buffer of `len` bytes.
            let rc = unsafe {
                (self.api().rbd.rbd_metadata_get)(
                    self.handle,
                    c_key.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            match rc {
                rc if rc == -ERANGE => cap = len.max(cap * 2),
                rc if rc == -ENOENT => return Ok(None),
                rc => {
                    check(rc, OP, || format!("{} key {key}", self.target()))?;
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    buf.truncate(end);
                    return String::from_utf8(buf)
                        .map(Some)
                        .map_err(|_| Error::invalid(OP, format!("value of {key} is not UTF-8")));
                }
            }
        }
    }

    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        const OP: &str = "rbd_metadata_set";
        let c_key = cstring(OP, "key", key)?;
        let c_val = cstring(OP, "value", value)?;
        // SAFETY: open handle, valid strings.
        let rc = unsafe {
            (self.api().rbd.rbd_metadata_set)(self.handle, c_key.as_ptr(), c_val.as_ptr())
        };
        check(rc, OP, || format!("{} key {key}", self.target())).map(|_| ())
    }

    /// Removes a metadata key; `Ok(false)` if it was not set.
    pub fn metadata_remove(&self, key: &str) -> Result<bool> {
        const OP: &str = "rbd_metadata_remove";
        let c_key = cstring(OP, "key", key)?;
        // SAFETY: open handle, valid string.
        let rc = unsafe { (self.api().rbd.rbd_metadata_remove)(self.handle, c_key.as_ptr()) };
        if rc == -ENOENT {
            return Ok(false);
        }
        check(rc, OP, || format!("{} key {key}", self.target())).map(|_| true)
    }

    /// All metadata key/value pairs, sorted by key.
    pub fn metadata_list(&self) -> Result<Vec<(String, String)>> {
        const OP: &str = "rbd_metadata_list";
        const PAGE: usize = 64;
        let mut out: Vec<(String, String)> = Vec::new();
        let mut start = String::new();
        loop {
            let c_start = cstring(OP, "key", &start)?;
            let (mut kcap, mut vcap) = (4096usize, 4096usize);
            let page = loop {
                let mut keys = vec![0u8; kcap];
                let mut vals = vec![0u8; vcap];
                let (mut klen, mut vlen) = (kcap, vcap);
                // SAFETY: two buffers of the given lengths.
                let rc = unsafe {
                    (self.api().rbd.rbd_metadata_list)(
                        self.handle,
                        c_start.as_ptr(),
                        PAGE as u64,
                        keys.as_mut_ptr().cast(),
                        &mut klen,
                        vals.as_mut_ptr().cast(),
                        &mut vlen,
                    )
                };
                if rc == -ERANGE {
                    kcap = klen.max(kcap * 2);
                    vcap = vlen.max(vcap * 2);
                    continue;
                }
                self.check(rc, OP)?;
                let split = |b: &[u8], len: usize| -> Vec<String> {
                    b[..len.min(b.len())]
                        .split(|&c| c == 0)
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                };
                let mut k = split(&keys, klen);
                let mut v = split(&vals, vlen);
                // Each entry is NUL-terminated: drop the empty tail.
                if k.last().is_some_and(String::is_empty) {
                    k.pop();
                }
                if v.len() > k.len() {
                    v.truncate(k.len());
                }
                if v.len() != k.len() {
                    return Err(Error::invalid(OP, "key/value count mismatch"));
                }
                break k.into_iter().zip(v).collect::<Vec<_>>();
            };
            let n = page.len();
            if let Some((last, _)) = page.last() {
                start = last.clone();
            }
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    // ----- snapshots -----

    pub fn snap_create(&self, snap: &str) -> Result<()> {
        self.snap_op("rbd_snap_create", snap, self.api().rbd.rbd_snap_create)
    }

    /// Removes a snapshot. With clone v2 this works even while clones of it
    /// exist (librbd moves it to the trash namespace until they are gone);
    /// a protected snapshot must be unprotected first.
    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        self.snap_op("rbd_snap_remove", snap, self.api().rbd.rbd_snap_remove)
    }

    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        self.snap_op("rbd_snap_protect", snap, self.api().rbd.rbd_snap_protect)
    }

    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        self.snap_op(
            "rbd_snap_unprotect",
            snap,
            self.api().rbd.rbd_snap_unprotect,
        )
    }

    fn snap_op(
        &self,
        op: &'static str,
        snap: &str,
        f: unsafe extern "C" fn(RbdImageT, *const c_char) -> c_int,
    ) -> Result<()> {
        let c_snap = cstring(op, "snapshot name", snap)?;
        // SAFETY: open handle, valid string.
        let rc = unsafe { f(self.handle, c_snap.as_ptr()) };
        check(rc, op, || self.snap_target(snap)).map(|_| ())
    }

    pub fn snap_is_protected(&self, snap: &str) -> Result<bool> {
        const OP: &str = "rbd_snap_is_protected";
        let c_snap = cstring(OP, "snapshot name", snap)?;
        let mut p: c_int = 0;
        // SAFETY: open handle, valid string, out-pointer.
        let rc =
            unsafe { (self.api().rbd.rbd_snap_is_protected)(self.handle, c_snap.as_ptr(), &mut p) };
        check(rc, OP, || self.snap_target(snap))?;
        Ok(p != 0)
    }

    pub fn snap_exists(&self, snap: &str) -> Result<bool> {
        const OP: &str = "rbd_snap_exists";
        let c_snap = cstring(OP, "snapshot name", snap)?;
        let mut exists = false;
        // SAFETY: open handle, valid string, out-pointer.
        let rc =
            unsafe { (self.api().rbd.rbd_snap_exists)(self.handle, c_snap.as_ptr(), &mut exists) };
        check(rc, OP, || self.snap_target(snap))?;
        Ok(exists)
    }

    /// The image's snapshots: user ones, and its parts of group snapshots
    /// (see [`Image::snap_namespace`]); not those in the trash namespace.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        const OP: &str = "rbd_snap_list";
        let mut max: c_int = 16;
        loop {
            let cap = usize::try_from(max).unwrap_or(16).max(1);
            let mut buf: Vec<RbdSnapInfo> = Vec::with_capacity(cap);
            let mut m = c_int::try_from(cap).unwrap_or(c_int::MAX);
            // SAFETY: room for `m` entries (librbd needs count + 1, for a
            // NULL-named terminator, and says so with -ERANGE).
            let rc =
                unsafe { (self.api().rbd.rbd_snap_list)(self.handle, buf.as_mut_ptr(), &mut m) };
            if rc == -ERANGE {
                max = m.max(max.saturating_mul(2));
                continue;
            }
            let n = usize::try_from(self.check(rc, OP)?).unwrap_or(0);
            // SAFETY: librbd initialised `n` entries plus the terminator.
            unsafe { buf.set_len(n) };
            let out = buf
                .iter()
                .map(|s| SnapInfo {
                    id: s.id,
                    size: s.size,
                    // SAFETY: librbd-allocated string.
                    name: unsafe { opt_cstr(s.name) },
                })
                .collect();
            // SAFETY: frees the names up to the terminator.
            unsafe { (self.api().rbd.rbd_snap_list_end)(buf.as_mut_ptr()) };
            return Ok(out);
        }
    }

    // ----- clones -----

    /// The parent of a clone, `None` for an image without one (or a
    /// flattened clone).
    pub fn parent_info(&self) -> Result<Option<ParentInfo>> {
        const OP: &str = "rbd_get_parent";
        let mut p = RbdLinkedImageSpec {
            pool_id: 0,
            pool_name: std::ptr::null_mut(),
            pool_namespace: std::ptr::null_mut(),
            image_id: std::ptr::null_mut(),
            image_name: std::ptr::null_mut(),
            trash: false,
        };
        let mut s = RbdSnapSpec {
            id: 0,
            namespace_type: 0,
            name: std::ptr::null_mut(),
        };
        // SAFETY: open handle and two out structs.
        let rc = unsafe { (self.api().rbd.rbd_get_parent)(self.handle, &mut p, &mut s) };
        if rc == -ENOENT {
            return Ok(None);
        }
        self.check(rc, OP)?;
        // SAFETY: librbd filled both structs with allocated strings, freed
        // by the cleanup calls right after copying.
        let info = unsafe {
            ParentInfo {
                pool_id: p.pool_id,
                pool_name: opt_cstr(p.pool_name),
                pool_namespace: opt_cstr(p.pool_namespace),
                image_id: opt_cstr(p.image_id),
                image_name: opt_cstr(p.image_name),
                image_in_trash: p.trash,
                snap_id: s.id,
                snap_name: opt_cstr(s.name),
            }
        };
        unsafe {
            (self.api().rbd.rbd_linked_image_spec_cleanup)(&mut p);
            (self.api().rbd.rbd_snap_spec_cleanup)(&mut s);
        }
        Ok(Some(info))
    }

    /// Copies all parent data into this clone and detaches it.
    pub fn flatten(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_flatten)(self.handle) };
        self.check(rc, "rbd_flatten").map(|_| ())
    }

    // ----- watchers and locks -----

    /// The clients that have the image open read-write (each holds a watch).
    pub fn list_watchers(&self) -> Result<Vec<Watcher>> {
        const OP: &str = "rbd_watchers_list";
        // SAFETY: librbd fills up to `n` entries and says how many.
        let (rc, mut buf) = unsafe {
            fill_array::<RbdImageWatcher>(8, |p, n| {
                (self.api().rbd.rbd_watchers_list)(self.handle, p, n)
            })
        };
        self.check(rc, OP)?;
        let out = buf
            .iter()
            .map(|w| Watcher {
                // SAFETY: librbd-allocated string.
                addr: unsafe { opt_cstr(w.addr) },
                id: w.id,
                cookie: w.cookie,
            })
            .collect();
        // SAFETY: frees what librbd allocated for those entries.
        unsafe { (self.api().rbd.rbd_watchers_list_cleanup)(buf.as_mut_ptr(), buf.len()) };
        Ok(out)
    }

    /// Takes the image's exclusive lock (needs the exclusive-lock feature)
    /// and keeps it: while held, librbd refuses to hand it over to other
    /// clients, whose writes and lock requests then fail (EROFS/EBUSY).
    pub fn lock_acquire_exclusive(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc =
            unsafe { (self.api().rbd.rbd_lock_acquire)(self.handle, ffi::RBD_LOCK_MODE_EXCLUSIVE) };
        self.check(rc, "rbd_lock_acquire").map(|_| ())
    }

    /// Releases a lock taken with [`Image::lock_acquire_exclusive`].
    pub fn lock_release(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_lock_release)(self.handle) };
        self.check(rc, "rbd_lock_release").map(|_| ())
    }

    /// Breaks the exclusive lock held by `owner` (as
    /// [`Image::lock_get_owners`] names it). librbd blocklists the owner
    /// first (`rbd_blocklist_on_break_lock`), so a client that only looked
    /// dead can never write again.
    pub fn lock_break_exclusive(&self, owner: &str) -> Result<()> {
        let c_owner = cstring("rbd_lock_break", "lock owner", owner)?;
        // SAFETY: open handle, valid string.
        let rc = unsafe {
            (self.api().rbd.rbd_lock_break)(
                self.handle,
                ffi::RBD_LOCK_MODE_EXCLUSIVE,
                c_owner.as_ptr(),
            )
        };
        self.check(rc, "rbd_lock_break").map(|_| ())
    }

    /// Whether this handle currently owns the exclusive lock.
    pub fn is_exclusive_lock_owner(&self) -> Result<bool> {
        let mut owner: c_int = 0;
        // SAFETY: open handle, out-pointer.
        let rc = unsafe { (self.api().rbd.rbd_is_exclusive_lock_owner)(self.handle, &mut owner) };
        self.check(rc, "rbd_is_exclusive_lock_owner")?;
        Ok(owner != 0)
    }

    /// Who holds the image's lock; `None` if nobody does.
    pub fn lock_get_owners(&self) -> Result<Option<LockOwners>> {
        const OP: &str = "rbd_lock_get_owners";
        let mut cap = 4usize;
        loop {
            let mut owners: Vec<*mut c_char> = vec![std::ptr::null_mut(); cap];
            let mut n = cap;
            let mut mode: c_int = ffi::RBD_LOCK_MODE_EXCLUSIVE;
            // SAFETY: room for `n` string pointers.
            let rc = unsafe {
                (self.api().rbd.rbd_lock_get_owners)(
                    self.handle,
                    &mut mode,
                    owners.as_mut_ptr(),
                    &mut n,
                )
            };
            if rc == -ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            if rc == -ENOENT {
                return Ok(None);
            }
            self.check(rc, OP)?;
            let n = n.min(cap);
            let list: Vec<String> = owners[..n]
                .iter()
                // SAFETY: librbd-allocated strings.
                .map(|&p| unsafe { opt_cstr(p) })
                .collect();
            // SAFETY: frees the `n` strings.
            unsafe { (self.api().rbd.rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), n) };
            if list.is_empty() {
                return Ok(None);
            }
            let mode = if mode == ffi::RBD_LOCK_MODE_SHARED {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            return Ok(Some(LockOwners { mode, owners: list }));
        }
    }

    // ----- I/O -----

    /// Reads into `buf` from byte offset `off`; returns the bytes read
    /// (short only at the end of the image).
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_IO);
            // SAFETY: `len` writable bytes at that position in `buf`.
            let rc = unsafe {
                (self.api().rbd.rbd_read)(
                    self.handle,
                    off + done as u64,
                    len,
                    buf[done..].as_mut_ptr().cast(),
                )
            };
            if rc < 0 {
                return Err(Error::from_rc(
                    "rbd_read",
                    format!("{} offset {}", self.target(), off + done as u64),
                    rc as i64,
                ));
            }
            let got = rc as usize;
            done += got;
            if got < len {
                break;
            }
        }
        Ok(done)
    }

    /// Writes all of `buf` at byte offset `off` (must lie within the image).
    pub fn write_at(&self, off: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_IO);
            // SAFETY: `len` readable bytes at that position in `buf`.
            let rc = unsafe {
                (self.api().rbd.rbd_write)(
                    self.handle,
                    off + done as u64,
                    len,
                    buf[done..].as_ptr().cast(),
                )
            };
            if rc < 0 {
                return Err(Error::from_rc(
                    "rbd_write",
                    format!("{} offset {}", self.target(), off + done as u64),
                    rc as i64,
                ));
            }
            if rc as usize != len {
                return Err(Error::invalid(
                    "rbd_write",
                    format!("{}: short write ({rc} of {len} bytes)", self.target()),
                ));
            }
            done += len;
        }
        Ok(())
    }

    /// Deallocates a byte range (reads back as zeros).
    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_discard)(self.handle, off, len) };
        self.check(rc, "rbd_discard").map(|_| ())
    }

    // ----- encryption -----

    /// Writes a LUKS header of `format` (cipher `alg`) at the start of the
    /// image, opened by `passphrase`, and loads the encryption on this
    /// handle. Everything the image held before is lost; librbd refuses
    /// images with snapshots or a parent (EINVAL/EBUSY).
    pub fn encryption_format(
        &self,
        format: EncryptionFormat,
        alg: EncryptionAlgorithm,
        passphrase: &Secret,
    ) -> Result<()> {
        const OP: &str = "rbd_encryption_format";
        let fns = self.crypto(OP)?;
        let mut opts = encryption::luks_options(alg, passphrase);
        // SAFETY: open handle; the options struct and the passphrase it
        // points to outlive the call.
        let rc = unsafe {
            (fns.rbd_encryption_format)(
                self.handle,
                format.raw(),
                (&raw mut opts).cast(),
                std::mem::size_of::<ffi::RbdEncryptionLuksOptions>(),
            )
        };
        check(rc, OP, || format!("{} ({format})", self.target())).map(|_| ())
    }

    /// Opens the image's LUKS header of `format` with `passphrase`: from
    /// now on, I/O through this handle is decrypted/encrypted and its size
    /// is that of the data area. A wrong passphrase fails with EPERM
    /// ([`Error::errno`] 1), a header of another format (or none) with
    /// EINVAL.
    pub fn encryption_load(&self, format: EncryptionFormat, passphrase: &Secret) -> Result<()> {
        const OP: &str = "rbd_encryption_load";
        let fns = self.crypto(OP)?;
        let mut opts = encryption::luks_options(EncryptionAlgorithm::default(), passphrase);
        // SAFETY: as in `encryption_format`.
        let rc = unsafe {
            (fns.rbd_encryption_load)(
                self.handle,
                format.raw(),
                (&raw mut opts).cast(),
                std::mem::size_of::<ffi::RbdEncryptionLuksOptions>(),
            )
        };
        check(rc, OP, || format!("{} ({format})", self.target())).map(|_| ())
    }

    fn crypto(&self, op: &'static str) -> Result<&'static ffi::RbdCryptoFns> {
        self.api().crypto.as_ref().map_err(|e| Error::Unsupported {
            op,
            reason: format!("client-side encryption needs Ceph Pacific (16.2) or newer: {e}"),
        })
    }

    /// Waits until every write so far is durable on the OSDs.
    pub fn flush(&self) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_flush)(self.handle) };
        self.check(rc, "rbd_flush").map(|_| ())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: open handle, owned exclusively.
            unsafe { (self.api().rbd.rbd_close)(self.handle) };
        }
    }
}

// The handles are meant to be shared across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Image>();
    assert_send_sync::<IoCtx>();
    assert_send_sync::<crate::Cluster>();
};
