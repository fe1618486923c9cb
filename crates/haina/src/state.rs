//! Crash-safe records: one small JSON file per object.
//!
//! A write goes to a temp file in the same directory, is fsync'ed, renamed
//! over the record, and the directory is fsync'ed, so after `kill -9` or a
//! power cut a record is either the old version or the new one, never a
//! torn mix. Callers change their in-memory view only after [`write`]
//! returns. There is no global state file: objects never contend.
//!
//! A record is a hint about intent (a volume being created, a filesystem
//! being formatted). The kernel's view (mounts, loop devices) is checked
//! separately and always wins.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct StateError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for StateError {}

impl From<StateError> for crate::error::Error {
    /// A full filesystem is RESOURCE_EXHAUSTED (the CO retries once space is
    /// freed); anything else is INTERNAL.
    fn from(e: StateError) -> Self {
        let full = e.source.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(io.raw_os_error(), Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error()
                || c == rustix::io::Errno::DQUOT.raw_os_error())
        });
        if full {
            return crate::error::Error::ResourceExhausted(format!(
                "state record: {e}: the filesystem is full"
            ));
        }
        crate::error::Error::internal("state record", e)
    }
}

fn err(
    op: &'static str,
    path: &Path,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StateError {
    StateError {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// fsyncs a directory so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("fsync dir", dir, e))
}

/// Atomically replaces `path` with `bytes`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path
        .parent()
        .ok_or_else(|| err("write", path, "path has no parent"))?;
    fs::create_dir_all(dir).map_err(|e| err("create dir", dir, e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| err("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| err("write", &tmp, e))?;
        f.sync_all().map_err(|e| err("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| err("rename into place", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically writes `value` as pretty JSON.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| err("encode", path, e))?;
    write_bytes(path, &bytes)
}

/// Reads a record; `Ok(None)` if it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err("decode", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("read", path, e)),
    }
}

/// Removes a record durably; a missing record is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path, e)),
    }
}

/// The names (without extension) of the `*.json` records in `dir`, sorted.
pub fn list(dir: &Path) -> Result<Vec<String>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err("list", dir, e))?;
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json"))
            && !stem.starts_with('.')
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Rec {
        n: u32,
    }

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        assert_eq!(read::<Rec>(&p).unwrap(), None);
        write(&p, &Rec { n: 1 }).unwrap();
        write(&p, &Rec { n: 2 }).unwrap();
        assert_eq!(read::<Rec>(&p).unwrap(), Some(Rec { n: 2 }));
        write(&dir.path().join("sub/b.json"), &Rec { n: 3 }).unwrap();
        fs::write(dir.path().join("sub/.c.json.tmp.1"), b"junk").unwrap();
        assert_eq!(list(&dir.path().join("sub")).unwrap(), vec!["a", "b"]);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(read::<Rec>(&p).unwrap(), None);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_full_filesystem_is_resource_exhausted() {
        let e = err(
            "write",
            Path::new("/pool/x.json"),
            io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        );
        let e = crate::error::Error::from(e);
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("x.json"), "{e}");
        let e = crate::error::Error::from(err("write", Path::new("/x"), io::Error::other("boom")));
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        fs::write(&p, b"{not json").unwrap();
        let e = read::<Rec>(&p).unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
    }
}
