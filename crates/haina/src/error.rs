//! The driver's one error type, and its one conversion into a gRPC status.
//!
//! A variant exists for each CSI outcome a CO or sidecar acts on (the
//! error-code tables of the CSI spec). Everything else is `Internal`, with
//! the context that names what failed and the underlying source. Codes are
//! chosen in [`From<Error> for tonic::Status`] and nowhere else.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    InvalidArgument(String),
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    OutOfRange(String),
    ResourceExhausted(String),
    /// Another operation on the same object is in flight; the CO retries.
    Aborted(String),
    /// A host call did not return within its deadline: the volume's data
    /// path is hung. The CO retries; a retried NodeUnstageVolume forces.
    Stalled(String),
    Unimplemented(String),
    /// A backend the call needs cannot be reached right now (e.g. no Ceph
    /// monitor answers); the CO retries.
    Unavailable(String),
    /// The credentials the call carries (or the pool's configured ones) were
    /// refused; retrying with the same ones cannot help.
    Unauthenticated(String),
    Internal {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps any error as `Internal`, with a sentence saying what was being done.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Adds context in front of the message, keeping the variant (and so the code).
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Self::InvalidArgument(m) => Self::InvalidArgument(format!("{what}: {m}")),
            Self::NotFound(m) => Self::NotFound(format!("{what}: {m}")),
            Self::AlreadyExists(m) => Self::AlreadyExists(format!("{what}: {m}")),
            Self::FailedPrecondition(m) => Self::FailedPrecondition(format!("{what}: {m}")),
            Self::OutOfRange(m) => Self::OutOfRange(format!("{what}: {m}")),
            Self::ResourceExhausted(m) => Self::ResourceExhausted(format!("{what}: {m}")),
            Self::Aborted(m) => Self::Aborted(format!("{what}: {m}")),
            Self::Stalled(m) => Self::Stalled(format!("{what}: {m}")),
            Self::Unimplemented(m) => Self::Unimplemented(format!("{what}: {m}")),
            Self::Unavailable(m) => Self::Unavailable(format!("{what}: {m}")),
            Self::Unauthenticated(m) => Self::Unauthenticated(format!("{what}: {m}")),
            Self::Internal { context, source } => Self::Internal {
                context: format!("{what}: {context}"),
                source,
            },
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::OutOfRange(_) => tonic::Code::OutOfRange,
            Self::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Self::Aborted(_) => tonic::Code::Aborted,
            Self::Stalled(_) => tonic::Code::DeadlineExceeded,
            Self::Unimplemented(_) => tonic::Code::Unimplemented,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::Internal { .. } => tonic::Code::Internal,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::AlreadyExists(m)
            | Self::FailedPrecondition(m)
            | Self::OutOfRange(m)
            | Self::ResourceExhausted(m)
            | Self::Aborted(m)
            | Self::Stalled(m)
            | Self::Unimplemented(m)
            | Self::Unavailable(m)
            | Self::Unauthenticated(m) => f.write_str(m),
            Self::Internal { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Internal { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// The longest status message sent. gRPC carries the message in a header
/// (percent-encoded, so up to three times longer on the wire), and a header
/// block over the peer's limit (16 KiB by default) turns the reply into a
/// protocol error: the client would never see the code.
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// `m` cut to [`MAX_STATUS_MESSAGE`] bytes on a character boundary, saying
/// how much was cut.
fn bounded(mut m: String) -> String {
    if m.len() <= MAX_STATUS_MESSAGE {
        return m;
    }
    let mut end = MAX_STATUS_MESSAGE - 40;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    let cut = m.len() - end;
    m.truncate(end);
    m.push_str(&format!("… ({cut} more bytes)"));
    m
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        // Messages echo client input only through `ids::echo`; this is the
        // safety net for everything else (tool output, nested contexts).
        tonic::Status::new(e.code(), bounded(e.to_string()))
    }
}

impl From<haina_sys::exec::ExecError> for Error {
    fn from(e: haina_sys::exec::ExecError) -> Self {
        match e {
            // A missing tool is a property of the node, not a bug: say which one.
            haina_sys::exec::ExecError::NotFound { .. } => Self::FailedPrecondition(e.to_string()),
            other => Self::internal("running a system tool", other),
        }
    }
}

impl From<haina_sys::host::HostError> for Error {
    fn from(e: haina_sys::host::HostError) -> Self {
        use haina_sys::host::HostError as H;
        use haina_sys::loopdev::LoopError;
        match e {
            H::Stalled(s) => Self::Stalled(s.to_string()),
            H::Exec(x) => Self::from(x),
            H::Loop(LoopError::NoFreeDevice { .. } | LoopError::NoDeviceLeft { .. }) => {
                Self::ResourceExhausted(e.to_string())
            }
            other => Self::internal("host call", other),
        }
    }
}

/// `bail!(Variant, "fmt", args..)` returns early with a formatted error.
#[macro_export]
macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$variant(format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_context() {
        let e = Error::NotFound("volume v".into()).context("DeleteSnapshot");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.to_string(), "DeleteSnapshot: volume v");
        let s: tonic::Status =
            Error::internal("writing /x", std::io::Error::other("disk on fire")).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "writing /x: disk on fire");
    }

    #[test]
    fn status_messages_are_bounded() {
        let long = format!("node_id {} is bad", "é".repeat(20_000));
        let s: tonic::Status = Error::InvalidArgument(long).into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            s.message().len()
        );
        assert!(s.message().starts_with("node_id éé"));
        assert!(s.message().ends_with("more bytes)"), "{}", s.message());
        let short: tonic::Status = Error::NotFound("x".into()).into();
        assert_eq!(short.message(), "x");
    }
}
