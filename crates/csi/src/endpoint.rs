//! Unix-socket endpoints: the only transport CSI plugins use in practice.
//!
//! Kubelet and the sidecars connect to `unix:///path/csi.sock`. A plugin that
//! restarts finds its old socket file still on disk; binding would fail with
//! `EADDRINUSE`, so [`bind`] removes a *stale* socket (one nobody answers on)
//! and refuses to steal a live one. The socket is made mode 0600: the CSI API
//! can mount anything anywhere, so only root may talk to it.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

/// A parsed CSI endpoint. Only unix sockets are supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    path: PathBuf,
}

/// Why an endpoint could not be parsed, bound or dialled.
#[derive(Debug)]
pub enum EndpointError {
    /// The endpoint string is not `unix:///absolute/path` (or an absolute path).
    Invalid(String),
    /// Another process is serving on this socket.
    InUse(PathBuf),
    /// A non-socket file sits where the socket should be.
    NotASocket(PathBuf),
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Transport(tonic::transport::Error),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(s) => write!(
                f,
                "endpoint {s:?} is not a unix socket: use unix:///absolute/path.sock"
            ),
            Self::InUse(p) => write!(f, "socket {} is in use by a running process", p.display()),
            Self::NotASocket(p) => write!(
                f,
                "{} exists and is not a socket; refusing to remove it",
                p.display()
            ),
            Self::Io { what, path, source } => write!(f, "{what} {}: {source}", path.display()),
            Self::Transport(e) => write!(f, "grpc transport: {e}"),
        }
    }
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl Endpoint {
    /// Parses `unix:///abs/path`, `unix:/abs/path` or a bare absolute path.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let rest = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
            .unwrap_or(s);
        if !rest.starts_with('/') || rest.contains('\0') || rest.len() > 107 {
            return Err(EndpointError::Invalid(s.to_string()));
        }
        Ok(Self {
            path: PathBuf::from(rest),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds the socket: removes a stale one, creates the parent directory,
    /// and sets mode 0600. Returns a stream ready for `serve_with_incoming`.
    pub async fn bind(&self) -> Result<UnixListenerStream, EndpointError> {
        let path = &self.path;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(EndpointError::InUse(path.clone()));
                }
                std::fs::remove_file(path).map_err(|source| EndpointError::Io {
                    what: "removing stale socket",
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(_) => return Err(EndpointError::NotASocket(path.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EndpointError::Io {
                    what: "inspecting",
                    path: path.clone(),
                    source,
                });
            }
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| EndpointError::Io {
                what: "creating socket directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| EndpointError::Io {
            what: "binding",
            path: path.clone(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| EndpointError::Io {
                what: "chmod 0600",
                path: path.clone(),
                source,
            },
        )?;
        Ok(UnixListenerStream::new(listener))
    }

    /// Dials a plugin on this socket and returns a channel for any CSI client.
    pub async fn connect(&self) -> Result<Channel, EndpointError> {
        let path = self.path.clone();
        // The URI is ignored by the connector below; tonic only needs a valid one.
        TonicEndpoint::from_static("http://csi.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(EndpointError::Transport)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_forms() {
        for s in [
            "unix:///run/csi.sock",
            "unix:/run/csi.sock",
            "/run/csi.sock",
        ] {
            assert_eq!(
                Endpoint::parse(s).unwrap().path(),
                Path::new("/run/csi.sock"),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_non_unix_and_relative() {
        for s in [
            "tcp://127.0.0.1:10000",
            "unix://relative.sock",
            "csi.sock",
            "",
            "unix:///a\0b",
        ] {
            assert!(
                matches!(Endpoint::parse(s), Err(EndpointError::Invalid(_))),
                "{s:?}"
            );
        }
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_sets_0600() {
        let dir = std::env::temp_dir().join(format!("haina-csi-ep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ep = Endpoint::parse(dir.join("s/csi.sock").to_str().unwrap()).unwrap();
        let first = ep.bind().await.unwrap();
        // A live listener is not stolen.
        assert!(matches!(ep.bind().await, Err(EndpointError::InUse(_))));
        drop(first);
        // The socket file survives the listener: it is now stale and gets replaced.
        assert!(ep.path().exists());
        let _second = ep.bind().await.unwrap();
        let mode = std::fs::metadata(ep.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A regular file is never removed.
        let f = dir.join("file.sock");
        std::fs::write(&f, b"x").unwrap();
        let ep2 = Endpoint::parse(f.to_str().unwrap()).unwrap();
        assert!(matches!(
            ep2.bind().await,
            Err(EndpointError::NotASocket(_))
        ));
        assert!(f.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
