//! The `haina` subcommands other than `serve`, one file each.
//!
//! - [`ctl`]: a CSI client for any CSI endpoint (in the spirit of `csc`);
//! - [`demo`]: the seed's 7-step Kubernetes flow, for real, on this machine;
//! - [`explain`]: the live mount chain of a volume on this node;
//! - [`flexvolume`]: the FlexVolume call convention over the same node code;
//! - [`bench`]: lifecycle benchmarks against the bare kernel work;
//! - [`rbd_fuse`]: the FUSE server that exposes an RBD image as a file
//!   (run detached by the node plugin; not for humans).

pub mod bench;
pub mod ctl;
pub mod demo;
pub mod explain;
pub mod flexvolume;
pub mod rbd_fuse;
