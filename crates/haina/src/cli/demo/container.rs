//! The demo's "container": a shell in its own mount namespace whose
//! `/data` (or `/dev/xvda` for a block volume) is a bind mount of the pod
//! path, set up the way a container runtime does it.
//!
//! `unshare --mount --propagation private` gives the child a private copy of
//! the host's mount table. A copy that kept the host's mounts would pin
//! other filesystems (a loop device stays busy while any namespace still
//! mounts it), so the child builds a root on a tmpfs (read-only binds of
//! `/usr`, `/lib*`, ...; the volume at `/data`), `pivot_root`s into it and
//! lazily detaches the old root: afterwards its namespace holds only its
//! own four mounts. Nothing is created on the host except an empty
//! directory in the demo's work dir; every mount dies with the process.
//!
//! The child writes a file (or the device's first bytes), reads it back,
//! prints its own `/proc/self/mountinfo` line for `/data`, says `ready`,
//! and waits for a line on stdin, so the demo can measure the chain while
//! the container is alive. It runs in its own process group: a Ctrl-C at
//! the terminal reaches only the demo, which stops the container itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Runs in the new mount namespace, still under the host's root.
/// `$1` new root, `$2` pod path, `$3` path inside, `$4` fs|block, `$5` the
/// in-container script.
const SETUP: &str = r#"set -eu
root=$1 pod=$2 at=$3 mode=$4
mount -t tmpfs -o mode=0755,size=4m haina-container "$root"
for d in /usr /bin /sbin /lib /lib32 /lib64 /libx32; do
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$root$d"
  elif [ -d "$d" ]; then mkdir "$root$d"; mount --bind -o ro "$d" "$root$d"
  fi
done
mkdir -p "$root/proc" "$root/.oldroot" "$root$(dirname "$at")"
if [ "$mode" = block ]; then : > "$root$at"; else mkdir "$root$at"; fi
mount --bind "$pod" "$root$at"
cd "$root"
pivot_root . .oldroot
exec /bin/sh -c "$5" container "$at"
"#;

/// Runs as the container, under its new root.
const CONTAINER: &str = r#"set -eu
mount -t proc proc /proc
umount -l /.oldroot
rmdir /.oldroot
at=$1
if [ -d "$at" ]; then f="$at/hello.txt"; else f="$at"; fi
printf '%s\n' "$HAINA_MSG" > "$f"
IFS= read -r back < "$f"
echo "wrote $f"
echo "read $back"
while IFS= read -r line; do
  case "$line" in *" $at "*) echo "mountinfo $line";; esac
done < /proc/self/mountinfo
echo ready
IFS= read -r _ || true
"#;

/// What the container reported before `ready`.
#[derive(Debug, Default)]
pub struct Report {
    pub wrote: String,
    pub read_back: String,
    pub mountinfo: Vec<String>,
}

pub struct Container {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    pub pid: u32,
    /// Where the container sees the volume: `/data` or `/dev/xvda`.
    pub at: &'static str,
    pub log: PathBuf,
}

/// Whether a program is on `PATH`.
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

impl Container {
    /// Starts the container over `pod_path`; `dir` is an empty directory
    /// in the work dir that becomes its root (inside its namespace only).
    pub fn start(dir: &Path, pod_path: &Path, block: bool, message: &str) -> Result<Self, String> {
        for tool in ["unshare", "mount", "umount", "pivot_root"] {
            if !on_path(tool) {
                return Err(format!(
                    "{tool} (util-linux) is not on PATH; the container needs it"
                ));
            }
        }
        let root = dir.join("rootfs");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let log = dir.join("container.log");
        let err =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let at = if block { "/dev/xvda" } else { "/data" };
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                SETUP,
                "setup",
            ])
            .arg(&root)
            .arg(pod_path)
            .arg(at)
            .arg(if block { "block" } else { "fs" })
            .arg(CONTAINER)
            .env("HAINA_MSG", message)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting unshare: {e}"))?;
        let pid = child.id().ok_or("the container exited at once")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            pid,
            at,
            log,
        })
    }

    /// Reads the container's report up to `ready`.
    pub async fn report(&mut self) -> Result<Report, String> {
        let mut r = Report::default();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
                .await
                .map_err(|_| "the container did not report within 60s".to_string())?
                .map_err(|e| format!("reading the container's output: {e}"))?;
            let Some(line) = line else {
                return Err(format!(
                    "the container exited before it was ready: {}",
                    self.log_tail()
                ));
            };
            match line.split_once(' ') {
                Some(("wrote", f)) => r.wrote = f.to_string(),
                Some(("read", b)) => r.read_back = b.to_string(),
                Some(("mountinfo", m)) => r.mountinfo.push(m.to_string()),
                _ if line == "ready" => return Ok(r),
                _ => {}
            }
        }
    }

    /// The container's own view of its mounts, read from the host.
    pub fn mountinfo(&self) -> Result<String, String> {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid))
            .map_err(|e| format!("reading /proc/{}/mountinfo: {e}", self.pid))
    }

    /// Lets the container finish (its last read returns), then waits.
    pub async fn finish(&mut self) -> Result<(), String> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n").await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!(
                "the container exited with {s}: {}",
                self.log_tail()
            )),
            Ok(Err(e)) => Err(format!("waiting for the container: {e}")),
            Err(_) => {
                self.kill().await;
                Err("the container did not exit within 10s; killed it".into())
            }
        }
    }

    /// Kills the container's whole process group and reaps it.
    pub async fn kill(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait().await;
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            "(no output on stderr)".into()
        } else {
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
    }
}
