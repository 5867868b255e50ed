//! `deploy-local` (handoff-rehearsal): the CodeDeploy agent's in-place deployment, reproduced on
//! one host to rehearse a revision (see shared/notes/codedeploy-agent.md for what the agent does).
//!
//! ```text
//! <root>/<group-id>/<deployment-id>/deployment-archive/      the unpacked revision
//! <root>/<group-id>/<deployment-id>/logs/scripts.log         every line the scripts printed
//! <root>/deployment-instructions/<group-id>_last_successful_install   that archive's path
//! <root>/deployment-instructions/<group-id>-cleanup          what Install created, a path a line
//! ```
//!
//! Order: BeforeBlockTraffic, AfterBlockTraffic, ApplicationStop (the last successful
//! install's scripts, with the new deployment's id; none on a first deployment),
//! DownloadBundle, BeforeInstall, Install (the last successful install is recorded right
//! after it), AfterInstall, ApplicationStart, ValidateService, BeforeAllowTraffic,
//! AfterAllowTraffic. Each script runs as the agent runs it: from the archive, with the
//! agent's environment, in `/`, stdin closed, in its own process group, under its timeout
//! (one SIGTERM to the group on expiry, never SIGKILL). The first failure ends the deployment.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use handoff::appspec::{self, AppSpec, HookEntry, IN_PLACE_ORDER, Runs};
use handoff::config::is_safe_name;
use handoff::fault::Fault;

/// Archives kept per deployment group (the agent's `max_revisions` default).
pub const KEEP_ARCHIVES: usize = 5;

/// How much of a failed script's output is shown (the console gets about this much).
const TAIL_LINES: usize = 20;

/// What to deploy, and as which deployment.
#[derive(Debug, Clone)]
pub struct Options {
    /// A revision zip or an unpacked bundle folder.
    pub bundle: PathBuf,
    /// None: a new id like the agent's (`d-` and 9 letters or digits).
    pub deployment_id: Option<String>,
    pub root: PathBuf,
    pub group_id: String,
    pub application: String,
    pub group: String,
    pub verbose: u8,
}

/// The agent's folders for one deployment.
#[derive(Debug, Clone)]
pub struct Layout {
    pub deployment_dir: PathBuf,
    pub archive: PathBuf,
    pub scripts_log: PathBuf,
    pub instructions: PathBuf,
    pub last_install_file: PathBuf,
    pub cleanup_file: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, group_id: &str, deployment_id: &str) -> Self {
        let deployment_dir = root.join(group_id).join(deployment_id);
        let instructions = root.join("deployment-instructions");
        Self {
            archive: deployment_dir.join("deployment-archive"),
            scripts_log: deployment_dir.join("logs").join("scripts.log"),
            last_install_file: instructions.join(format!("{group_id}_last_successful_install")),
            cleanup_file: instructions.join(format!("{group_id}-cleanup")),
            instructions,
            deployment_dir,
        }
    }
}

/// What one lifecycle event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ran this many scripts, all successfully.
    Ran(usize),
    /// The appspec lists no scripts for it.
    NoScripts,
    /// A previous-revision event on the group's first deployment.
    FirstDeployment,
    /// An agent step, and what it did.
    Done(String),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub event: &'static str,
    pub outcome: Outcome,
    pub took: Duration,
}

/// A deployment that succeeded.
#[derive(Debug, Clone)]
pub struct Summary {
    pub deployment_id: String,
    pub layout: Layout,
    pub steps: Vec<Step>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.outcome {
            Outcome::Ran(1) => "1 script".to_string(),
            Outcome::Ran(n) => format!("{n} scripts"),
            Outcome::NoScripts => "no scripts".to_string(),
            Outcome::FirstDeployment => "skipped: first deployment of the group".to_string(),
            Outcome::Done(what) => what.clone(),
        };
        write!(f, "{:<20} {:>8.2} s  {what}", self.event, self.took.as_secs_f64())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "deployment {} succeeded", self.deployment_id)?;
        for s in &self.steps {
            writeln!(f, "  {s}")?;
        }
        writeln!(f, "archive: {}", self.layout.archive.display())?;
        writeln!(f, "log:     {}", self.layout.scripts_log.display())
    }
}

