//! Helpers for tests/fleet.rs: running alloctrace as a service would, with
//! a capability set instead of root, and the Prometheus server that scrapes
//! it.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use crate::{
    DONE_TIMEOUT, READY_TIMEOUT,
    child::{LineReader, wait_child},
    environment::{alloctrace_bin, temp_dir, workspace_root},
};

/// What `deploy/alloctrace.service` and the DaemonSet grant for `--all`
/// (CAP_CHECKPOINT_RESTORE is wanted, not needed; see
/// tracer/src/privileges.rs).
pub const HOST_WIDE_CAPS: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "checkpoint_restore",
];

/// What `--pid` needs: it writes forked children's `/proc/PID/mem`.
pub const PID_MODE_CAPS: &[&str] = &["bpf", "perfmon", "sys_ptrace", "dac_override"];

/// The unprivileged user the capability tests run alloctrace as.
pub const NOBODY: u32 = 65534;

/// A copy of the tracer that `uid` 65534 can execute (the build tree may
/// sit under a directory only root can enter), and the directory holding it.
pub fn tracer_for_nobody() -> (tempfile::TempDir, PathBuf) {
    let dir = world_writable_dir(0o755);
    let bin = dir.path().join("alloctrace");
    std::fs::copy(alloctrace_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// A temporary directory with `mode` (0o777 for outputs another user writes).
pub fn world_writable_dir(mode: u32) -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// `program` run as `uid` (root when None) holding exactly `caps`: the
/// inheritable, ambient and bounding sets all say the same, so the process
/// cannot regain anything else.
pub fn with_capabilities(uid: Option<u32>, caps: &[&str], program: &Path) -> Command {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    if let Some(uid) = uid {
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
        ]);
    }
    cmd.args([
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ])
    .arg(program)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// The image `deploy/build-image.sh` builds from the binary under test.
pub const TEST_IMAGE: &str = "localhost/alloctrace:test";

/// Builds [`TEST_IMAGE`] as an operator would, offline.
pub fn build_test_image() {
    let script = workspace_root().join("deploy/build-image.sh");
    let out = Command::new(&script)
        .arg(alloctrace_bin())
        .arg(TEST_IMAGE)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `podman run` with what this kind of host needs: runc (crun refuses a
/// cgroup v1/v2 hybrid host; runc runs on either), and limits a sandbox
/// without CAP_SYS_RESOURCE can set (podman's defaults, 1048576 open files
/// and more processes than our hard limit, cannot be).
pub fn podman_run() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "run", "--rm"]);
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) } == 0 {
        let files = files.rlim_cur.min(1 << 20);
        cmd.arg(format!("--ulimit=nofile={files}:{files}"));
    }
    // Neither the tracer nor the workloads fork.
    cmd.arg("--ulimit=nproc=4096:4096");
    cmd
}

/// A workload of the `ready`/`go`/`done` protocol running in a podman
/// container of the test image (whose C library it uses: a file other than
/// the host's, probed on its own).
pub struct ContainerWorkload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    /// The container's full id, as `podman ps --no-trunc` shows it.
    pub id: String,
    /// The workload's pid on the host.
    pub pid: u32,
}

impl ContainerWorkload {
    pub fn start(program: &Path, args: &[&str]) -> Self {
        let dir = temp_dir();
        let cidfile = dir.path().join("cid");
        // Mounted under its own name, which becomes its comm.
        let name = program.file_name().unwrap().to_string_lossy();
        let inside = format!("/usr/local/bin/{name}");
        let mount = format!("{}:{inside}:ro", program.display());
        let mut child = podman_run()
            .arg("-i")
            .arg(format!("--cidfile={}", cidfile.display()))
            .args(["-v", &mount, "--entrypoint", &inside])
            .arg(TEST_IMAGE)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn podman run");
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().unwrap());
        stdout
            .wait_for(READY_TIMEOUT, |line| line.starts_with("ready "))
            .unwrap_or_else(|e| panic!("containerized workload never printed ready: {e}"));
        let id = std::fs::read_to_string(&cidfile)
            .expect("podman wrote the container id")
            .trim()
            .to_owned();
        let inspect = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &id])
            .output()
            .expect("podman inspect");
        let pid = String::from_utf8_lossy(&inspect.stdout)
            .trim()
            .parse()
            .expect("podman inspect prints the host pid");
        Self {
            child,
            stdin,
            stdout,
            id,
            pid,
        }
    }

    /// Sends `go` and waits for `done`.
    pub fn run(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .expect("write go");
        self.stdout
            .wait_for(DONE_TIMEOUT, |line| line == "done")
            .unwrap_or_else(|e| panic!("containerized workload never printed done: {e}"));
    }
}

impl Drop for ContainerWorkload {
    fn drop(&mut self) {
        // Closing stdin ends the workload, and `--rm` its container.
        self.stdin = None;
        if wait_child(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = Command::new("podman")
                .args(["rm", "--force", &self.id])
                .output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real Prometheus server on loopback, in a temporary directory,
/// scraping `targets` every `scrape_interval`; killed on drop.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[&str], scrape_interval: &str) -> Self {
        let dir = temp_dir();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
                 scrape_configs:\n  - job_name: alloctrace\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (apt package `prometheus`)");
        let prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while std::net::TcpStream::connect(&prometheus.addr).is_err()
            || !crate::http_get(&prometheus.addr, "/-/ready")
                .0
                .contains(" 200 ")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// Runs the PromQL `expr` now; returns each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let (status, body) =
            crate::http_get(&self.addr, &format!("/api/v1/query?query={}", encode(expr)));
        assert!(status.contains(" 200 "), "{expr}: {status}\n{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: no result in {answer}"))
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes `text` for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The report of `pid` alone out of a host-wide report, as a report of one
/// process (other tests' workloads may share its name).
pub fn only_process(report: &serde_json::Value, pid: u32) -> serde_json::Value {
    let process = report["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes in {report}"))
        .iter()
        .find(|process| process["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in {}", crate::summarize_report(report)));
    serde_json::json!({ "processes": [process] })
}
