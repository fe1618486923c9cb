//! haina-sys: the node-side system layer. Everything here is synchronous and
//! blocking (async callers use `spawn_blocking`), reads the kernel's own
//! state instead of keeping records, and returns typed errors that name the
//! path, device or command involved.
//!
//! Layout:
//! - [`blockdev`]: what a block device is (loop backing file, krbd image), from sysfs.
//! - [`deadline`]: deadlines for host calls that can stall (helper thread + registry).
//! - [`exec`]: the one subprocess helper ([`exec::Cmd`]) with timeouts.
//! - [`loopdev`]: loop devices via `/dev/loop-control` ioctls and sysfs.
//! - [`mountinfo`]: parser for `/proc/self/mountinfo`.
//! - [`mount`]: `mount(2)`/`umount2(2)` wrappers and mount-option parsing.
//! - [`fs`]: probe (blkid), mkfs, grow, statvfs, freeze/thaw, device size.
//! - [`superblock`]: an ext4/xfs superblock's size, UUID and "pristine" state.
//! - [`throttle`]: block-layer I/O limits of a device (cgroup v1 blkio, v2 io.max).
//! - [`host`]: the [`host::Host`] trait every node operation goes through,
//!   and [`host::RealHost`], the kernel with a deadline on every call.
//! - [`fake`]: [`fake::FakeHost`], an in-memory kernel for unit tests that
//!   records one ordered list of calls and can fail or hang any of them.

pub mod blockdev;
pub mod deadline;
pub mod exec;
pub mod fake;
pub mod fs;
pub mod host;
mod ioctl;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod superblock;
pub mod throttle;

pub use rustix::io::Errno;
pub use rustix::mount::MountFlags;

/// Whether we run with root's effective uid (needed for loop devices,
/// mounts and freeze); real-device tests skip themselves otherwise.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
