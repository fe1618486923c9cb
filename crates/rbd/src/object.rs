//! Plain RADOS objects in an [`IoCtx`]'s pool and namespace: their omap (a
//! sorted key → value map kept with the object) and their removal. haina
//! keeps small registries there, e.g. the node registry of a pool, where
//! every writer owns one key: a write replaces whole keys atomically, so
//! writers of different keys never need a read-modify-write.
//!
//! Each call is one RADOS operation (`rados_write_op_*` / `rados_read_op_*`),
//! bounded like every other operation by the connection's OSD op timeout
//! (see [`crate::ConnectOpts::timeout`]). Keys are strings; values are
//! bytes. The C API copies keys and values when an operation is built, and
//! the operation, and the omap iterator librados allocates for a read, are
//! released on every path by guards.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int};

use crate::cluster::cstring;
use crate::error::{Error, Result, check};
use crate::ffi::{self, RadosOmapIterT, RadosReadOpT, RadosWriteOpT};
use crate::ioctx::IoCtx;

/// How many key/value pairs one listing request asks for.
const LIST_PAGE: u64 = 256;

/// A `rados_write_op_t`, released on drop.
struct WriteOp {
    api: &'static ffi::Api,
    op: RadosWriteOpT,
}

impl WriteOp {
    fn new(api: &'static ffi::Api, what: &'static str) -> Result<Self> {
        // SAFETY: no arguments; NULL means out of memory.
        let op = unsafe { (api.rados.rados_create_write_op)() };
        if op.is_null() {
            return Err(Error::invalid(what, "rados_create_write_op returned NULL"));
        }
        Ok(Self { api, op })
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op and released once.
        unsafe { (self.api.rados.rados_release_write_op)(self.op) };
    }
}

/// A `rados_read_op_t`, released on drop.
struct ReadOp {
    api: &'static ffi::Api,
    op: RadosReadOpT,
}

impl ReadOp {
    fn new(api: &'static ffi::Api, what: &'static str) -> Result<Self> {
        // SAFETY: no arguments; NULL means out of memory.
        let op = unsafe { (api.rados.rados_create_read_op)() };
        if op.is_null() {
            return Err(Error::invalid(what, "rados_create_read_op returned NULL"));
        }
        Ok(Self { api, op })
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_read_op and released once.
        unsafe { (self.api.rados.rados_release_read_op)(self.op) };
    }
}

/// The omap iterator a read op fills, closed on drop. librados allocates
/// it when the read is *built* (not when it runs), so it is closed on
/// every path, including a failed operation.
struct OmapIter {
    api: &'static ffi::Api,
    iter: RadosOmapIterT,
}

impl OmapIter {
    /// Copies every key/value pair out of the iterator.
    fn drain(&self, op: &'static str, into: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        loop {
            let mut key: *mut c_char = std::ptr::null_mut();
            let mut val: *mut c_char = std::ptr::null_mut();
            let (mut key_len, mut val_len) = (0usize, 0usize);
            // SAFETY: a valid iterator and out-pointers.
            let rc = unsafe {
                (self.api.rados.rados_omap_get_next2)(
                    self.iter,
                    &mut key,
                    &mut val,
                    &mut key_len,
                    &mut val_len,
                )
            };
            check(rc, op, || "omap iterator".into())?;
            if key.is_null() {
                return Ok(());
            }
            // SAFETY: librados hands out `key_len`/`val_len` bytes that stay
            // valid until rados_omap_get_end; they are copied here.
            let k = unsafe { std::slice::from_raw_parts(key.cast::<u8>(), key_len) };
            let v = if val.is_null() {
                Vec::new()
            } else {
                unsafe { std::slice::from_raw_parts(val.cast::<u8>(), val_len) }.to_vec()
            };
            into.insert(String::from_utf8_lossy(k).into_owned(), v);
        }
    }
}

impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.iter.is_null() {
            // SAFETY: allocated by librados for this read op; closed once.
            unsafe { (self.api.rados.rados_omap_get_end)(self.iter) };
        }
    }
}

/// Keys as C strings with their lengths, kept alive for the call.
struct Keys {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
    lens: Vec<usize>,
}

fn keys(op: &'static str, keys: &[&str]) -> Result<Keys> {
    let owned = keys
        .iter()
        .map(|k| cstring(op, "omap key", k))
        .collect::<Result<Vec<_>>>()?;
    Ok(Keys {
        ptrs: owned.iter().map(|c| c.as_ptr()).collect(),
        lens: keys.iter().map(|k| k.len()).collect(),
        _owned: owned,
    })
}

impl IoCtx {
    /// `pool/namespace/object`, for errors.
    fn object_target(&self, oid: &str) -> String {
        if self.namespace().is_empty() {
            format!("{}/{oid}", self.pool())
        } else {
            format!("{}/{}/{oid}", self.pool(), self.namespace())
        }
    }

