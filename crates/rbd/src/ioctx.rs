//! [`IoCtx`]: an I/O context on one pool (`rados_ioctx_t`) and the RBD
//! operations that act on a pool's image directory: create (with
//! [`Features`]), clone (v2), remove, list, open. Also [`Features`], the
//! RBD image feature bits.

use std::ffi::{CStr, c_char, c_int};
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;

use crate::cluster::{ClusterInner, cstring};
use crate::error::{ERANGE, Result, check};
use crate::ffi::{self, RadosIoctxT, RbdImageOptionsT, RbdImageSpec, RbdTrashImageInfo};

/// `RBD_TRASH_IMAGE_SOURCE_USER`.
const RBD_TRASH_IMAGE_SOURCE_USER: std::ffi::c_int = 0;
use crate::image::Image;

/// RBD image feature bits (`RBD_FEATURE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u64);

impl Features {
    pub const LAYERING: Features = Features(1 << 0);
    pub const STRIPINGV2: Features = Features(1 << 1);
    pub const EXCLUSIVE_LOCK: Features = Features(1 << 2);
    pub const OBJECT_MAP: Features = Features(1 << 3);
    pub const FAST_DIFF: Features = Features(1 << 4);
    pub const DEEP_FLATTEN: Features = Features(1 << 5);
    pub const JOURNALING: Features = Features(1 << 6);
    pub const DATA_POOL: Features = Features(1 << 7);
    pub const OPERATIONS: Features = Features(1 << 8);
    pub const MIGRATING: Features = Features(1 << 9);
    pub const NON_PRIMARY: Features = Features(1 << 10);
    pub const DIRTY_CACHE: Features = Features(1 << 11);
    /// No feature bits: the most compatible format 2 image.
    pub const NONE: Features = Features(0);
    /// librbd's default set: layering, exclusive-lock, object-map,
    /// fast-diff, deep-flatten.
    pub const DEFAULT: Features = Features(1 | 4 | 8 | 16 | 32);

