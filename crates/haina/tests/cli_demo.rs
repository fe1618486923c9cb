//! `haina demo`, run as a user runs it: the chain it prints is compared with
//! the kernel's mount table and sysfs while the demo is paused with the
//! container alive; afterwards (and after a SIGINT at several points)
//! nothing may be left: no mount, no loop device, no file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::loops_under;

/// A scratch dir for one demo run (its `--work-dir`), unique per test.
fn scratch(tag: &str) -> tempfile::TempDir {
    let root = std::env::var_os("HAINA_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/haina-tests"));
    std::fs::create_dir_all(&root).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("haina-demo-test-{tag}-"))
        .tempdir_in(root)
        .unwrap()
}

struct Demo {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    out: Vec<String>,
}

impl Demo {
    fn start(work: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haina"))
            .args(["demo", "--work-dir"])
            .arg(work)
            .args(if extra.contains(&"--size") {
                &[][..]
            } else {
                &["--size", "64Mi"][..]
            })
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting haina demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            stdin: child.stdin.take(),
            child,
            lines,
            out: Vec::new(),
        }
    }

    /// Reads output until a line contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.out.push(l);
                    if hit {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}:\n{}", self.out.join("\n"));
    }

    fn resume(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn interrupt(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    }

    /// Waits for the exit; returns the code and the whole output.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        self.out.extend(self.lines.iter());
        (status.code(), self.out.join("\n"))
    }
}

/// Asserts the kernel holds nothing of `work` and the demo's temp dir is gone.
#[track_caller]
fn assert_nothing_left(work: &Path, output: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(work.to_str().unwrap()))
        .collect();
    assert!(leaked.is_empty(), "mounts leaked: {leaked:#?}\n{output}");
    let loops = loops_under(work);
    assert!(loops.is_empty(), "loop devices leaked: {loops:?}\n{output}");
    let files: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(files.is_empty(), "files left: {files:?}\n{output}");
}

/// The mountinfo line at mount point `p`, split in fields.
fn mount_at(p: &str) -> Option<Vec<String>> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(p))
        .map(|l| l.split(' ').map(String::from).collect())
}

/// The fields after the ` - ` separator: fs type, source.
fn fs_and_source(fields: &[String]) -> (String, String) {
    let sep = fields.iter().position(|f| f == "-").unwrap();
    (fields[sep + 1].clone(), fields[sep + 2].clone())
}

fn sys_loop(dev: &str, attr: &str) -> String {
    let name = dev.strip_prefix("/dev/").unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/{attr}"))
        .unwrap_or_else(|e| panic!("{dev} {attr}: {e}"))
        .trim()
        .to_string()
}