// ---------------------------------------------------------------------------------------
// Time stamps, ids
// ---------------------------------------------------------------------------------------

/// `YYYY-MM-DD HH:MM:SS.mmm`, UTC.
pub fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (y, mo, d) = handoff::date::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A deployment id like the agent's: `d-` and 9 uppercase letters or digits.
pub fn new_deployment_id() -> Result<String> {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut urandom = File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    let mut id = String::from("d-");
    while id.len() < 11 {
        let mut bytes = [0u8; 16];
        urandom.read_exact(&mut bytes)?;
        // 252 = 7 × 36: below it, every character is equally likely.
        for b in bytes.into_iter().filter(|b| *b < 252) {
            if id.len() < 11 {
                id.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// scripts.log
// ---------------------------------------------------------------------------------------

/// `logs/scripts.log`: every line a script printed, time-stamped, as the agent writes it.
pub struct ScriptLog {
    file: File,
}

impl ScriptLog {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file })
    }

    fn write(&mut self, text: &str) {
        // One write per line, so an interrupted run leaves whole lines.
        let line = format!("[{}] {text}\n", timestamp(SystemTime::now()));
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            eprintln!("deploy-local: cannot write scripts.log: {e}");
        }
    }

    pub fn event(&mut self, event: &str) {
        self.write(&format!("LifecycleEvent - {event}"));
    }

    pub fn script(&mut self, location: &str) {
        self.write(&format!("Script - {location}"));
    }

    pub fn output(&mut self, stream: Stream, line: &str) {
        self.write(&format!("[{stream}]{line}"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

// ---------------------------------------------------------------------------------------
// Running one script
// ---------------------------------------------------------------------------------------

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

/// Runs one script of `event` from `archive` as the agent does. Every output line goes to
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

// ---------------------------------------------------------------------------------------
// The agent's own steps
// ---------------------------------------------------------------------------------------

/// Copies a bundle folder into the archive: files with their modes, symlinks as symlinks.
fn copy_bundle(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode & 0o7777))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_bundle(&src, &dst)?;
        } else if meta.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Removes the group's oldest archives beyond [`KEEP_ARCHIVES`], never `keep`.
fn prune_archives(group_dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(group_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            (
                e.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH),
                e.path(),
            )
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(KEEP_ARCHIVES);
    let mut removed = Vec::new();
    for (_, dir) in dirs.into_iter().take(excess) {
        if keep.iter().any(|k| k.starts_with(&dir)) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Writes a file atomically and durably ([`handoff::release::write_durably`]), creating its folder.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    handoff::release::write_durably(path, text.as_bytes())
}

/// Install, step one: delete what the previous deployment's Install created (files and
/// symlinks unlinked, then its folders if empty). Returns how many were removed.
pub fn clean_previous_install(cleanup_file: &Path) -> Result<usize> {
    let text = match std::fs::read_to_string(cleanup_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cleanup_file.display())),
    };
    let mut removed = 0;
    for line in text.lines().rev().filter(|l| !l.trim().is_empty()) {
        let path = Path::new(line);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        let done = if meta.is_dir() {
            std::fs::remove_dir(path).is_ok()
        } else {
            std::fs::remove_file(path).map(|()| true).with_context(|| {
                format!(
                    "Install cannot delete {} (from the previous Install)",
                    path.display()
                )
            })?
        };
        removed += usize::from(done);
    }
    Ok(removed)
}

/// Install, step two: copy the appspec's `files:` from the archive; returns every path it
/// created (folders too), in creation order, for the next deployment's cleanup.
pub fn install_files(spec: &AppSpec, archive: &Path) -> Result<Vec<PathBuf>> {
    let behavior = spec.file_exists_behavior();
    let mut created = Vec::new();
    for (i, f) in spec.files.iter().flatten().enumerate() {
        let (Some(source), Some(destination)) = (f.source.as_deref(), f.destination.as_deref()) else {
            bail!(Fault::input(format!(
                "appspec.yml files[{i}]: needs source and destination"
            )));
        };
        let src = archive.join(source.trim_start_matches('/'));
        let dest = PathBuf::from(destination);
        make_dirs(&dest, &mut created)?;
        let meta = std::fs::metadata(&src)
            .with_context(|| format!("files[{i}]: source {source} is not in the revision"))?;
        if meta.is_dir() {
            copy_dir_contents(&src, &dest, behavior, &mut created)?;
        } else {
            let name = src.file_name().context("a file source has a name")?;
            copy_one(&src, &dest.join(name), behavior, &mut created)?;
        }
    }
    Ok(created)
}

/// Creates `dir` and its missing ancestors, recording each one created.
fn make_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d).with_context(|| format!("Install cannot create {}", d.display()))?;
        created.push(d.to_path_buf());
    }
    Ok(())
}

