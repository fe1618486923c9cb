//! Raw C ABI of librados/librbd and its run-time loading: the opaque handle
//! types, the `#[repr(C)]` structs and constants copied by hand from Ceph's
//! `rados/librados.h` and `rbd/librbd.h` (stable since Nautilus), and the
//! function table resolved with `libloading` from `librados.so.2` and
//! `librbd.so.1` the first time any Ceph call is made. Nothing here is safe
//! to call directly; the other modules wrap it.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::LibraryError;

pub(crate) type RadosT = *mut c_void;
pub(crate) type RadosIoctxT = *mut c_void;
pub(crate) type RbdImageT = *mut c_void;
pub(crate) type RbdImageOptionsT = *mut c_void;
pub(crate) type RadosWriteOpT = *mut c_void;
pub(crate) type RadosReadOpT = *mut c_void;
pub(crate) type RadosOmapIterT = *mut c_void;

/// `LIBRADOS_CREATE_IDEMPOTENT` for `rados_write_op_create`.
pub(crate) const LIBRADOS_CREATE_IDEMPOTENT: c_int = 0;

/// `struct rados_pool_stat_t`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RadosPoolStat {
    pub num_bytes: u64,
    pub num_kb: u64,
    pub num_objects: u64,
    pub num_object_clones: u64,
    pub num_object_copies: u64,
    pub num_objects_missing_on_primary: u64,
    pub num_objects_unfound: u64,
    pub num_objects_degraded: u64,
    pub num_rd: u64,
    pub num_rd_kb: u64,
    pub num_wr: u64,
    pub num_wr_kb: u64,
    pub num_user_bytes: u64,
    pub compressed_bytes_orig: u64,
    pub compressed_bytes: u64,
    pub compressed_bytes_alloc: u64,
    /// Slack in case a future librados grows the struct (it is filled by
    /// value, without a size argument).
    pub _reserved: [u64; 16],
}

/// `struct rados_cluster_stat_t`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RadosClusterStat {
    pub kb: u64,
    pub kb_used: u64,
    pub kb_avail: u64,
    pub num_objects: u64,
    pub _reserved: [u64; 8],
}