fn dev_numbers(dev: &str) -> String {
    let name = dev.strip_prefix("/dev/").unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/dev"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn demo_prints_the_chain_the_kernel_has_and_leaves_nothing() {
    let work = scratch("chain");
    let mut demo = Demo::start(work.path(), &["--pause-at", "chain"]);
    demo.wait_for("[paused at Chain");

    // The one-line chain, checked link by link against mountinfo and sysfs
    // while the demo (and its container) are still up.
    let line = demo
        .out
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("container /data <- "))
        .unwrap_or_else(|| panic!("no chain line:\n{}", demo.out.join("\n")))
        .to_string();
    let links: Vec<&str> = line.split(" <- ").collect();
    assert_eq!(links.len(), 5, "{line}");
    let pod = links[1].strip_prefix("bind of ").unwrap();
    let staging = links[2].strip_prefix("bind of ").unwrap();
    let (fs, dev) = links[3].split_once(" on ").unwrap();
    let (how, image) = links[4].split_once(" over ").unwrap();
    assert!(pod.starts_with(work.path().to_str().unwrap()), "{pod}");
    assert!(pod.ends_with("/mount") && pod.contains("/pods/"), "{pod}");
    assert!(staging.ends_with("/globalmount"), "{staging}");
    assert_eq!(fs, "ext4");

    let numbers = dev_numbers(dev);
    for p in [pod, staging] {
        let m = mount_at(p).unwrap_or_else(|| panic!("{p} is not a mount point"));
        assert_eq!(m[2], numbers, "{p} is on {}, not {dev}", m[2]);
        assert_eq!(m[3], "/", "{p} mounts the filesystem's root");
        assert_eq!(fs_and_source(&m), ("ext4".to_string(), dev.to_string()));
    }
    assert_eq!(sys_loop(dev, "backing_file"), image);
    assert!(Path::new(image).is_file());
    let dio = sys_loop(dev, "dio") == "1";
    assert_eq!(how, if dio { "loop (direct-io)" } else { "loop" });

    // The container's own mountinfo line shows /data on the same device.
    let inside = demo
        .out
        .iter()
        .find(|l| l.contains("its mountinfo:"))
        .expect("the container's mountinfo line");
    let fields: Vec<&str> = inside
        .split("its mountinfo: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(
        (fields[2], fields[4]),
        (numbers.as_str(), "/data"),
        "{inside}"
    );
    assert!(
        demo.out
            .iter()
            .any(|l| l.contains("read back") && l.contains("hello from pod")),
        "{}",
        demo.out.join("\n")
    );

    demo.resume();
    let (code, output) = demo.finish();
    assert_eq!(code, Some(0), "{output}");
    for rpc in [
        "CreateVolume",
        "NodeGetInfo",
        "ControllerPublishVolume",
        "NodeStageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeUnstageVolume",
        "ControllerUnpublishVolume",
        "DeleteVolume",
    ] {
        let l = output
            .lines()
            .find(|l| l.contains(rpc))
            .unwrap_or_else(|| panic!("{rpc}:\n{output}"));
        assert!(l.trim_end().ends_with(" ms"), "{rpc} has a latency: {l}");
    }
    assert!(output.contains("Done:"), "{output}");
    assert_nothing_left(work.path(), &output);
    assert!(
        Path::new(image).symlink_metadata().is_err(),
        "{image} survived"
    );
}

#[test]
fn demo_block_volume_reaches_the_container_as_a_device() {
    let work = scratch("block");
    let demo = Demo::start(work.path(), &["--block", "--size", "16Mi"]);
    let (code, output) = demo.finish();
    assert_eq!(code, Some(0), "{output}");
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("container /dev/xvda <- bind of "))
        .unwrap_or_else(|| panic!("{output}"));
    let links: Vec<&str> = line.split(" <- ").collect();
    assert_eq!(links.len(), 4, "{line}");
    assert!(links[1].contains("/volumeDevices/publish/"), "{line}");
    assert!(links[2].starts_with("bind of /dev/loop"), "{line}");
    assert_nothing_left(work.path(), &output);
}

/// SIGINT while paused at `point` (or, with no point, as soon as `at`
/// appears in the output) tears everything down; the exit code is 130.
fn interrupted(point: Option<&str>, at: &str) {
    let work = scratch(point.unwrap_or("free"));
    let extra: Vec<&str> = point.map(|p| vec!["--pause-at", p]).unwrap_or_default();
    let mut demo = Demo::start(work.path(), &extra);
    demo.wait_for(at);
    demo.interrupt();
    let (code, output) = demo.finish();
    assert_eq!(code, Some(130), "{output}");
    assert!(output.contains("Interrupted;"), "{output}");
    assert!(!output.contains("FAILED"), "{output}");
    assert_nothing_left(work.path(), &output);
}

#[test]
fn sigint_after_create_volume_leaves_nothing() {
    interrupted(Some("create-volume"), "[paused at CreateVolume");
}

#[test]
fn sigint_after_node_stage_leaves_nothing() {
    interrupted(Some("node-stage"), "[paused at NodeStage");
}

#[test]
fn sigint_during_the_container_leaves_nothing() {
    interrupted(Some("container"), "[paused at Container");
}

#[test]
fn sigint_at_an_unplanned_moment_leaves_nothing() {
    // No pause: the signal lands wherever the flow happens to be.
    interrupted(None, "NodePublishVolume");
}