fn copy_dir_contents(from: &Path, to: &Path, behavior: &str, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(from)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            make_dirs(&dst, created)?;
            copy_dir_contents(&src, &dst, behavior, created)?;
        } else {
            copy_one(&src, &dst, behavior, created)?;
        }
    }
    Ok(())
}

/// Copies one file with its mode and owner, under `file_exists_behavior`.
fn copy_one(src: &Path, dst: &Path, behavior: &str, created: &mut Vec<PathBuf>) -> Result<()> {
    if std::fs::symlink_metadata(dst).is_ok() {
        match behavior {
            "RETAIN" => return Ok(()),
            "OVERWRITE" => {}
            _ => bail!(Fault::deployment(format!(
                "Install: the deployment failed because a specified file already exists at this location: {} \
                 (not installed by the previous deployment). Remove it, or set file_exists_behavior: OVERWRITE \
                 or RETAIN in appspec.yml",
                dst.display()
            ))),
        }
    }
    // Opens the destination for writing, as the agent does: "Text file busy" on a running binary.
    std::fs::copy(src, dst)
        .with_context(|| format!("Install cannot copy {} to {}", src.display(), dst.display()))?;
    let meta = std::fs::metadata(src)?;
    let _ = std::os::unix::fs::chown(dst, Some(meta.uid()), Some(meta.gid()));
    created.push(dst.to_path_buf());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The deployment
// ---------------------------------------------------------------------------------------

/// The last successful install: its archive and appspec (None when the appspec is unreadable).
struct Previous {
    archive: PathBuf,
    spec: std::result::Result<AppSpec, String>,
}

fn previous_install(layout: &Layout) -> Option<Previous> {
    let text = std::fs::read_to_string(&layout.last_install_file).ok()?;
    let archive = PathBuf::from(text.trim());
    if !archive.is_dir() {
        eprintln!(
            "deploy-local: the last successful install's archive {} is gone (see {}); no ApplicationStop runs",
            archive.display(),
            layout.last_install_file.display()
        );
        return None;
    }
    let spec = std::fs::read_to_string(archive.join(appspec::FILE_NAME))
        .map_err(|e| format!("cannot read {}: {e}", archive.join(appspec::FILE_NAME).display()))
        .and_then(|text| {
            appspec::check_text(&text, appspec::FILE_NAME).0.ok_or_else(|| {
                format!(
                    "{} is not a readable appspec",
                    archive.join(appspec::FILE_NAME).display()
                )
            })
        });
    Some(Previous { archive, spec })
}

fn lock_group(layout: &Layout, group_id: &str) -> Result<nix::fcntl::Flock<File>> {
    std::fs::create_dir_all(&layout.instructions)
        .with_context(|| format!("cannot create {}", layout.instructions.display()))?;
    let path = layout.instructions.join(format!(".{group_id}.lock"));
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Fault::environment(format!(
            "another deploy-local is deploying to group {group_id} ({} is locked); wait for it",
            path.display()
        ))
        .into()
    })
}

/// Where the revision comes from.
enum Source {
    Folder(PathBuf),
    /// Unpacked into this folder beside the archive, renamed into place by DownloadBundle.
    Unpacked(PathBuf),
}

