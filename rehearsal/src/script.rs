//! One lifecycle script run as the agent runs it: from the revision's archive, with the
//! agent's environment (`LIFECYCLE_EVENT`, `DEPLOYMENT_ID`, …), in `/`, stdin closed, in its own
//! process group, as `runas` if given, under its timeout — one SIGTERM to the group when it
//! expires, never SIGKILL. Its output goes to scripts.log and stderr; a failure keeps the last
//! lines for the error. A script that exits while a process it started still holds its output
//! fails at the timeout too, as with the agent.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handoff::bundle::appspec::HookEntry;

use crate::script_log::{ScriptLog, Stream};

/// How much of a failed script's output is shown (the console gets about this much).
const TAIL_LINES: usize = 20;

/// The deployment's identity, handed to every script in its environment.
#[derive(Debug, Clone)]
pub struct Identity {
    pub deployment_id: String,
    pub application: String,
    pub group: String,
    pub group_id: String,
}

/// Why a script failed, and the last lines it printed.
#[derive(Debug)]
pub struct ScriptFailure {
    pub message: String,
    pub tail: Vec<String>,
}

fn fail(message: String, tail: &VecDeque<String>) -> ScriptFailure {
    ScriptFailure {
        message,
        tail: tail.iter().cloned().collect(),
    }
}

/// Sends each line of `stream` to `tx`, from a thread of its own.
fn pump(stream: impl Read + Send + 'static, kind: Stream, tx: mpsc::Sender<(Stream, String)>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    if tx
                        .send((kind, String::from_utf8_lossy(&buf).into_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// None for success, else how the script ended (`failed with exit code 7`, `was killed by
/// SIGKILL`).
fn describe_status(status: ExitStatus) -> Option<String> {
    if status.success() {
        None
    } else if let Some(code) = status.code() {
        Some(format!("failed with exit code {code}"))
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {sig}"));
        Some(format!("was killed by {name}"))
    } else {
        Some(format!("ended with {status}"))
    }
}

/// the log and, prefixed with the event, to this process's stderr.
pub fn run_script(
    event: &str,
    archive: &Path,
    entry: &HookEntry,
    who: &Identity,
    log: &mut ScriptLog,
    verbose: u8,
) -> Result<(), ScriptFailure> {
    let mut tail: VecDeque<String> = VecDeque::new();
    let location = entry.location();
    let path = archive.join(location);
    log.script(location);
    let meta = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m,
        _ => {
            return Err(fail(
                format!("Script does not exist at specified location: {}", path.display()),
                &tail,
            ));
        }
    };
    if meta.permissions().mode() & 0o111 == 0 {
        eprintln!(
            "deploy-local: warning: {location} is not executable; making it executable (chmod +x), as the agent does. \
             chmod +x it in the bundle"
        );
        let mode = meta.permissions().mode() | 0o111;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
            return Err(fail(
                format!("cannot make {} executable: {e}", path.display()),
                &tail,
            ));
        }
    }
    let secs = entry.timeout_secs().max(1) as u64;
    let mut cmd = match &entry.runas {
        Some(user) => {
            let mut c = Command::new("su");
            c.arg(user).arg("-c").arg(&path);
            c
        }
        None => Command::new(&path),
    };
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .env("LIFECYCLE_EVENT", event)
        .env("DEPLOYMENT_ID", &who.deployment_id)
        .env("APPLICATION_NAME", &who.application)
        .env("DEPLOYMENT_GROUP_NAME", &who.group)
        .env("DEPLOYMENT_GROUP_ID", &who.group_id);
    if verbose > 0 {
        eprintln!(
            "deploy-local: {event}: running {} (timeout {secs} s)",
            path.display()
        );
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Err(fail(
                format!("Script at specified location: {location} could not be run: {e}"),
                &tail,
            ));
        }
    };
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    pump(
        child.stdout.take().expect("piped stdout"),
        Stream::Stdout,
        tx.clone(),
    );
    pump(child.stderr.take().expect("piped stderr"), Stream::Stderr, tx);

    let mut take = |(stream, line): (Stream, String), log: &mut ScriptLog| {
        log.output(stream, &line);
        eprintln!("{event}: {line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(format!("[{stream}]{line}"));
    };

    // One deadline for the script and its output, as the agent's thread joiner has.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut status: Option<ExitStatus> = None;
    let mut open = true;
    loop {
        if status.is_none() {
            status = child.try_wait().ok().flatten();
        }
        if status.is_some() && !open {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            if status.is_none() {
                // The agent's timeout: one SIGTERM to the whole process group, no SIGKILL.
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
                // Collect what it prints on the way out, and reap it if it goes.
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace {
                    if status.is_none() {
                        status = child.try_wait().ok().flatten();
                    }
                    if status.is_some() && !open {
                        break;
                    }
                    match rx.recv_timeout(Duration::from_millis(20)) {
                        Ok(item) => take(item, log),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            open = false;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                let after = match status {
                    Some(_) => "it ended on SIGTERM".to_string(),
                    None => "it is still running after SIGTERM (the agent does not send SIGKILL)".to_string(),
                };
                return Err(fail(
                    format!(
                        "Script at specified location: {location} failed to complete in {secs} seconds: the timeout \
                         in appspec.yml expired and SIGTERM went to the script's process group; {after}"
                    ),
                    &tail,
                ));
            }
            return Err(fail(
                format!(
                    "Script at specified location: {location} failed to close STDOUT/STDERR within {secs} seconds: it \
                     exited, but a process it started still holds its output (and is still running). Start \
                     long-lived processes through systemd, or redirect their output"
                ),
                &tail,
            ));
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        if open {
            match rx.recv_timeout(wait) {
                Ok(item) => take(item, log),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            // The output is closed; the script is about to be reaped.
            std::thread::sleep(wait.min(Duration::from_millis(5)));
        }
    }
    match status.and_then(describe_status) {
        None => Ok(()),
        Some(how) => Err(fail(
            format!("Script at specified location: {location} {how}"),
            &tail,
        )),
    }
}
