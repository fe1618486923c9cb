//! Error types of haina-rbd: [`LibraryError`] when librados/librbd cannot be
//! loaded, and [`Error`], which names the failed operation and its target
//! (`pool/image@snap`) and decodes Ceph's negative errno return codes into
//! their symbolic names (ENOENT, EEXIST, EBUSY, ...). Errors never contain
//! key material.

use std::fmt;

/// librados/librbd could not be loaded at run time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    #[error("{library} not found: install {package} (apt install {package}) [{detail}]")]
    NotFound {
        library: &'static str,
        package: &'static str,
        detail: String,
    },
    #[error(
        "{library} lacks symbol {symbol} (Ceph too old? Nautilus 14.2 or newer is needed): {detail}"
    )]
    Symbol {
        library: &'static str,
        symbol: &'static str,
        detail: String,
    },
}

/// A failed Ceph operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librados/librbd are not installed (or too old).
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// `-ENOENT`: the pool, image, snapshot or key does not exist.
    #[error("{op} {target}: not found (ENOENT)")]
    NotFound { op: &'static str, target: String },
    /// `-EEXIST`: the image or snapshot already exists.
    #[error("{op} {target}: already exists (EEXIST)")]
    AlreadyExists { op: &'static str, target: String },
    /// `-EBUSY`: e.g. removing an image that is still open (has watchers) or
    /// a snapshot that has children.
    #[error("{op} {target}: busy (EBUSY)")]
    Busy { op: &'static str, target: String },
    /// Any other negative errno from librados/librbd.
    #[error("{op} {target}: {} ({})", errno_name(*.errno), errno_text(*.errno))]
    Ceph {
        op: &'static str,
        target: String,
        /// The positive errno value (Ceph returns `-errno`).
        errno: i32,
    },
    /// The loaded librbd lacks the feature (e.g. client-side encryption
    /// before Pacific 16.2).
    #[error("{op}: not supported by this librbd: {reason}")]
    Unsupported { op: &'static str, reason: String },
    /// A caller-supplied argument cannot be passed to C (e.g. contains NUL)
    /// or a reply could not be understood.
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds the error for a negative return code `rc` of operation `op`.
    pub(crate) fn from_rc(op: &'static str, target: impl Into<String>, rc: i64) -> Self {
        let errno = i32::try_from(rc.unsigned_abs()).unwrap_or(i32::MAX);
        let target = target.into();
        match errno {
            ENOENT => Error::NotFound { op, target },
            EEXIST => Error::AlreadyExists { op, target },
            EBUSY => Error::Busy { op, target },
            _ => Error::Ceph { op, target, errno },
        }
    }

    pub(crate) fn invalid(op: &'static str, reason: impl fmt::Display) -> Self {
        Error::Invalid {
            op,
            reason: reason.to_string(),
        }
    }

    /// The positive errno behind this error, if it came from Ceph.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NotFound { .. } => Some(ENOENT),
            Error::AlreadyExists { .. } => Some(EEXIST),
            Error::Busy { .. } => Some(EBUSY),
            Error::Ceph { errno, .. } => Some(*errno),
            Error::Library(_) | Error::Invalid { .. } | Error::Unsupported { .. } => None,
        }
    }

    /// The symbolic errno name ("ENOENT", ...), if it came from Ceph.
    pub fn errno_name(&self) -> Option<&'static str> {
        self.errno().map(errno_name)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// The operation that failed ("rbd_create4", "connect", ...).
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Error::NotFound { op, .. }
            | Error::AlreadyExists { op, .. }
            | Error::Busy { op, .. }
            | Error::Ceph { op, .. }
            | Error::Invalid { op, .. }
            | Error::Unsupported { op, .. } => Some(op),
            Error::Library(_) => None,
        }
    }
}

/// Turns a C return code into `Ok(rc)` or the decoded error.
pub(crate) fn check(rc: i32, op: &'static str, target: impl FnOnce() -> String) -> Result<i32> {
    if rc < 0 {
        Err(Error::from_rc(op, target(), i64::from(rc)))
    } else {
        Ok(rc)
    }
}

pub(crate) const EPERM: i32 = 1;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const EBUSY: i32 = 16;
pub(crate) const ERANGE: i32 = 34;

/// The symbolic name of a (positive) Linux errno, e.g. 2 → "ENOENT".
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        18 => "EXDEV",
        19 => "ENODEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        25 => "ENOTTY",
        27 => "EFBIG",
        28 => "ENOSPC",
        29 => "ESPIPE",
        30 => "EROFS",
        31 => "EMLINK",
        32 => "EPIPE",
        33 => "EDOM",
        ERANGE => "ERANGE",
        35 => "EDEADLK",
        36 => "ENAMETOOLONG",
        37 => "ENOLCK",
        38 => "ENOSYS",
        39 => "ENOTEMPTY",
        40 => "ELOOP",
        42 => "ENOMSG",
        61 => "ENODATA",
        62 => "ETIME",
        71 => "EPROTO",
        74 => "EBADMSG",
        75 => "EOVERFLOW",
        85 => "ERESTART",
        95 => "EOPNOTSUPP",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        107 => "ENOTCONN",
        // Ceph's EBLOCKLISTED is ESHUTDOWN.
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        114 => "EALREADY",
        115 => "EINPROGRESS",
        116 => "ESTALE",
        122 => "EDQUOT",
        125 => "ECANCELED",
        126 => "ENOKEY",
        127 => "EKEYEXPIRED",
        128 => "EKEYREVOKED",
        129 => "EKEYREJECTED",
        _ => "EUNKNOWN",
    }
}

/// The C library's description of an errno ("No such file or directory").
fn errno_text(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; the errno name is printed already.
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_errno() {
        let e = Error::from_rc("rbd_remove", "haina/x", -2);
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "rbd_remove haina/x: not found (ENOENT)");
        let e = Error::from_rc("rbd_open", "haina/x", -110);
        assert_eq!(e.errno_name(), Some("ETIMEDOUT"));
        assert_eq!(
            e.to_string(),
            "rbd_open haina/x: ETIMEDOUT (Connection timed out)"
        );
        assert!(Error::from_rc("rbd_remove", "p/i", -16).is_busy());
        assert!(Error::from_rc("rbd_create4", "p/i", -17).is_already_exists());
    }

    #[test]
    fn library_error_says_what_to_install() {
        let e = LibraryError::NotFound {
            library: "librbd.so.1",
            package: "librbd1",
            detail: "cannot open shared object file".into(),
        };
        assert!(
            e.to_string()
                .starts_with("librbd.so.1 not found: install librbd1 (apt install librbd1)")
        );
    }
}
