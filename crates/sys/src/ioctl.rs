//! One raw `ioctl(2)` entry point for the few block-layer requests this crate
//! makes (loop control, FIFREEZE/FITHAW, BLKGETSIZE64). rustix's typed
//! patterns cannot hand back the syscall's return value, which
//! LOOP_CTL_GET_FREE uses to report the free index, so we implement its
//! `Ioctl` trait once here and keep every call site a one-liner.

use std::ffi::{c_int, c_void};
use std::os::fd::AsFd;

use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

/// Requests whose argument is a plain integer (or ignored): safe to issue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IntOp {
    /// Returns the index of a free loop device (allocating one if needed).
    LoopCtlGetFree,
    LoopClrFd,
    LoopSetCapacity,
    FiFreeze,
    FiThaw,
}

impl IntOp {
    fn code(self) -> Opcode {
        match self {
            IntOp::LoopCtlGetFree => 0x4C82,
            IntOp::LoopClrFd => 0x4C01,
            IntOp::LoopSetCapacity => 0x4C07,
            IntOp::FiFreeze => opcode::read_write::<c_int>(b'X', 119),
            IntOp::FiThaw => opcode::read_write::<c_int>(b'X', 120),
        }
    }
}

/// LOOP_SET_STATUS64 / LOOP_GET_STATUS64: argument is `*loop_info64`.
pub(crate) const LOOP_SET_STATUS64: Opcode = 0x4C04;
pub(crate) const LOOP_GET_STATUS64: Opcode = 0x4C05;
/// LOOP_CONFIGURE: argument is `*const loop_config` (linux/loop.h, 5.8+).
pub(crate) const LOOP_CONFIGURE: Opcode = 0x4C0A;
/// BLKGETSIZE64: argument is `*mut u64`, filled with the size in bytes.
pub(crate) const BLKGETSIZE64: Opcode = opcode::read::<usize>(0x12, 114);

struct Raw {
    op: Opcode,
    arg: *mut c_void,
}

// SAFETY: callers of `raw` promise that `arg` is what `op` expects.
unsafe impl Ioctl for Raw {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.op
    }
    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }
    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// `ioctl(fd, op, arg)`, returning the syscall's non-negative result.
///
/// # Safety
/// `arg` must be the pointer the kernel expects for `op`, and its pointee
/// must stay valid (and writable if the kernel writes) for the call.
pub(crate) unsafe fn with_ptr(fd: impl AsFd, op: Opcode, arg: *mut c_void) -> Result<i32, Errno> {
    unsafe { rustix::ioctl::ioctl(fd, Raw { op, arg }) }
}

/// `ioctl(fd, op, value)` for requests that never dereference their argument.
pub(crate) fn with_int(fd: impl AsFd, op: IntOp, value: usize) -> Result<i32, Errno> {
    // SAFETY: `IntOp` lists only requests whose argument is not a pointer.
    unsafe { with_ptr(fd, op.code(), value as *mut c_void) }
}
