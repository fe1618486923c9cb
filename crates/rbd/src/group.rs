//! RBD groups (consistency groups) and what a group snapshot leaves on its
//! images: [`IoCtx`] methods to create and remove a group, add and remove
//! images, and take, list and remove group snapshots; [`Image`] methods to
//! tell a snapshot's namespace (user, group, trash), read an image at any
//! snapshot by id, and list the extents that changed since a snapshot.
//!
//! A group snapshot (`rbd_group_snap_create`) acquires the exclusive lock
//! of every member, so no member is written while the per-image snapshots
//! are cut: they are crash-consistent with each other. Those per-image
//! snapshots live in the *group* snapshot namespace (`.group.<...>`), and
//! Ceph 16.2's C API can neither clone from one (clones take a user
//! snapshot name; cloning by snapshot id came later) nor rename one. They
//! can be read, though: open the image, [`Image::set_snap_by_id`], read.
//!
//! Quirk: a member whose exclusive lock a client holds explicitly
//! (`rbd_lock_acquire`, as haina's FUSE server does) refuses to hand it
//! over, and the group snapshot fails with EROFS ([`Error::errno`] 30).

use std::ffi::{c_int, c_void};

use crate::cluster::cstring;
use crate::error::{ERANGE, Result, check};
use crate::ffi::{self, RbdGroupImageInfo, RbdGroupSnapInfo, RbdSnapGroupNamespace};
use crate::image::Image;
use crate::ioctx::{IoCtx, fill_array, image_target, opt_cstr};

/// EROFS: a member's lock holder refused to release it.
pub const EROFS: i32 = 30;

/// A snapshot of a group ([`IoCtx::group_snap_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnap {
    pub name: String,
    /// Every member's snapshot was cut (an interrupted create leaves an
    /// incomplete one, which only removal can deal with).
    pub complete: bool,
}

/// Which namespace a snapshot of an image is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapNamespace {
    /// An ordinary snapshot, made by name.
    User,
    /// A member's part of a group snapshot.
    Group {
        group_pool: i64,
        group: String,
        group_snap: String,
    },
    /// A removed snapshot that clones (v2) still need.
    Trash,
    /// Mirroring and anything newer.
    Other,
}

impl IoCtx {
    fn group_target(&self, group: &str) -> String {
        format!("group {}", image_target(self, group))
    }

    /// Creates a group in this context's pool and namespace.
    /// [`crate::Error::AlreadyExists`] if it exists.
    pub fn group_create(&self, group: &str) -> Result<()> {
        const OP: &str = "rbd_group_create";
        let c = cstring(OP, "group name", group)?;
        // SAFETY: valid ioctx and string.
        let rc = unsafe { (self.api().rbd.rbd_group_create)(self.handle(), c.as_ptr()) };
        check(rc, OP, || self.group_target(group)).map(|_| ())
    }

