//! haina-rbd: a small, safe, blocking wrapper over Ceph's librados/librbd C
//! API, written by hand (no bindgen) and loaded at run time with
//! `libloading`, so haina builds and runs its local pools on machines
//! without Ceph libraries; an RBD operation there fails with
//! [`LibraryError`] saying which package to install.
//!
//! ```no_run
//! use haina_rbd::{Cluster, ConnectOpts, Features, Secret};
//! let cluster = Cluster::connect(&ConnectOpts::new("127.0.0.1:3300", "haina", Secret::new("AQ...")))?;
//! let io = cluster.ioctx("haina")?;
//! io.create_image("vol-1", 1 << 30, Features::LAYERING | Features::EXCLUSIVE_LOCK)?;
//! let img = io.open("vol-1")?;
//! img.metadata_set("haina.io/owner", "pvc-123")?;
//! # Ok::<(), haina_rbd::Error>(())
//! ```
//!
//! Ownership: a [`Cluster`] (one `rados_t`) is kept open and shared; each
//! [`IoCtx`] and [`Image`] holds a reference to it, so handles can be
//! stored freely and the connection closes when the last one is dropped.
//! All three are `Send + Sync`. Keys and encryption passphrases travel as
//! [`Secret`] (zeroed on drop) and are only ever handed to librados/librbd
//! in memory.
//!
//! Besides images, an [`IoCtx`] reads and writes plain RADOS objects' omaps
//! (`omap_set`, `omap_get`, `omap_list`, `omap_remove`), where haina keeps
//! small registries such as a pool's nodes.

mod cluster;
mod encryption;
mod error;
mod ffi;
mod group;
mod image;
mod ioctx;
mod object;
mod secret;

pub use cluster::{Cluster, ConnectOpts, LibraryVersions, PoolStats, library_versions};
pub use encryption::{EncryptionAlgorithm, EncryptionFormat, LUKS_MAGIC, detect_format};
pub use error::{Error, LibraryError, Result, errno_name};
pub use group::{EROFS, GroupSnap, SnapNamespace};
pub use image::{Image, ImageStat, LockMode, LockOwners, ParentInfo, SnapInfo, Watcher};
pub use ioctx::{CreateOptions, Features, ImageSpec, IoCtx};
pub use secret::Secret;