/// Runs a deployment. Errors carry a [`Fault`]: input (the agent would refuse the bundle,
/// exit 2), deployment (a lifecycle event failed, exit 1), environment (exit 3).
pub fn run(opts: &Options) -> Result<Summary> {
    let id = match &opts.deployment_id {
        Some(id) => id.clone(),
        None => new_deployment_id()?,
    };
    for (what, value) in [("deployment id", &id), ("deployment group id", &opts.group_id)] {
        if !is_safe_name(value, false) {
            bail!(Fault::input(format!(
                "{what} '{value}' cannot name a folder; use letters, digits, '-' and '_' (like d-AB12CD34E)"
            )));
        }
    }
    let layout = Layout::new(&opts.root, &opts.group_id, &id);
    let _lock = lock_group(&layout, &opts.group_id).map_err(|e| Fault::environment(format!("{e:#}")))?;
    if layout.deployment_dir.exists() {
        bail!(Fault::input(format!(
            "deployment {id} exists already ({}); every deployment has a new id: omit --deployment-id",
            layout.deployment_dir.display()
        )));
    }
    if !opts.bundle.exists() {
        bail!(Fault::input(format!(
            "{}: no such file or folder; pass a revision zip or an unpacked bundle",
            opts.bundle.display()
        )));
    }
    std::fs::create_dir_all(&layout.deployment_dir)
        .with_context(|| format!("cannot create {}", layout.deployment_dir.display()))
        .map_err(|e| Fault::environment(format!("{e:#}")))?;

    // Refuse what the agent would refuse, before anything runs.
    let (source, checked) = if opts.bundle.is_dir() {
        (Source::Folder(opts.bundle.clone()), opts.bundle.clone())
    } else {
        let staged = layout.deployment_dir.join(".bundle");
        let problems = handoff::lint::unpack_zip(&opts.bundle, &staged).map_err(|e| {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            Fault::input(format!("{e:#}"))
        })?;
        if !problems.is_empty() {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            bail!(Fault::input(refusal(&opts.bundle, &problems)));
        }
        (Source::Unpacked(staged.clone()), staged)
    };
    let (spec, problems) = appspec::check_appspec(&checked);
    for p in problems.iter().filter(|p| !p.is_error()) {
        eprintln!("deploy-local: {p}");
    }
    let spec = match spec {
        Some(spec) if !problems.iter().any(|p| p.is_error()) => spec,
        _ => {
            let _ = std::fs::remove_dir_all(&layout.deployment_dir);
            let errors: Vec<_> = problems.into_iter().filter(|p| p.is_error()).collect();
            bail!(Fault::input(refusal(&opts.bundle, &errors)));
        }
    };

    if spec.permissions.as_ref().is_some_and(|p| !p.is_empty()) {
        eprintln!(
            "deploy-local: warning: appspec.yml permissions: are not rehearsed (Install copies files with their \
             own modes); check their `mode:` values with lint-bundle"
        );
    }
    let who = Identity {
        deployment_id: id.clone(),
        application: opts.application.clone(),
        group: opts.group.clone(),
        group_id: opts.group_id.clone(),
    };
    let previous = previous_install(&layout);
    let mut log = ScriptLog::open(&layout.scripts_log).map_err(|e| Fault::environment(format!("{e:#}")))?;
    eprintln!(
        "deploy-local: deployment {id} of {} to {} (group id {}){}",
        opts.bundle.display(),
        opts.group,
        opts.group_id,
        match &previous {
            Some(p) => format!("; previous revision {}", p.archive.display()),
            None => "; first deployment of the group".into(),
        }
    );
    let mut steps = Vec::new();
    for (event, runs) in IN_PLACE_ORDER {
        let t0 = Instant::now();
        let result = match runs {
            Runs::Previous => match &previous {
                None => Ok(if event == "ApplicationStop" {
                    Outcome::FirstDeployment
                } else {
                    Outcome::NoScripts
                }),
                Some(Previous { spec: Err(e), .. }) => Err(StepFailure::plain(format!(
                    "the last successful install's appspec cannot be read ({e}); the agent fails here too. \
                     Delete {} to start over without it",
                    layout.last_install_file.display()
                ))),
                Some(Previous {
                    archive,
                    spec: Ok(prev),
                }) => run_event(event, archive, prev, &who, &mut log, opts.verbose),
            },
            Runs::Agent if event == "DownloadBundle" => {
                download(&source, &layout, &opts.root, &opts.group_id, previous.as_ref())
            }
            Runs::Agent => install(&spec, &layout),
            Runs::New => run_event(event, &layout.archive, &spec, &who, &mut log, opts.verbose),
        };
        match result {
            Ok(outcome) => {
                let step = Step {
                    event,
                    outcome,
                    took: t0.elapsed(),
                };
                if opts.verbose > 0 || matches!(step.outcome, Outcome::Ran(_) | Outcome::Done(_)) {
                    eprintln!("deploy-local: {}", step.to_string().trim_end());
                }
                steps.push(step);
            }
            Err(f) => bail!(Fault::deployment(f.explain(&id, event, &layout))),
        }
    }
    Ok(Summary {
        deployment_id: id,
        layout,
        steps,
    })
}