    const NAMES: [(&'static str, Features); 12] = [
        ("layering", Self::LAYERING),
        ("striping", Self::STRIPINGV2),
        ("exclusive-lock", Self::EXCLUSIVE_LOCK),
        ("object-map", Self::OBJECT_MAP),
        ("fast-diff", Self::FAST_DIFF),
        ("deep-flatten", Self::DEEP_FLATTEN),
        ("journaling", Self::JOURNALING),
        ("data-pool", Self::DATA_POOL),
        ("operations", Self::OPERATIONS),
        ("migrating", Self::MIGRATING),
        ("non-primary", Self::NON_PRIMARY),
        ("dirty-cache", Self::DIRTY_CACHE),
    ];

    pub const fn from_bits(bits: u64) -> Features {
        Features(bits)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses a feature name as the `rbd` CLI spells it ("exclusive-lock").
    pub fn from_name(name: &str) -> Option<Features> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// Names of the set bits (unknown bits as `0x...`).
    pub fn names(self) -> Vec<String> {
        let mut rest = self.0;
        let mut v = Vec::new();
        for (n, f) in Self::NAMES {
            if self.contains(f) {
                v.push(n.to_string());
                rest &= !f.0;
            }
        }
        if rest != 0 {
            v.push(format!("{rest:#x}"));
        }
        v
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl BitOrAssign for Features {
    fn bitor_assign(&mut self, rhs: Features) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({})", self.names().join(","))
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// An entry of [`IoCtx::list_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub id: String,
    pub name: String,
}

pub(crate) struct IoCtxInner {
    pub(crate) cluster: Arc<ClusterInner>,
    pub(crate) handle: RadosIoctxT,
    pub(crate) pool: String,
    /// The RADOS namespace every operation of this context works in
    /// (empty: the pool's default namespace). Set once, at creation.
    pub(crate) namespace: String,
}

// SAFETY: a rados_ioctx_t may be used from several threads at once as long as
// its own state (snap context, namespace, locator) is not changed, which this
// crate never does after creation.
unsafe impl Send for IoCtxInner {}
unsafe impl Sync for IoCtxInner {}

impl Drop for IoCtxInner {
    fn drop(&mut self) {
        // SAFETY: last reference; the cluster outlives it (held by Arc).
        unsafe { (self.cluster.api.rados.rados_ioctx_destroy)(self.handle) };
    }
}

/// An I/O context on one pool. Clones share it. Keeps its [`crate::Cluster`]
/// connection alive.
#[derive(Clone)]
pub struct IoCtx {
    pub(crate) inner: Arc<IoCtxInner>,
}

impl fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.inner.pool)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

/// `rbd_image_options_t`, destroyed on drop.
struct ImageOptions {
    api: &'static ffi::Api,
    opts: RbdImageOptionsT,
}

impl ImageOptions {
    fn new(api: &'static ffi::Api) -> Self {
        let mut opts: RbdImageOptionsT = std::ptr::null_mut();
        // SAFETY: out-pointer.
        unsafe { (api.rbd.rbd_image_options_create)(&mut opts) };
        ImageOptions { api, opts }
    }

    fn set_u64(&self, op: &'static str, target: &str, opt: i32, val: u64) -> Result<()> {
        // SAFETY: valid options handle.
        let rc = unsafe { (self.api.rbd.rbd_image_options_set_uint64)(self.opts, opt, val) };
        check(rc, op, || format!("{target} (image option {opt}={val})")).map(|_| ())
    }

    fn set_str(&self, op: &'static str, target: &str, opt: i32, val: &str) -> Result<()> {
        let c = cstring(op, "image option", val)?;
        // SAFETY: valid options handle and string (copied by librbd).
        let rc = unsafe { (self.api.rbd.rbd_image_options_set_string)(self.opts, opt, c.as_ptr()) };
        check(rc, op, || format!("{target} (image option {opt}={val})")).map(|_| ())
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create.
        unsafe { (self.api.rbd.rbd_image_options_destroy)(self.opts) };
    }
}

/// Optional knobs of [`IoCtx::create_image_with`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub features: Features,
    /// Object size as a power of two (22 = 4 MiB, librbd's default).
    pub order: Option<u8>,
    /// Put the image's data objects in another (e.g. erasure-coded) pool.
    pub data_pool: Option<String>,
}

impl IoCtx {
    pub(crate) fn new(cluster: Arc<ClusterInner>, pool: &str, namespace: &str) -> Result<IoCtx> {
        let c_pool = cstring("rados_ioctx_create", "pool", pool)?;
        let c_ns = cstring("rados_ioctx_set_namespace", "namespace", namespace)?;
        let mut handle: RadosIoctxT = std::ptr::null_mut();
        // SAFETY: connected cluster, valid string, out-pointer.
        let rc = unsafe {
            (cluster.api.rados.rados_ioctx_create)(cluster.handle, c_pool.as_ptr(), &mut handle)
        };
        check(rc, "rados_ioctx_create", || format!("pool {pool}"))?;
        if !namespace.is_empty() {
            // SAFETY: a fresh ioctx nobody else uses yet; the string is copied.
            unsafe { (cluster.api.rados.rados_ioctx_set_namespace)(handle, c_ns.as_ptr()) };
        }
        Ok(IoCtx {
            inner: Arc::new(IoCtxInner {
                cluster,
                handle,
                pool: pool.to_string(),
                namespace: namespace.to_string(),
            }),
        })
    }

    /// The RADOS namespace of this context (empty: the default one).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Whether the RBD namespace `name` exists in this pool (call on a
    /// context in the default namespace).
    pub fn namespace_exists(&self, name: &str) -> Result<bool> {
        const OP: &str = "rbd_namespace_exists";
        let c_name = cstring(OP, "namespace", name)?;
        let mut exists = false;
        // SAFETY: valid ioctx, string and out-pointer.
        let rc = unsafe {
            (self.api().rbd.rbd_namespace_exists)(self.handle(), c_name.as_ptr(), &mut exists)
        };
        check(rc, OP, || format!("{}/{name}", self.inner.pool))?;
        Ok(exists)
    }

    /// Creates the RBD namespace `name` in this pool (call on a context in
    /// the default namespace). An existing one gives
    /// [`crate::Error::AlreadyExists`].
    pub fn namespace_create(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd_namespace_create";
        let c_name = cstring(OP, "namespace", name)?;
        // SAFETY: valid ioctx and string.
        let rc = unsafe { (self.api().rbd.rbd_namespace_create)(self.handle(), c_name.as_ptr()) };
        check(rc, OP, || format!("{}/{name}", self.inner.pool)).map(|_| ())
    }

    pub(crate) fn handle(&self) -> RadosIoctxT {
        self.inner.handle
    }

    pub(crate) fn api(&self) -> &'static ffi::Api {
        self.inner.cluster.api
    }

    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    fn spec(&self, image: &str) -> String {
        if self.inner.namespace.is_empty() {
            format!("{}/{image}", self.inner.pool)
        } else {
            format!("{}/{}/{image}", self.inner.pool, self.inner.namespace)
        }
    }

    /// Creates a format 2 image of `size` bytes with the given features.
    /// An existing image of that name gives [`crate::Error::AlreadyExists`].
    pub fn create_image(&self, name: &str, size: u64, features: Features) -> Result<()> {
        self.create_image_with(
            name,
            size,
            &CreateOptions {
                features,
                ..Default::default()
            },
        )
    }

    /// [`IoCtx::create_image`] with an object size and data pool.
    pub fn create_image_with(&self, name: &str, size: u64, opts: &CreateOptions) -> Result<()> {
        const OP: &str = "rbd_create4";
        let target = self.spec(name);
        let c_name = cstring(OP, "image name", name)?;
        let o = ImageOptions::new(self.api());
        o.set_u64(OP, &target, ffi::RBD_IMAGE_OPTION_FORMAT, 2)?;
        o.set_u64(
            OP,
            &target,
            ffi::RBD_IMAGE_OPTION_FEATURES,
            opts.features.bits(),
        )?;
        if let Some(order) = opts.order {
            o.set_u64(OP, &target, ffi::RBD_IMAGE_OPTION_ORDER, u64::from(order))?;
        }
        if let Some(dp) = &opts.data_pool {
            o.set_str(OP, &target, ffi::RBD_IMAGE_OPTION_DATA_POOL, dp)?;
        }
        // SAFETY: valid ioctx, name and options.
        let rc =
            unsafe { (self.api().rbd.rbd_create4)(self.handle(), c_name.as_ptr(), size, o.opts) };
        check(rc, OP, || target).map(|_| ())
    }

    /// Clones `parent_image@parent_snap` (in `parent`'s pool) into a new
    /// image `child_name` in this pool, as a clone v2: the snapshot need not
    /// be protected, and the parent snapshot may be removed while clones
    /// exist (it then moves to the trash namespace).
    pub fn clone_image(
        &self,
        parent: &IoCtx,
        parent_image: &str,
        parent_snap: &str,
        child_name: &str,
        features: Features,
    ) -> Result<()> {
        const OP: &str = "rbd_clone3";
        let target = format!(
            "{}@{parent_snap} -> {}",
            parent.spec(parent_image),
            self.spec(child_name)
        );
        let c_pimg = cstring(OP, "parent image", parent_image)?;
        let c_psnap = cstring(OP, "parent snapshot", parent_snap)?;
        let c_child = cstring(OP, "child image", child_name)?;
        let o = ImageOptions::new(self.api());
        o.set_u64(OP, &target, ffi::RBD_IMAGE_OPTION_FORMAT, 2)?;
        o.set_u64(OP, &target, ffi::RBD_IMAGE_OPTION_FEATURES, features.bits())?;
        o.set_u64(OP, &target, ffi::RBD_IMAGE_OPTION_CLONE_FORMAT, 2)?;
        // SAFETY: valid ioctxs, strings and options.
        let rc = unsafe {
            (self.api().rbd.rbd_clone3)(
                parent.handle(),
                c_pimg.as_ptr(),
                c_psnap.as_ptr(),
                self.handle(),
                c_child.as_ptr(),
                o.opts,
            )
        };
        check(rc, OP, || target).map(|_| ())
    }

    /// Removes an image (and its data). [`crate::Error::NotFound`] if absent,
    /// [`crate::Error::Busy`] if it is open somewhere (has watchers) or has
    /// snapshots with clones; fails with ENOTEMPTY if it has snapshots.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd_remove";
        let c_name = cstring(OP, "image name", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.api().rbd.rbd_remove)(self.handle(), c_name.as_ptr()) };
        check(rc, OP, || self.spec(name)).map(|_| ())
    }

    /// Moves an image to the pool's trash: its name is free at once, and
    /// its data stays until [`trash_remove`](Self::trash_remove). Much
    /// cheaper than [`remove_image`](Self::remove_image), which trashes and
    /// then deletes every object before it returns.
    pub fn trash_move(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd_trash_move";
        let c_name = cstring(OP, "image name", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.api().rbd.rbd_trash_move)(self.handle(), c_name.as_ptr(), 0) };
        check(rc, OP, || self.spec(name)).map(|_| ())
    }

    /// Deletes a trashed image by its ID (see [`Image::id`](crate::Image::id)).
    pub fn trash_remove(&self, id: &str) -> Result<()> {
        const OP: &str = "rbd_trash_remove";
        let c_id = cstring(OP, "image id", id)?;
        // SAFETY: valid ioctx and id.
        let rc = unsafe { (self.api().rbd.rbd_trash_remove)(self.handle(), c_id.as_ptr(), false) };
        check(rc, OP, || format!("{}@trash:{id}", self.inner.pool)).map(|_| ())
    }

    /// The images in the pool's trash that a user moved there (as
    /// [`trash_move`](Self::trash_move) does, not librbd's own bookkeeping):
    /// `(id, name, deletion time in seconds since the epoch)`.
    pub fn trash_list(&self) -> Result<Vec<(String, String, i64)>> {
        const OP: &str = "rbd_trash_list";
        let api = self.api();
        // SAFETY: librbd fills up to `n` entries and says how many.
        let (rc, mut buf) = unsafe {
            fill_array::<RbdTrashImageInfo>(64, |p, n| {
                (api.rbd.rbd_trash_list)(self.handle(), p, n)
            })
        };
        check(rc, OP, || format!("pool {}", self.inner.pool))?;
        let out = buf
            .iter()
            .filter(|e| e.source == RBD_TRASH_IMAGE_SOURCE_USER)
            .map(|e| {
                // SAFETY: librbd-allocated C strings (or null).
                let (id, name) = unsafe { (opt_cstr(e.id), opt_cstr(e.name)) };
                (id, name, e.deletion_time)
            })
            .collect();
        // SAFETY: frees the strings librbd allocated in those entries.
        unsafe { (api.rbd.rbd_trash_list_cleanup)(buf.as_mut_ptr(), buf.len()) };
        Ok(out)
    }

    /// Names of the images in the pool (not in the trash).
    pub fn list_images(&self) -> Result<Vec<String>> {
        Ok(self
            .list_image_specs()?
            .into_iter()
            .map(|s| s.name)
            .collect())
    }

    /// Names and ids of the images in the pool.
    pub fn list_image_specs(&self) -> Result<Vec<ImageSpec>> {
        const OP: &str = "rbd_list2";
        let api = self.api();
        // SAFETY: librbd fills up to `n` entries and says how many.
        let (rc, mut buf) = unsafe {
            fill_array::<RbdImageSpec>(64, |p, n| (api.rbd.rbd_list2)(self.handle(), p, n))
        };
        check(rc, OP, || format!("pool {}", self.inner.pool))?;
        let out = buf
            .iter()
            .map(|s| ImageSpec {
                // SAFETY: librbd-allocated C strings (or null).
                id: unsafe { opt_cstr(s.id) },
                name: unsafe { opt_cstr(s.name) },
            })
            .collect();
        // SAFETY: frees the strings librbd allocated in those entries.
        unsafe { (api.rbd.rbd_image_spec_list_cleanup)(buf.as_mut_ptr(), buf.len()) };
        Ok(out)
    }

    /// Opens an image read-write (at its head).
    pub fn open(&self, name: &str) -> Result<Image> {
        Image::open(self, name, None, false)
    }

    /// Opens an image read-only (at its head).
    pub fn open_read_only(&self, name: &str) -> Result<Image> {
        Image::open(self, name, None, true)
    }

    /// Opens a snapshot of an image, read-only.
    pub fn open_snapshot(&self, name: &str, snap: &str) -> Result<Image> {
        Image::open(self, name, Some(snap), true)
    }

    /// Whether an image of this name exists (opens it read-only).
    pub fn image_exists(&self, name: &str) -> Result<bool> {
        match self.open_read_only(name) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Copies a C string that librados/librbd returned, "" for NULL.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
pub(crate) unsafe fn opt_cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Calls a librbd list function that fills an array of `T` and, when the
/// array is too small, answers -ERANGE with the count it needs in `n`:
/// grows the array until the entries fit. Returns the call's return code
/// and, when it succeeded, the entries it filled (for the caller to read,
/// then hand back to the function's cleanup).
///
/// # Safety
/// `fill(ptr, n)` must write at most `*n` entries at `ptr` and leave in
/// `*n` how many it wrote (or, with -ERANGE, how many it needs).
pub(crate) unsafe fn fill_array<T>(
    mut cap: usize,
    mut fill: impl FnMut(*mut T, &mut usize) -> c_int,
) -> (c_int, Vec<T>) {
    loop {
        let mut buf: Vec<T> = Vec::with_capacity(cap);
        let mut n = cap;
        let rc = fill(buf.as_mut_ptr(), &mut n);
        if rc == -ERANGE {
            cap = n.max(cap * 2);
            continue;
        }
        if rc >= 0 {
            // SAFETY: per the contract above, the first `n` entries are set.
            unsafe { buf.set_len(n.min(cap)) };
        }
        return (rc, buf);
    }
}

/// Builds the pool/image target string used in errors.
pub(crate) fn image_target(io: &IoCtx, image: &str) -> String {
    io.spec(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names() {
        assert_eq!(
            Features::DEFAULT.names(),
            [
                "layering",
                "exclusive-lock",
                "object-map",
                "fast-diff",
                "deep-flatten"
            ]
        );
        assert_eq!(
            Features::from_name("exclusive-lock"),
            Some(Features::EXCLUSIVE_LOCK)
        );
        let f = Features::LAYERING | Features::from_bits(1 << 40);
        assert_eq!(f.to_string(), "layering,0x10000000000");
        assert!(Features::DEFAULT.contains(Features::OBJECT_MAP | Features::LAYERING));
    }
}