    /// Removes a group with its snapshots (the members' group-namespace
    /// snapshots go too) and its image links. Idempotent: a missing group
    /// is not an error.
    pub fn group_remove(&self, group: &str) -> Result<()> {
        const OP: &str = "rbd_group_remove";
        let c = cstring(OP, "group name", group)?;
        // SAFETY: valid ioctx and string.
        let rc = unsafe { (self.api().rbd.rbd_group_remove)(self.handle(), c.as_ptr()) };
        match check(rc, OP, || self.group_target(group)) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Names of the groups in this context's pool and namespace.
    pub fn group_list(&self) -> Result<Vec<String>> {
        const OP: &str = "rbd_group_list";
        let mut cap = 1024usize;
        loop {
            // Never NULL: librbd refuses a NULL buffer even for no groups.
            let mut buf = vec![0u8; cap];
            let mut n = cap;
            // SAFETY: a buffer of `n` bytes.
            let rc = unsafe {
                (self.api().rbd.rbd_group_list)(self.handle(), buf.as_mut_ptr().cast(), &mut n)
            };
            if rc == -ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            let used = usize::try_from(check(rc, OP, || format!("pool {}", self.pool()))?)
                .unwrap_or(0)
                .min(buf.len());
            return Ok(buf[..used]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }

    /// Adds the image `image` (of this pool and namespace) to `group`.
    pub fn group_image_add(&self, group: &str, image: &str) -> Result<()> {
        self.group_image_op("rbd_group_image_add", group, image, true)
    }

    /// Removes the image `image` from `group`.
    pub fn group_image_remove(&self, group: &str, image: &str) -> Result<()> {
        self.group_image_op("rbd_group_image_remove", group, image, false)
    }

    fn group_image_op(&self, op: &'static str, group: &str, image: &str, add: bool) -> Result<()> {
        let g = cstring(op, "group name", group)?;
        let i = cstring(op, "image name", image)?;
        let api = self.api();
        let f = if add {
            api.rbd.rbd_group_image_add
        } else {
            api.rbd.rbd_group_image_remove
        };
        // SAFETY: valid ioctxs and strings.
        let rc = unsafe { f(self.handle(), g.as_ptr(), self.handle(), i.as_ptr()) };
        check(rc, op, || {
            format!("{} image {image}", self.group_target(group))
        })
        .map(|_| ())
    }

    /// Names of the images attached to `group` (links still being made or
    /// undone are left out). librbd 16 lists a missing group as empty.
    pub fn group_image_list(&self, group: &str) -> Result<Vec<String>> {
        const OP: &str = "rbd_group_image_list";
        let c = cstring(OP, "group name", group)?;
        let api = self.api();
        let size = std::mem::size_of::<RbdGroupImageInfo>();
        // SAFETY: librbd fills up to `n` entries of `size` bytes.
        let (rc, mut buf) = unsafe {
            fill_array::<RbdGroupImageInfo>(16, |p, n| {
                (api.rbd.rbd_group_image_list)(self.handle(), c.as_ptr(), p, size, n)
            })
        };
        check(rc, OP, || self.group_target(group))?;
        let out = buf
            .iter()
            .filter(|e| e.state == ffi::RBD_GROUP_IMAGE_STATE_ATTACHED)
            // SAFETY: librbd-allocated strings.
            .map(|e| unsafe { opt_cstr(e.name) })
            .collect();
        // SAFETY: frees what librbd allocated in those entries.
        unsafe { (api.rbd.rbd_group_image_list_cleanup)(buf.as_mut_ptr(), size, buf.len()) };
        Ok(out)
    }

    /// Takes a group snapshot: every member's exclusive lock is acquired,
    /// then each member is snapshotted (in the group namespace), so the
    /// members are crash-consistent with each other. Fails with EROFS when
    /// a member's lock holder will not release it.
    pub fn group_snap_create(&self, group: &str, snap: &str) -> Result<()> {
        self.group_snap_op("rbd_group_snap_create", group, snap, true)
    }

    /// Removes a group snapshot and its members' snapshots.
    pub fn group_snap_remove(&self, group: &str, snap: &str) -> Result<()> {
        self.group_snap_op("rbd_group_snap_remove", group, snap, false)
    }

    fn group_snap_op(&self, op: &'static str, group: &str, snap: &str, create: bool) -> Result<()> {
        let g = cstring(op, "group name", group)?;
        let s = cstring(op, "group snapshot name", snap)?;
        let api = self.api();
        let f = if create {
            api.rbd.rbd_group_snap_create
        } else {
            api.rbd.rbd_group_snap_remove
        };
        // SAFETY: valid ioctx and strings.
        let rc = unsafe { f(self.handle(), g.as_ptr(), s.as_ptr()) };
        check(rc, op, || format!("{}@{snap}", self.group_target(group))).map(|_| ())
    }

    /// The snapshots of `group`. librbd 16 lists a missing group as empty.
    pub fn group_snap_list(&self, group: &str) -> Result<Vec<GroupSnap>> {
        const OP: &str = "rbd_group_snap_list";
        let c = cstring(OP, "group name", group)?;
        let api = self.api();
        let size = std::mem::size_of::<RbdGroupSnapInfo>();
        // SAFETY: librbd fills up to `n` entries of `size` bytes.
        let (rc, mut buf) = unsafe {
            fill_array::<RbdGroupSnapInfo>(8, |p, n| {
                (api.rbd.rbd_group_snap_list)(self.handle(), c.as_ptr(), p, size, n)
            })
        };
        check(rc, OP, || self.group_target(group))?;
        let out = buf
            .iter()
            .map(|e| GroupSnap {
                // SAFETY: librbd-allocated string.
                name: unsafe { opt_cstr(e.name) },
                complete: e.state == ffi::RBD_GROUP_SNAP_STATE_COMPLETE,
            })
            .collect();
        // SAFETY: frees what librbd allocated in those entries.
        unsafe { (api.rbd.rbd_group_snap_list_cleanup)(buf.as_mut_ptr(), size, buf.len()) };
        Ok(out)
    }
}

/// Collects `rbd_diff_iterate2`'s extents into a `Vec<(offset, length, exists)>`.
unsafe extern "C" fn collect_extent(
    off: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `&mut Vec` that `diff_since` passes, alive for the call.
    let v = unsafe { &mut *arg.cast::<Vec<(u64, u64, bool)>>() };
    v.push((off, len as u64, exists != 0));
    0
}

impl Image {
    /// The namespace of the snapshot `snap_id` (see [`Image::snap_list`],
    /// which lists every namespace but the trash).
    pub fn snap_namespace(&self, snap_id: u64) -> Result<SnapNamespace> {
        let api = self.api();
        let mut t: c_int = 0;
        // SAFETY: open handle, out-pointer.
        let rc = unsafe { (api.rbd.rbd_snap_get_namespace_type)(self.handle, snap_id, &mut t) };
        check(rc, "rbd_snap_get_namespace_type", || {
            format!("{} snap id {snap_id}", self.target())
        })?;
        Ok(match t {
            ffi::RBD_SNAP_NAMESPACE_TYPE_USER => SnapNamespace::User,
            ffi::RBD_SNAP_NAMESPACE_TYPE_TRASH => SnapNamespace::Trash,
            ffi::RBD_SNAP_NAMESPACE_TYPE_GROUP => {
                let size = std::mem::size_of::<RbdSnapGroupNamespace>();
                let mut ns = RbdSnapGroupNamespace {
                    group_pool: 0,
                    group_name: std::ptr::null_mut(),
                    group_snap_name: std::ptr::null_mut(),
                };
                // SAFETY: open handle, out struct and its size.
                let rc = unsafe {
                    (api.rbd.rbd_snap_get_group_namespace)(self.handle, snap_id, &mut ns, size)
                };
                check(rc, "rbd_snap_get_group_namespace", || {
                    format!("{} snap id {snap_id}", self.target())
                })?;
                // SAFETY: librbd-allocated strings, freed right after copying.
                let out = unsafe {
                    SnapNamespace::Group {
                        group_pool: ns.group_pool,
                        group: opt_cstr(ns.group_name),
                        group_snap: opt_cstr(ns.group_snap_name),
                    }
                };
                unsafe { (api.rbd.rbd_snap_group_namespace_cleanup)(&mut ns, size) };
                out
            }
            _ => SnapNamespace::Other,
        })
    }

    /// The id and size of this image's part of group snapshot
    /// `group@group_snap`, if it has one.
    pub fn group_snap(&self, group: &str, group_snap: &str) -> Result<Option<(u64, u64)>> {
        for s in self.snap_list()? {
            if let SnapNamespace::Group {
                group: g,
                group_snap: gs,
                ..
            } = self.snap_namespace(s.id)?
                && g == group
                && gs == group_snap
            {
                return Ok(Some((s.id, s.size)));
            }
        }
        Ok(None)
    }

    /// Makes reads of this handle see the snapshot `snap_id` (of any
    /// namespace). Only for a handle of your own, opened read-only.
    pub fn set_snap_by_id(&self, snap_id: u64) -> Result<()> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd.rbd_snap_set_by_id)(self.handle, snap_id) };
        check(rc, "rbd_snap_set_by_id", || {
            format!("{} snap id {snap_id}", self.target())
        })
        .map(|_| ())
    }

    /// The extents that may differ between the user snapshot `from_snap`
    /// (older) and what this handle reads (its head, or the snapshot set
    /// with [`Image::set_snap_by_id`]): `(offset, length, exists)`, where
    /// `exists == false` means the extent reads as zeros now. Exact per
    /// extent (not whole objects), parent data excluded; librbd may report
    /// more than changed, never less.
    pub fn diff_since(&self, from_snap: &str, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        const OP: &str = "rbd_diff_iterate2";
        let c = cstring(OP, "snapshot name", from_snap)?;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        // SAFETY: open handle, valid string; the callback only touches
        // `out`, which outlives the (synchronous) call.
        let rc = unsafe {
            (self.api().rbd.rbd_diff_iterate2)(
                self.handle,
                c.as_ptr(),
                0,
                len,
                0,
                0,
                collect_extent,
                (&raw mut out).cast(),
            )
        };
        check(rc, OP, || format!("{} since @{from_snap}", self.target()))?;
        Ok(out)
    }
}