/// `rbd_image_spec_t`.
#[repr(C)]
pub(crate) struct RbdImageSpec {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

/// `rbd_trash_image_info_t`.
#[repr(C)]
pub(crate) struct RbdTrashImageInfo {
    pub id: *mut c_char,
    pub name: *mut c_char,
    /// `rbd_trash_image_source_t` (a C enum).
    pub source: c_int,
    pub deletion_time: i64,
    pub deferment_end_time: i64,
}

/// `rbd_linked_image_spec_t`.
#[repr(C)]
pub(crate) struct RbdLinkedImageSpec {
    pub pool_id: i64,
    pub pool_name: *mut c_char,
    pub pool_namespace: *mut c_char,
    pub image_id: *mut c_char,
    pub image_name: *mut c_char,
    pub trash: bool,
}

/// `rbd_snap_spec_t` (`namespace_type` is a C enum, i.e. an `int`).
#[repr(C)]
pub(crate) struct RbdSnapSpec {
    pub id: u64,
    pub namespace_type: c_int,
    pub name: *mut c_char,
}

/// `rbd_snap_info_t`.
#[repr(C)]
pub(crate) struct RbdSnapInfo {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

/// `rbd_image_watcher_t`.
#[repr(C)]
pub(crate) struct RbdImageWatcher {
    pub addr: *mut c_char,
    pub id: i64,
    pub cookie: u64,
}

/// `rbd_group_image_info_t` (`state` is a C enum).
#[repr(C)]
pub(crate) struct RbdGroupImageInfo {
    pub name: *mut c_char,
    pub pool: i64,
    pub state: c_int,
}

/// `rbd_group_snap_info_t` (`state` is a C enum).
#[repr(C)]
pub(crate) struct RbdGroupSnapInfo {
    pub name: *mut c_char,
    pub state: c_int,
}

/// `rbd_snap_group_namespace_t`.
#[repr(C)]
pub(crate) struct RbdSnapGroupNamespace {
    pub group_pool: i64,
    pub group_name: *mut c_char,
    pub group_snap_name: *mut c_char,
}

/// `rbd_diff_iterate2`'s callback: offset, length, whether data exists, argument.
pub(crate) type RbdDiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

// rbd_snap_namespace_type_t
pub(crate) const RBD_SNAP_NAMESPACE_TYPE_USER: c_int = 0;
pub(crate) const RBD_SNAP_NAMESPACE_TYPE_GROUP: c_int = 1;
pub(crate) const RBD_SNAP_NAMESPACE_TYPE_TRASH: c_int = 2;
// rbd_group_snap_state_t
pub(crate) const RBD_GROUP_SNAP_STATE_COMPLETE: c_int = 1;
// rbd_group_image_state_t
pub(crate) const RBD_GROUP_IMAGE_STATE_ATTACHED: c_int = 0;

pub(crate) const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
pub(crate) const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

/// `rbd_image_info_t`.
#[repr(C)]
pub(crate) struct RbdImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

/// `rbd_encryption_luks1_format_options_t` and
/// `rbd_encryption_luks2_format_options_t` (the same layout; `alg` is an
/// `rbd_encryption_algorithm_t`, a C enum). librbd copies the passphrase
/// during the call.
#[repr(C)]
pub(crate) struct RbdEncryptionLuksOptions {
    pub alg: c_int,
    pub passphrase: *const c_char,
    pub passphrase_size: usize,
}

// rbd_encryption_format_t
pub(crate) const RBD_ENCRYPTION_FORMAT_LUKS1: c_int = 0;
pub(crate) const RBD_ENCRYPTION_FORMAT_LUKS2: c_int = 1;
// rbd_encryption_algorithm_t
pub(crate) const RBD_ENCRYPTION_ALGORITHM_AES128: c_int = 0;
pub(crate) const RBD_ENCRYPTION_ALGORITHM_AES256: c_int = 1;

// rbd_lock_mode_t
pub(crate) const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;
pub(crate) const RBD_LOCK_MODE_SHARED: c_int = 1;

// rbd_image_option_t
pub(crate) const RBD_IMAGE_OPTION_FORMAT: c_int = 0;
pub(crate) const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
pub(crate) const RBD_IMAGE_OPTION_ORDER: c_int = 2;
pub(crate) const RBD_IMAGE_OPTION_DATA_POOL: c_int = 10;
pub(crate) const RBD_IMAGE_OPTION_CLONE_FORMAT: c_int = 12;

/// Declares a table of C functions resolved from one shared library.
macro_rules! fn_table {
    (
        $(#[$meta:meta])*
        $table:ident from $lib:expr => {
            $( fn $name:ident ( $( $arg:ident : $ty:ty ),* $(,)? ) $( -> $ret:ty )? ; )*
        }
    ) => {
        $(#[$meta])*
        pub(crate) struct $table {
            $( pub(crate) $name: unsafe extern "C" fn( $( $ty ),* ) $( -> $ret )?, )*
        }

        impl $table {
            /// # Safety
            /// The declared signatures must match the library's.
            unsafe fn load(lib: &Library) -> Result<Self, LibraryError> {
                Ok(Self {
                    $( $name: {
                        let sym = unsafe {
                            lib.get::<unsafe extern "C" fn( $( $ty ),* ) $( -> $ret )?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        }
                        .map_err(|e| LibraryError::Symbol {
                            library: $lib,
                            symbol: stringify!($name),
                            detail: e.to_string(),
                        })?;
                        *sym
                    }, )*
                })
            }
        }
    };
}

fn_table! {
    /// The librados functions haina uses.
    RadosFns from LIBRADOS => {
        fn rados_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int);
        fn rados_create2(cluster: *mut RadosT, cluster_name: *const c_char, name: *const c_char, flags: u64) -> c_int;
        fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
        fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
        fn rados_connect(cluster: RadosT) -> c_int;
        fn rados_shutdown(cluster: RadosT);
        fn rados_get_instance_id(cluster: RadosT) -> u64;
        fn rados_cluster_fsid(cluster: RadosT, buf: *mut c_char, len: usize) -> c_int;
        fn rados_cluster_stat(cluster: RadosT, result: *mut RadosClusterStat) -> c_int;
        fn rados_ioctx_create(cluster: RadosT, pool_name: *const c_char, ioctx: *mut RadosIoctxT) -> c_int;
        fn rados_ioctx_destroy(io: RadosIoctxT);
        fn rados_ioctx_set_namespace(io: RadosIoctxT, nspace: *const c_char);
        fn rados_ioctx_pool_stat(io: RadosIoctxT, stats: *mut RadosPoolStat) -> c_int;
        fn rados_mon_command(
            cluster: RadosT,
            cmd: *mut *const c_char,
            cmdlen: usize,
            inbuf: *const c_char,
            inbuflen: usize,
            outbuf: *mut *mut c_char,
            outbuflen: *mut usize,
            outs: *mut *mut c_char,
            outslen: *mut usize,
        ) -> c_int;
        fn rados_buffer_free(buf: *mut c_char);
        fn rados_getaddrs(cluster: RadosT, addrs: *mut *mut c_char) -> c_int;
        fn rados_remove(io: RadosIoctxT, oid: *const c_char) -> c_int;
        fn rados_create_write_op() -> RadosWriteOpT;
        fn rados_release_write_op(op: RadosWriteOpT);
        fn rados_write_op_create(op: RadosWriteOpT, exclusive: c_int, category: *const c_char);
        fn rados_write_op_omap_set2(
            op: RadosWriteOpT,
            keys: *const *const c_char,
            vals: *const *const c_char,
            key_lens: *const usize,
            val_lens: *const usize,
            num: usize,
        );
        fn rados_write_op_omap_rm_keys2(
            op: RadosWriteOpT,
            keys: *const *const c_char,
            key_lens: *const usize,
            keys_len: usize,
        );
        fn rados_write_op_operate(op: RadosWriteOpT, io: RadosIoctxT, oid: *const c_char, mtime: *mut i64, flags: c_int) -> c_int;
        fn rados_create_read_op() -> RadosReadOpT;
        fn rados_release_read_op(op: RadosReadOpT);
        fn rados_read_op_omap_get_vals2(
            op: RadosReadOpT,
            start_after: *const c_char,
            filter_prefix: *const c_char,
            max_return: u64,
            iter: *mut RadosOmapIterT,
            pmore: *mut u8,
            prval: *mut c_int,
        );
        fn rados_read_op_omap_get_vals_by_keys2(
            op: RadosReadOpT,
            keys: *const *const c_char,
            num_keys: usize,
            key_lens: *const usize,
            iter: *mut RadosOmapIterT,
            prval: *mut c_int,
        );
        fn rados_read_op_operate(op: RadosReadOpT, io: RadosIoctxT, oid: *const c_char, flags: c_int) -> c_int;
        fn rados_omap_get_next2(
            iter: RadosOmapIterT,
            key: *mut *mut c_char,
            val: *mut *mut c_char,
            key_len: *mut usize,
            val_len: *mut usize,
        ) -> c_int;
        fn rados_omap_get_end(iter: RadosOmapIterT);
    }
}

fn_table! {
    /// The librbd functions haina uses.
    RbdFns from LIBRBD => {
        fn rbd_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int);
        fn rbd_image_options_create(opts: *mut RbdImageOptionsT);
        fn rbd_image_options_destroy(opts: RbdImageOptionsT);
        fn rbd_image_options_set_uint64(opts: RbdImageOptionsT, optname: c_int, optval: u64) -> c_int;
        fn rbd_image_options_set_string(opts: RbdImageOptionsT, optname: c_int, optval: *const c_char) -> c_int;
        fn rbd_create4(io: RadosIoctxT, name: *const c_char, size: u64, opts: RbdImageOptionsT) -> c_int;
        fn rbd_clone3(
            p_ioctx: RadosIoctxT,
            p_name: *const c_char,
            p_snapname: *const c_char,
            c_ioctx: RadosIoctxT,
            c_name: *const c_char,
            c_opts: RbdImageOptionsT,
        ) -> c_int;
        fn rbd_remove(io: RadosIoctxT, name: *const c_char) -> c_int;
        fn rbd_namespace_create(io: RadosIoctxT, name: *const c_char) -> c_int;
        fn rbd_namespace_exists(io: RadosIoctxT, name: *const c_char, exists: *mut bool) -> c_int;
        fn rbd_trash_move(io: RadosIoctxT, name: *const c_char, delay: u64) -> c_int;
        fn rbd_trash_remove(io: RadosIoctxT, id: *const c_char, force: bool) -> c_int;
        fn rbd_trash_list(io: RadosIoctxT, entries: *mut RbdTrashImageInfo, num_entries: *mut usize) -> c_int;
        fn rbd_trash_list_cleanup(entries: *mut RbdTrashImageInfo, num_entries: usize);
        fn rbd_list2(io: RadosIoctxT, images: *mut RbdImageSpec, max_images: *mut usize) -> c_int;
        fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, num_images: usize);
        fn rbd_open(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT, snap_name: *const c_char) -> c_int;
        fn rbd_open_read_only(io: RadosIoctxT, name: *const c_char, image: *mut RbdImageT, snap_name: *const c_char) -> c_int;
        fn rbd_close(image: RbdImageT) -> c_int;
        fn rbd_stat(image: RbdImageT, info: *mut RbdImageInfo, infosize: usize) -> c_int;
        fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
        fn rbd_get_features(image: RbdImageT, features: *mut u64) -> c_int;
        fn rbd_get_id(image: RbdImageT, id: *mut c_char, id_len: usize) -> c_int;
        fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
        fn rbd_metadata_get(image: RbdImageT, key: *const c_char, value: *mut c_char, val_len: *mut usize) -> c_int;
        fn rbd_metadata_set(image: RbdImageT, key: *const c_char, value: *const c_char) -> c_int;
        fn rbd_metadata_remove(image: RbdImageT, key: *const c_char) -> c_int;
        fn rbd_metadata_list(
            image: RbdImageT,
            start: *const c_char,
            max: u64,
            keys: *mut c_char,
            key_len: *mut usize,
            values: *mut c_char,
            vals_len: *mut usize,
        ) -> c_int;
        fn rbd_snap_create(image: RbdImageT, snapname: *const c_char) -> c_int;
        fn rbd_snap_remove(image: RbdImageT, snapname: *const c_char) -> c_int;
        fn rbd_snap_protect(image: RbdImageT, snapname: *const c_char) -> c_int;
        fn rbd_snap_unprotect(image: RbdImageT, snapname: *const c_char) -> c_int;
        fn rbd_snap_is_protected(image: RbdImageT, snapname: *const c_char, is_protected: *mut c_int) -> c_int;
        fn rbd_snap_exists(image: RbdImageT, snapname: *const c_char, exists: *mut bool) -> c_int;
        fn rbd_snap_list(image: RbdImageT, snaps: *mut RbdSnapInfo, max_snaps: *mut c_int) -> c_int;
        fn rbd_snap_list_end(snaps: *mut RbdSnapInfo);
        fn rbd_get_parent(image: RbdImageT, parent_image: *mut RbdLinkedImageSpec, parent_snap: *mut RbdSnapSpec) -> c_int;
        fn rbd_linked_image_spec_cleanup(image: *mut RbdLinkedImageSpec);
        fn rbd_snap_spec_cleanup(snap: *mut RbdSnapSpec);
        fn rbd_flatten(image: RbdImageT) -> c_int;
        fn rbd_watchers_list(image: RbdImageT, watchers: *mut RbdImageWatcher, max_watchers: *mut usize) -> c_int;
        fn rbd_watchers_list_cleanup(watchers: *mut RbdImageWatcher, num_watchers: usize);
        fn rbd_is_exclusive_lock_owner(image: RbdImageT, is_owner: *mut c_int) -> c_int;
        fn rbd_lock_acquire(image: RbdImageT, lock_mode: c_int) -> c_int;
        fn rbd_lock_release(image: RbdImageT) -> c_int;
        fn rbd_lock_break(image: RbdImageT, lock_mode: c_int, lock_owner: *const c_char) -> c_int;
        fn rbd_lock_get_owners(image: RbdImageT, lock_mode: *mut c_int, lock_owners: *mut *mut c_char, max_lock_owners: *mut usize) -> c_int;
        fn rbd_lock_get_owners_cleanup(lock_owners: *mut *mut c_char, lock_owner_count: usize);
        fn rbd_read(image: RbdImageT, ofs: u64, len: usize, buf: *mut c_char) -> isize;
        fn rbd_write(image: RbdImageT, ofs: u64, len: usize, buf: *const c_char) -> isize;
        fn rbd_discard(image: RbdImageT, ofs: u64, len: u64) -> c_int;
        fn rbd_flush(image: RbdImageT) -> c_int;
        // Snapshots of every namespace, and reading an image at one.
        fn rbd_snap_get_namespace_type(image: RbdImageT, snap_id: u64, namespace_type: *mut c_int) -> c_int;
        fn rbd_snap_get_group_namespace(image: RbdImageT, snap_id: u64, group_snap: *mut RbdSnapGroupNamespace, group_snap_size: usize) -> c_int;
        fn rbd_snap_group_namespace_cleanup(group_snap: *mut RbdSnapGroupNamespace, group_snap_size: usize) -> c_int;
        fn rbd_snap_set_by_id(image: RbdImageT, snap_id: u64) -> c_int;
        fn rbd_diff_iterate2(
            image: RbdImageT,
            fromsnapname: *const c_char,
            ofs: u64,
            len: u64,
            include_parent: u8,
            whole_object: u8,
            cb: RbdDiffCallback,
            arg: *mut c_void,
        ) -> c_int;
        // Groups (consistency groups and their snapshots).
        fn rbd_group_create(io: RadosIoctxT, name: *const c_char) -> c_int;
        fn rbd_group_remove(io: RadosIoctxT, name: *const c_char) -> c_int;
        fn rbd_group_list(io: RadosIoctxT, names: *mut c_char, size: *mut usize) -> c_int;
        fn rbd_group_image_add(group_io: RadosIoctxT, group_name: *const c_char, image_io: RadosIoctxT, image_name: *const c_char) -> c_int;
        fn rbd_group_image_remove(group_io: RadosIoctxT, group_name: *const c_char, image_io: RadosIoctxT, image_name: *const c_char) -> c_int;
        fn rbd_group_image_list(group_io: RadosIoctxT, group_name: *const c_char, images: *mut RbdGroupImageInfo, info_size: usize, num_entries: *mut usize) -> c_int;
        fn rbd_group_image_list_cleanup(images: *mut RbdGroupImageInfo, info_size: usize, num_entries: usize) -> c_int;
        fn rbd_group_snap_create(group_io: RadosIoctxT, group_name: *const c_char, snap_name: *const c_char) -> c_int;
        fn rbd_group_snap_remove(group_io: RadosIoctxT, group_name: *const c_char, snap_name: *const c_char) -> c_int;
        fn rbd_group_snap_list(group_io: RadosIoctxT, group_name: *const c_char, snaps: *mut RbdGroupSnapInfo, info_size: usize, num_entries: *mut usize) -> c_int;
        fn rbd_group_snap_list_cleanup(snaps: *mut RbdGroupSnapInfo, info_size: usize, num_entries: usize) -> c_int;
    }
}

fn_table! {
    /// librbd's client-side encryption (Pacific 16.2 and later). Loaded
    /// apart from [`RbdFns`], so that an older librbd still serves
    /// unencrypted images and only encryption says what is missing.
    RbdCryptoFns from LIBRBD => {
        fn rbd_encryption_format(image: RbdImageT, format: c_int, opts: *mut c_void, opts_size: usize) -> c_int;
        fn rbd_encryption_load(image: RbdImageT, format: c_int, opts: *mut c_void, opts_size: usize) -> c_int;
    }
}

pub(crate) const LIBRADOS: &str = "librados.so.2";
pub(crate) const LIBRBD: &str = "librbd.so.1";

/// Both function tables, plus the libraries they point into (kept loaded for
/// the life of the process: the table lives in a `static`).
pub(crate) struct Api {
    pub rados: RadosFns,
    pub rbd: RbdFns,
    /// Missing symbols in a librbd older than Pacific.
    pub crypto: Result<RbdCryptoFns, LibraryError>,
    _librados: Library,
    _librbd: Library,
}

fn open(name: &'static str, package: &'static str) -> Result<Library, LibraryError> {
    // SAFETY: loading librados/librbd runs their (well-behaved) C++ static
    // initialisers and nothing else.
    unsafe { Library::new(name) }.map_err(|e| LibraryError::NotFound {
        library: name,
        package,
        detail: e.to_string(),
    })
}

fn load() -> Result<Api, LibraryError> {
    load_from(LIBRADOS, LIBRBD)
}

fn load_from(rados_name: &'static str, rbd_name: &'static str) -> Result<Api, LibraryError> {
    let librados = open(rados_name, "librados2")?;
    let librbd = open(rbd_name, "librbd1")?;
    // SAFETY: the declarations above are transcribed from the C headers.
    let rados = unsafe { RadosFns::load(&librados) }?;
    let rbd = unsafe { RbdFns::load(&librbd) }?;
    let crypto = unsafe { RbdCryptoFns::load(&librbd) };
    Ok(Api {
        rados,
        rbd,
        crypto,
        _librados: librados,
        _librbd: librbd,
    })
}

static API: OnceLock<Result<Api, LibraryError>> = OnceLock::new();

/// The loaded libraries, loading them on first use. A failure is remembered
/// (the process would have to be restarted after installing librbd1 anyway).
pub(crate) fn api() -> Result<&'static Api, LibraryError> {
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_package() {
        let Err(e) = load_from("libhaina-no-such-rados.so.2", LIBRBD) else {
            panic!("loaded a library that does not exist");
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "libhaina-no-such-rados.so.2 not found: install librados2 (apt install librados2)"
            ),
            "{msg}"
        );
    }
}
