//! Test support: a real systemd per test, commands that explain themselves on failure, ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (hooks/..).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary of the workspace as the bundle ships it: static (musl), release, built by
/// `make static` (`make test` builds it first). The end-to-end tests deploy these, never the
/// debug builds of the unit tests.
/// A hard link where the filesystem allows (the binaries are megabytes each), else a copy.
pub fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

pub fn workspace_bin(name: &str) -> PathBuf {
    workspace_bin_for("x86_64", name)
}

/// [`workspace_bin`] of one architecture's static build (`x86_64`, `aarch64`).
pub fn workspace_bin_for(arch: &str, name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let profile = static_profile();
    let path = target
        .join(format!("{arch}-unknown-linux-musl/{profile}"))
        .join(name);
    assert!(
        path.exists(),
        "{} is missing; build the shipped binaries first: make static{}{}",
        path.display(),
        if arch == "x86_64" { "" } else { " static-aarch64" },
        if profile == "release" {
            String::new()
        } else {
            format!(" PROFILE={profile}")
        }
    );
    path
}

/// The cargo profile whose static build the tests deploy: this test binary's own when it is a
/// musl build itself (`make test` builds everything with `--profile ci --target
/// x86_64-unknown-linux-musl`: target/x86_64-unknown-linux-musl/ci/deps/e2e-…), otherwise
/// `release`, what `make static` builds.
pub fn static_profile() -> String {
    let own = own_build_dir();
    let triple = own.parent().and_then(Path::file_name).and_then(|t| t.to_str());
    match (triple, own.file_name()) {
        (Some(t), Some(p)) if t.ends_with("-unknown-linux-musl") => p.to_string_lossy().into_owned(),
        _ => "release".into(),
    }
}

/// The folder of this test's own build (target/debug, or target/<triple>/<profile>): its
/// workspace binaries (loadgen, report, deploy-local) are beside it.
pub fn own_build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Runs a command; on failure panics with the command, its status and its output.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "command failed:\n{}", explain(cmd, &out));
    out
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn explain(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real systemd in its own namespaces (scripts/sandbox), stopped when dropped. A watchdog in
/// the script also stops it if this test process dies without dropping it.
pub struct Sandbox {
    pub dir: PathBuf,
    pub pid: u32,
    /// The architecture of the binaries it runs ([`Sandbox::test_binary`]): `x86_64`, or
    /// `aarch64` under qemu-user-static through binfmt_misc.
    pub arch: &'static str,
}

impl Sandbox {
    pub fn start() -> Sandbox {
        let out = run_ok(Command::new(script()).args(["start", "--owner", &std::process::id().to_string()]));
        Self::from_output(&out)
    }

    /// Kills this sandbox's systemd and boots a new one on the same folders: a reboot.
    pub fn reboot(&mut self) {
        let out = run_ok(Command::new(script()).arg("reboot").arg(&self.dir));
        // Not `*self = …`: that would drop (and so stop) this sandbox.
        let booted = std::mem::ManuallyDrop::new(Self::from_output(&out));
        self.pid = booted.pid;
    }

    fn from_output(out: &Output) -> Sandbox {
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("sandbox start printed no {key}: {text}"))
                .to_string()
        };
        Sandbox {
            dir: PathBuf::from(field("SANDBOX_DIR=")),
            pid: field("SANDBOX_PID=").parse().unwrap(),
            arch: "x86_64",
        }
    }

    /// A command that runs inside the sandbox (its mounts, its bus, its PID namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(script());
        cmd.arg("exec").arg(&self.dir).arg("--").arg(program);
        cmd
    }

    /// Copies unit files into the sandbox's unit folder and reloads systemd.
    pub fn install_units(&self, files: &[&Path]) {
        run_ok(Command::new(script()).arg("install").arg(&self.dir).args(files));
    }

    /// The sandbox's system bus, reachable from the host.
    pub fn bus_address(&self) -> String {
        format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", self.pid)
    }

    /// A path inside the sandbox, seen from the host.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, inside))
    }

    /// Puts a workspace binary where the sandbox and a hardened unit can run it
    /// (`/opt/.test-bin/NAME` inside: the sandbox's own /tmp hides a checkout under /tmp, and
    /// PrivateTmp= hides /var/tmp too). Every binary run inside a sandbox goes through here. A hard link when the
    /// file systems allow, else a copy. Returns the path inside the sandbox.
    pub fn test_binary(&self, name: &str) -> String {
        let dir = self.dir.join("opt/.test-bin");
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join(name);
        if !dest.exists() {
            // The front is the hooks' executable started under its name (the static build has
            // no front binary of its own).
            let src = workspace_bin_for(self.arch, if name == "handoff-front" { "handoff" } else { name });
            link_or_copy(&src, &dest);
        }
        format!("/opt/.test-bin/{name}")
    }

    /// The sandbox's folder for test files (units, logs); visible inside at the same path.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.join("scratch").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    pub async fn systemd(&self) -> handoff::systemd::Systemd {
        handoff::systemd::Systemd::connect_to(Some(&self.bus_address()), false)
            .await
            .expect("connect to the sandbox's system bus")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let out = run(Command::new(script()).arg("stop").arg(&self.dir));
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "sandbox teardown failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn script() -> PathBuf {
    workspace().join("scripts/sandbox")
}

/// Every process whose PID namespace is `ns` (as `readlink /proc/PID/ns/pid` prints it).
pub fn processes_in_namespace(ns: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l.to_string_lossy() == ns)
        })
        .collect()
}

/// One HTTP/1.0 GET over a new connection; the whole response as text.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