fn refusal(bundle: &Path, problems: &[appspec::Problem]) -> String {
    let mut text = format!("the agent would refuse {} (nothing ran):", bundle.display());
    for p in problems {
        text.push_str(&format!("\n  {p}"));
    }
    text.push_str(&format!(
        "\nfix these, then check with: lint-bundle {}",
        bundle.display()
    ));
    text
}

/// A failed event: why, and the script's last lines.
struct StepFailure {
    message: String,
    tail: Vec<String>,
}

impl StepFailure {
    fn plain(message: String) -> Self {
        Self {
            message,
            tail: Vec::new(),
        }
    }

    fn explain(&self, id: &str, event: &str, layout: &Layout) -> String {
        let mut text = format!(
            "deployment {id} failed at {event}: {}. Later lifecycle events did not run.",
            self.message
        );
        if !self.tail.is_empty() {
            text.push_str(&format!("\nlast output of {event}:"));
            for l in &self.tail {
                text.push_str(&format!("\n  {l}"));
            }
        }
        text.push_str(&format!("\nfull log: {}", layout.scripts_log.display()));
        text
    }
}

fn run_event(
    event: &str,
    archive: &Path,
    spec: &AppSpec,
    who: &Identity,
    log: &mut ScriptLog,
    verbose: u8,
) -> std::result::Result<Outcome, StepFailure> {
    let scripts = spec.scripts(event);
    if scripts.is_empty() {
        return Ok(Outcome::NoScripts);
    }
    log.event(event);
    for entry in scripts {
        run_script(event, archive, entry, who, log, verbose).map_err(|f| StepFailure {
            message: f.message,
            tail: f.tail,
        })?;
    }
    Ok(Outcome::Ran(scripts.len()))
}

fn download(
    source: &Source,
    layout: &Layout,
    root: &Path,
    group_id: &str,
    previous: Option<&Previous>,
) -> std::result::Result<Outcome, StepFailure> {
    let what = match source {
        Source::Folder(dir) => {
            copy_bundle(dir, &layout.archive).map_err(|e| StepFailure::plain(format!("{e:#}")))?;
            format!("copied {}", dir.display())
        }
        Source::Unpacked(dir) => {
            std::fs::rename(dir, &layout.archive)
                .map_err(|e| StepFailure::plain(format!("cannot move {} into place: {e}", dir.display())))?;
            "unpacked the zip".to_string()
        }
    };
    let mut keep = vec![layout.deployment_dir.as_path()];
    if let Some(p) = previous {
        keep.push(p.archive.as_path());
    }
    let removed = prune_archives(&root.join(group_id), &keep);
    let pruned = if removed.is_empty() {
        String::new()
    } else {
        format!("; removed {} old archive(s)", removed.len())
    };
    Ok(Outcome::Done(format!("{what} into deployment-archive{pruned}")))
}

fn install(spec: &AppSpec, layout: &Layout) -> std::result::Result<Outcome, StepFailure> {
    let step = || -> Result<String> {
        let removed = clean_previous_install(&layout.cleanup_file)?;
        let created = install_files(spec, &layout.archive)?;
        let list: String = created.iter().map(|p| format!("{}\n", p.display())).collect();
        write_atomic(&layout.cleanup_file, &list)?;
        // The agent records the last successful install right after Install.
        write_atomic(
            &layout.last_install_file,
            &format!("{}\n", layout.archive.display()),
        )?;
        Ok(format!(
            "{} path(s) from the previous install removed, {} installed",
            removed,
            created.len()
        ))
    };
    step()
        .map(Outcome::Done)
        .map_err(|e| StepFailure::plain(format!("{e:#}")))
}

#[cfg(test)]
mod tests;
