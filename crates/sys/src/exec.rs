//! The one subprocess helper: every external tool (`blkid`, `mkfs.*`,
//! `resize2fs`, `xfs_growfs`, ...) runs through [`Cmd`].
//!
//! It owns three things `std::process` leaves to the caller:
//! - a deadline: a hung tool (e.g. stuck in D state on a dead device) is
//!   killed after [`Cmd::timeout`]. The child runs in its own process group
//!   and the whole group gets SIGKILL, so a grandchild holding our pipes open
//!   cannot wedge us;
//! - exit codes that mean success for some tools (`e2fsck` returns 1 after
//!   fixing errors) via [`Cmd::ok_codes`];
//! - errors that name the full command line, the exit status and stderr.
//!
//! Output is read on helper threads so a chatty tool never blocks on a full
//! pipe. Tools run with `LC_ALL=C` so their messages are stable to match on.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Default deadline for a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest stderr kept in an error, in bytes (the tail is kept).
const MAX_ERR_OUTPUT: usize = 4096;

/// A command to run once, synchronously.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    timeout: Duration,
    ok_codes: Vec<i32>,
    stdin: Option<Vec<u8>>,
}

/// What a successful run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The binary is not installed (callers map this to FAILED_PRECONDITION).
    #[error("`{program}` not found: is it installed and on PATH?")]
    NotFound { program: String },
    /// The command ran and exited with a code outside `ok_codes`, or was
    /// killed by a signal (`code` is None). `stderr` is trimmed; when the tool
    /// wrote nothing to stderr it holds stdout instead.
    #[error("`{argv}` {}: {stderr}", status_text(*.code))]
    Failed {
        argv: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("`{argv}` timed out after {after:?} and was killed")]
    Timeout { argv: String, after: Duration },
    /// Spawning or talking to the child failed for another reason.
    #[error("`{argv}`: {source}")]
    Io {
        argv: String,
        #[source]
        source: std::io::Error,
    },
}

fn status_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".to_string(),
    }
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            ok_codes: vec![0],
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Exit codes that count as success (default `[0]`).
    pub fn ok_codes(mut self, codes: &[i32]) -> Self {
        self.ok_codes = codes.to_vec();
        self
    }

    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// The command line as a shell would show it (for logs and errors).
    pub fn argv(&self) -> String {
        std::iter::once(self.program.as_str().into())
            .chain(self.args.iter().map(|a| a.to_string_lossy()))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the command to completion or until the timeout.
    pub fn run(self) -> Result<Output, ExecError> {
        let argv = self.argv();
        tracing::debug!(%argv, "exec");
        let io_err = |source| ExecError::Io {
            argv: argv.clone(),
            source,
        };

        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ExecError::NotFound {
                    program: self.program.clone(),
                },
                _ => io_err(e),
            })?;

        let stdin_writer = match (child.stdin.take(), self.stdin) {
            (Some(mut pipe), Some(bytes)) => Some(thread::spawn(move || {
                // A child that exits without reading stdin gives EPIPE: not our error.
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());

        let status = match wait_deadline(&mut child, self.timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                // A tool stuck in D state survives SIGKILL until its I/O
                // returns: reap it (and drain its pipes) on other threads,
                // never here.
                kill_group(child);
                drop((stdout, stderr));
                return Err(ExecError::Timeout {
                    argv,
                    after: self.timeout,
                });
            }
            Err(e) => {
                kill_group(child);
                return Err(io_err(e));
            }
        };
        if let Some(w) = stdin_writer {
            let _ = w.join();
        }
        let out = Output {
            code: status.code().unwrap_or(-1),
            stdout: join(stdout),
            stderr: join(stderr),
        };

        match status.code() {
            Some(code) if self.ok_codes.contains(&code) => Ok(out),
            code => {
                let diag = if out.stderr.trim().is_empty() {
                    &out.stdout
                } else {
                    &out.stderr
                };
                tracing::debug!(%argv, ?code, signal = ?status.signal(), "exec failed");
                Err(ExecError::Failed {
                    argv,
                    code,
                    stderr: tail(diag.trim(), MAX_ERR_OUTPUT).to_string(),
                })
            }
        }
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

fn join(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Polls the child until it exits (Some) or the deadline passes (None).
fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SIGKILLs the child's whole process group; a detached thread reaps it
/// whenever it dies (at once, unless it is stuck in uninterruptible I/O).
fn kill_group(mut child: Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = thread::Builder::new().name("reap".into()).spawn(move || {
        let _ = child.wait();
    });
}

/// The last `max` bytes of `s`, cut at a char boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_captures_output() {
        let out = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .run()
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn failure_names_argv_code_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo 'bad thing' >&2; exit 3"])
            .run()
            .unwrap_err();
        let ExecError::Failed { code, stderr, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*code, Some(3));
        assert_eq!(stderr, "bad thing");
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo '\\''bad thing'\\'' >&2; exit 3'` exited with status 3: bad thing"
        );
    }

    #[test]
    fn failure_falls_back_to_stdout() {
        let err = Cmd::new("sh")
            .args(["-c", "echo only-stdout; exit 1"])
            .run()
            .unwrap_err();
        assert!(matches!(err, ExecError::Failed { ref stderr, .. } if stderr == "only-stdout"));
    }

    #[test]
    fn ok_codes_accept_nonzero() {
        let out = Cmd::new("sh")
            .args(["-c", "exit 1"])
            .ok_codes(&[0, 1])
            .run()
            .unwrap();
        assert_eq!(out.code, 1);
    }

    #[test]
    fn missing_binary_is_not_found() {
        let err = Cmd::new("haina-no-such-binary").run().unwrap_err();
        assert!(
            matches!(err, ExecError::NotFound { ref program } if program == "haina-no-such-binary")
        );
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let start = Instant::now();
        // The grandchild `sleep` keeps stdout open; killing only `sh` would hang the readers.
        let err = Cmd::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_is_fed() {
        let out = Cmd::new("cat")
            .stdin_bytes(b"hello".to_vec())
            .run()
            .unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn killed_by_signal_has_no_code() {
        let err = Cmd::new("sh").args(["-c", "kill -9 $$"]).run().unwrap_err();
        assert!(
            matches!(err, ExecError::Failed { code: None, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/dev/loop0"), "/dev/loop0");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(tail("abcdef", 3), "def");
    }
}