    /// Sets omap keys of object `oid` (creating the object if needed), in
    /// one atomic operation: every key is replaced whole, or none is.
    pub fn omap_set(&self, oid: &str, entries: &[(&str, &[u8])]) -> Result<()> {
        const OP: &str = "rados_write_op_omap_set2";
        let c_oid = cstring(OP, "object name", oid)?;
        let names: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        let k = keys(OP, &names)?;
        let vals: Vec<*const c_char> = entries.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let val_lens: Vec<usize> = entries.iter().map(|(_, v)| v.len()).collect();
        let api = self.api();
        let w = WriteOp::new(api, OP)?;
        // SAFETY: a fresh write op; every array has `entries.len()` elements
        // and outlives the calls (librados copies keys and values).
        let rc = unsafe {
            (api.rados.rados_write_op_create)(
                w.op,
                ffi::LIBRADOS_CREATE_IDEMPOTENT,
                std::ptr::null(),
            );
            (api.rados.rados_write_op_omap_set2)(
                w.op,
                k.ptrs.as_ptr(),
                vals.as_ptr(),
                k.lens.as_ptr(),
                val_lens.as_ptr(),
                entries.len(),
            );
            (api.rados.rados_write_op_operate)(
                w.op,
                self.handle(),
                c_oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        check(rc, OP, || self.object_target(oid)).map(|_| ())
    }

    /// Removes omap keys of object `oid` (keys that are absent are fine).
    /// [`Error::NotFound`] if the object does not exist.
    pub fn omap_remove(&self, oid: &str, keys_: &[&str]) -> Result<()> {
        const OP: &str = "rados_write_op_omap_rm_keys2";
        let c_oid = cstring(OP, "object name", oid)?;
        let k = keys(OP, keys_)?;
        let api = self.api();
        let w = WriteOp::new(api, OP)?;
        // SAFETY: a fresh write op; the key arrays outlive the calls.
        let rc = unsafe {
            (api.rados.rados_write_op_omap_rm_keys2)(
                w.op,
                k.ptrs.as_ptr(),
                k.lens.as_ptr(),
                keys_.len(),
            );
            (api.rados.rados_write_op_operate)(
                w.op,
                self.handle(),
                c_oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        check(rc, OP, || self.object_target(oid)).map(|_| ())
    }

    /// The values of those of `keys` that object `oid` has.
    /// [`Error::NotFound`] if the object does not exist.
    pub fn omap_get(&self, oid: &str, keys_: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        const OP: &str = "rados_read_op_omap_get_vals_by_keys2";
        let c_oid = cstring(OP, "object name", oid)?;
        let k = keys(OP, keys_)?;
        let api = self.api();
        let r = ReadOp::new(api, OP)?;
        let mut it = OmapIter {
            api,
            iter: std::ptr::null_mut(),
        };
        let mut prval: c_int = 0;
        // SAFETY: a fresh read op; the key arrays outlive the calls; the
        // iterator and prval are written when the op completes, before
        // rados_read_op_operate returns, and outlive it.
        let rc = unsafe {
            (api.rados.rados_read_op_omap_get_vals_by_keys2)(
                r.op,
                k.ptrs.as_ptr(),
                keys_.len(),
                k.lens.as_ptr(),
                &mut it.iter,
                &mut prval,
            );
            (api.rados.rados_read_op_operate)(r.op, self.handle(), c_oid.as_ptr(), 0)
        };
        check(rc, OP, || self.object_target(oid))?;
        check(prval, OP, || self.object_target(oid))?;
        let mut out = BTreeMap::new();
        it.drain(OP, &mut out)?;
        Ok(out)
    }

    /// Every key/value pair of object `oid`'s omap, in key order (fetched
    /// in pages). [`Error::NotFound`] if the object does not exist.
    pub fn omap_list(&self, oid: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        const OP: &str = "rados_read_op_omap_get_vals2";
        let c_oid = cstring(OP, "object name", oid)?;
        let api = self.api();
        let mut out = BTreeMap::new();
        let mut after = CString::default();
        loop {
            let r = ReadOp::new(api, OP)?;
            let mut it = OmapIter {
                api,
                iter: std::ptr::null_mut(),
            };
            let mut more: u8 = 0;
            let mut prval: c_int = 0;
            // SAFETY: as in omap_get; `after` and the empty prefix outlive the calls.
            let rc = unsafe {
                (api.rados.rados_read_op_omap_get_vals2)(
                    r.op,
                    after.as_ptr(),
                    c"".as_ptr(),
                    LIST_PAGE,
                    &mut it.iter,
                    &mut more,
                    &mut prval,
                );
                (api.rados.rados_read_op_operate)(r.op, self.handle(), c_oid.as_ptr(), 0)
            };
            check(rc, OP, || self.object_target(oid))?;
            check(prval, OP, || self.object_target(oid))?;
            let before = out.len();
            it.drain(OP, &mut out)?;
            let last = out.keys().next_back().cloned();
            match last {
                Some(last) if more != 0 && out.len() > before => {
                    after = cstring(OP, "omap key", &last)?;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Removes object `oid` (with its omap). [`Error::NotFound`] if absent.
    pub fn remove_object(&self, oid: &str) -> Result<()> {
        const OP: &str = "rados_remove";
        let c_oid = cstring(OP, "object name", oid)?;
        // SAFETY: valid ioctx and string.
        let rc = unsafe { (self.api().rados.rados_remove)(self.handle(), c_oid.as_ptr()) };
        check(rc, OP, || self.object_target(oid)).map(|_| ())
    }
}
