//! Releases on the instance: `/opt/<service>/releases/<release>/`, one per deployment.
//!
//! The agent's `files:` install deletes the previous revision's files and prunes old archives,
//! so a release that must be able to serve again (rollback) lives in a folder of our own. A
//! release is copied out of the revision once, into a staging folder that is renamed into
//! place when complete; it is never written again after that. `state.json` beside the
//! releases says which one serves and which served before.
//!
//! Crash safety: every file the hooks rely on is written to a temporary name, fsynced,
//! renamed into place and its folder fsynced, so a hook killed at any instant leaves either
//! the old or the new version. A switch records its intent (`switching`) before it changes
//! anything, and commits (`serving`) in one write the moment the new release has answered:
//! whatever runs next finds either a committed switch or one to undo ([`crate::deploy`]).
//! A release is pruned by renaming it out of the list first, then deleting it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

mod copy;

use copy::Copy;

use crate::config::{self, DeployConfig};
use crate::durable::{sync_dir, sync_dirs, write_durably, write_durably_mode};
use crate::fault::Fault;

/// Marker written last into a release: its presence means the copy is complete.
const COMPLETE: &str = ".release-complete";
/// What the hooks know about a staged release (the hooks' version that staged it, when).
const META: &str = ".release.json";
/// Prefix of a release being pruned: out of the list at once, deleted after.
const REMOVING: &str = ".removing-";
/// The schema of `state.json` this version writes. Fields it does not know are kept as they
/// are, so an older hook (ApplicationStop runs the previous revision's) never drops what a
/// newer one recorded.
pub const STATE_SCHEMA: u32 = 2;
/// `events.log` is rotated to `events.log.1` beyond this size.
const EVENTS_MAX_BYTES: u64 = 1 << 20;

/// The version of these hooks, recorded with every release they stage.
pub const HOOKS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which release serves, which served before, and what is under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    #[serde(default)]
    pub schema: u32,
    pub serving: Option<String>,
    pub previous: Option<String>,
    /// Releases that failed to start or validate: never chosen as a rollback target.
    #[serde(default)]
    pub failed: Vec<String>,
    /// A switch that began and was neither committed nor undone (the hook was killed): its
    /// units may be installed and its instance may run. The next step undoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<Switching>,
    /// A deployment switched by ApplicationStart that ValidateService has not judged yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validating: Option<Validating>,
    /// Listen addresses written to the socket unit but not yet applied to the running socket
    /// (a hook killed while it re-created the socket): the next step applies them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_pending: Option<String>,
    /// The socket's addresses before that move (its `ListenStream=` values): where a failed
    /// move goes back to, even after the unit file was rewritten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_before: Vec<String>,
    /// `strategy: proxy`: the id of the front that holds the socket (`<service>-front@<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<String>,
    /// The unit that served the port before the first deployment took it over
    /// (deploy.yml `takeover:`), stopped and disabled since: `handoff uninstall` starts it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<String>,
    /// Fields of other versions, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            schema: STATE_SCHEMA,
            serving: None,
            previous: None,
            failed: Vec::new(),
            switching: None,
            validating: None,
            socket_pending: None,
            socket_before: Vec::new(),
            front: None,
            taken_over: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl State {
    pub fn mark_failed(&mut self, release: &str) {
        if !self.failed.iter().any(|f| f == release) {
            self.failed.push(release.to_string());
        }
    }
    pub fn is_failed(&self, release: &str) -> bool {
        self.failed.iter().any(|f| f == release)
    }
}

/// A switch in progress: `to` is starting beside `from` (None on a first deployment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Switching {
    pub to: String,
    pub from: Option<String>,
    pub hook: String,
    pub deployment: String,
}

/// ApplicationStart switched `release` for `deployment`; ValidateService is next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Validating {
    pub deployment: String,
    pub release: String,
}

/// What a staged release records about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReleaseMeta {
    pub hooks_version: String,
    pub deployment: String,
    pub staged_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at: u64,
    pub hook: String,
    pub deployment: String,
    pub message: String,
}

pub struct ReleaseStore {
    root: PathBuf,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ReleaseStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn for_config(cfg: &DeployConfig) -> Self {
        Self::new(cfg.root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn dir(&self, release: &str) -> PathBuf {
        self.releases_dir().join(release)
    }

    pub fn is_complete(&self, release: &str) -> bool {
        self.dir(release).join(COMPLETE).is_file()
    }

    /// Copies a revision into `releases/<release>` unless it is there already.
    /// Returns whether it copied.
    pub fn stage(&self, revision: &Path, release: &str, cfg: &DeployConfig) -> Result<bool> {
        if !config::is_safe_name(release, false) {
            bail!(Fault::input(format!(
                "release id '{release}' is not usable as a folder and unit name; use letters, digits, '-' and '_' \
                 (CodeDeploy deployment ids like d-ABC123 are)"
            )));
        }
        if self.is_complete(release) {
            tracing::debug!(
                "release {release} is already staged at {}",
                self.dir(release).display()
            );
            return Ok(false);
        }
        // A virtualenv's interpreter (or any absolute link's target) missing on this host fails
        // the deployment before anything here changes.
        crate::links::check_absolute_links(revision)?;
        let releases = self.releases_dir();
        create_private_dir(&self.root)?;
        create_private_dir(&releases)?;
        self.clear_leftovers();
        let staging = releases.join(format!(".staging-{release}"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot clear an interrupted copy at {}", staging.display()))?;
        }
        let final_dir = self.dir(release);
        if final_dir.exists() {
            // An incomplete release (no marker): a copy that was interrupted before the rename.
            std::fs::remove_dir_all(&final_dir)
                .with_context(|| format!("cannot clear the incomplete release {}", final_dir.display()))?;
        }
        let revision = revision
            .canonicalize()
            .with_context(|| format!("the revision folder {} is not readable", revision.display()))?;
        // Files unchanged since the serving release (the hooks' executable, most of a
        // virtualenv or node_modules) are hard links to its copies, already on disk: only
        // what changed is written and synced.
        let serving = self
            .load_state()
            .ok()
            .and_then(|s| s.serving)
            .filter(|r| r != release && self.is_complete(r))
            .map(|r| self.dir(&r));
        let mut copy = Copy {
            top: &revision,
            like: serving.as_deref(),
            written: Vec::new(),
            linked: 0,
        };
        copy.tree(&revision, &staging).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staging);
        })?;
        if copy.linked > 0 {
            tracing::debug!(
                "{} files linked from the serving release (unchanged), {} written",
                copy.linked,
                copy.written.len()
            );
        }
        write_env_file(&staging.join("app.env"), cfg)?;
        let meta = ReleaseMeta {
            hooks_version: HOOKS_VERSION.into(),
            deployment: release.into(),
            staged_at: now(),
        };
        write_durably(
            &staging.join(META),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        // Everything copied reaches the disk before the marker says it is complete: each file
        // written, then every folder (which makes the links durable too).
        for file in &copy.written {
            std::fs::File::open(file)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", file.display()))?;
        }
        sync_dirs(&staging)?;
        write_durably(&staging.join(COMPLETE), format!("{}\n", now()).as_bytes())?;
        std::fs::rename(&staging, &final_dir)
            .with_context(|| format!("cannot move the staged release into {}", final_dir.display()))?;
        sync_dir(&releases)?;
        Ok(true)
    }

    /// What the release recorded when it was staged (None for releases staged by hooks
    /// older than this record).
    pub fn meta(&self, release: &str) -> Option<ReleaseMeta> {
        let text = std::fs::read_to_string(self.dir(release).join(META)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Complete releases, oldest first.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut found: Vec<(u64, String)> = Vec::new();
        let entries = match std::fs::read_dir(self.releases_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("cannot list releases"),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !self.is_complete(&name) {
                continue;
            }
            let staged = std::fs::read_to_string(entry.path().join(COMPLETE))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            found.push((staged, name));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, n)| n).collect())
    }

    /// Removes releases beyond `keep`, never one in `protect`: releases in `failed` go first
    /// (oldest first), then the oldest good ones, so the newest good releases stay as rollback
    /// targets however many deployments failed. Returns what it removed.
    pub fn prune(&self, keep: usize, protect: &[&str], failed: &[String]) -> Result<Vec<String>> {
        let all = self.list()?;
        let is_failed = |r: &String| failed.contains(r);
        let unprotected = |r: &&String| !protect.contains(&r.as_str());
        let mut removable: Vec<&String> = all.iter().filter(unprotected).filter(|r| is_failed(r)).collect();
        removable.extend(all.iter().filter(unprotected).filter(|r| !is_failed(r)));
        let excess = all.len().saturating_sub(keep);
        removable.truncate(excess);
        let mut removed = Vec::new();
        for r in removable {
            // Out of the list in one rename, so an interrupted delete never leaves a
            // half-deleted release that looks kept.
            let doomed = self.releases_dir().join(format!("{REMOVING}{r}"));
            std::fs::rename(self.dir(r), &doomed)
                .with_context(|| format!("cannot remove old release {r}"))?;
            removed.push(r.clone());
        }
        sync_dir(&self.releases_dir())?;
        self.clear_leftovers();
        for r in &removed {
            let _ = std::fs::remove_file(self.root.join("logs").join(format!("{r}.log")));
        }
        Ok(removed)
    }

    /// Deletes what interrupted prunes and copies left behind.
    pub fn clear_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.releases_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(REMOVING)
                && let Err(e) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!("cannot delete {}: {e}", entry.path().display());
            }
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn load_state(&self) -> Result<State> {
        match std::fs::read_to_string(self.state_path()) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not valid; restore it or delete it (the hooks then treat the running instance as serving)",
                    self.state_path().display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.state_path().display())),
        }
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync the folder).
    pub fn save_state(&self, state: &State) -> Result<()> {
        create_private_dir(&self.root)?;
        let mut state = state.clone();
        state.schema = state.schema.max(STATE_SCHEMA);
        // Readable by the front (a dynamic user), which routes to the serving release at
        // start; it holds release ids only. Written by root only.
        write_durably_mode(
            &self.state_path(),
            serde_json::to_string_pretty(&state)?.as_bytes(),
            0o644,
        )
    }

    /// Loads the state, applies `change`, saves, and records an event. Only the state write
    /// can fail it: the event log is a record, not a commit.
    pub fn update(
        &self,
        hook: &str,
        deployment: &str,
        message: &str,
        change: impl FnOnce(&mut State),
    ) -> Result<State> {
        let mut state = self.load_state()?;
        change(&mut state);
        self.save_state(&state)?;
        if let Err(e) = self.record(hook, deployment, message) {
            tracing::warn!(
                "cannot record the event in {}: {e:#}",
                self.events_path().display()
            );
        }
        Ok(state)
    }

    /// Appends an event to `events.log` (one JSON object a line). Append-only, so hooks of
    /// any version can record without rewriting what newer ones wrote.
    pub fn record(&self, hook: &str, deployment: &str, message: &str) -> Result<()> {
        create_private_dir(&self.root)?;
        let event = Event {
            at: now(),
            hook: hook.into(),
            deployment: deployment.into(),
            message: message.into(),
        };
        let path = self.events_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > EVENTS_MAX_BYTES) {
            std::fs::rename(&path, self.root.join("events.log.1"))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{}", serde_json::to_string(&event)?)?;
        Ok(())
    }

    pub fn events_path(&self) -> PathBuf {
        self.root.join("events.log")
    }

    /// The last `n` events.
    pub fn recent_events(&self, n: usize) -> Vec<Event> {
        let text = std::fs::read_to_string(self.events_path()).unwrap_or_default();
        let all: Vec<Event> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        all[all.len().saturating_sub(n)..].to_vec()
    }
}

/// Root-owned, not writable by anyone else: the service's code must not be changeable by it.
fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Copies `from` into `to`, by [`crate::links`]' rule for symlinks: one to an absolute path is
/// recreated as that same link (never resolved: the host provides its target), a relative one
/// is kept if it stays inside the revision and refused if it climbs out or points nowhere.
/// Anything that is not a file, a folder or a symlink is refused. Files lose group/other write
/// permission.
/// The variable that gives a native release deploy.yml `drain.idle_hold`, in milliseconds.
pub const IDLE_HOLD_ENV: &str = "HANDOFF_IDLE_HOLD_MS";

/// The app's environment as a systemd EnvironmentFile (one KEY=value a line, values quoted).
fn write_env_file(path: &Path, cfg: &DeployConfig) -> Result<()> {
    let mut text = String::from("# written by the deploy hooks from deploy.yml app.environment\n");
    for (k, v) in &cfg.app.environment {
        let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("{k}=\"{escaped}\"\n"));
    }
    // drain.idle_hold, for an app that holds idle keep-alive connections for the balancer
    // (sample-app/README.md, drain step 5). Behind our front the front is that balancer,
    // and it stops sending to a retired release by itself: no hold there.
    if !cfg.is_proxy() && !cfg.app.environment.contains_key(IDLE_HOLD_ENV) {
        text.push_str(&format!("{IDLE_HOLD_ENV}={}\n", cfg.drain.idle_hold.as_millis()));
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::copy::copy_error;
    use super::*;

    fn cfg() -> DeployConfig {
        DeployConfig::parse(
            "service: t\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n  environment:\n    GREETING: 'say \"hi\"'\n",
        )
        .unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-release-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn revision(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/app"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("bin/app"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.join("deploy.yml"), "x").unwrap();
    }

    #[test]
    fn stage_copies_once_and_lists_in_order() {
        let base = temp("stage");
        let rev = base.join("rev");
        revision(&rev);
        let store = ReleaseStore::new(base.join("root"));
        assert!(store.stage(&rev, "d-1", &cfg()).unwrap());
        assert!(
            !store.stage(&rev, "d-1", &cfg()).unwrap(),
            "a staged release is never copied again"
        );
        let mode = std::fs::metadata(store.dir("d-1").join("bin/app"))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "group/other write bits are dropped");
        let env = std::fs::read_to_string(store.dir("d-1").join("app.env")).unwrap();
        assert!(env.contains("GREETING=\"say \\\"hi\\\"\""), "{env}");
        // A native release learns drain.idle_hold (default: the ALB's 60 s idle timeout).
        assert!(env.contains("\nHANDOFF_IDLE_HOLD_MS=60000\n"), "{env}");
        assert_eq!(store.list().unwrap(), vec!["d-1"]);
        let meta = store.meta("d-1").unwrap();
        assert_eq!(
            (meta.hooks_version.as_str(), meta.deployment.as_str()),
            (HOOKS_VERSION, "d-1")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn files_unchanged_since_the_serving_release_are_links_to_it_and_the_rest_copies() {
        let base = temp("link");
        let rev = base.join("rev");
        revision(&rev);
        std::fs::write(rev.join("bin/same-length"), "aaaa").unwrap();
        std::fs::write(rev.join("bin/mode"), "m").unwrap();
        let store = ReleaseStore::new(base.join("root"));
        assert!(store.stage(&rev, "d-1", &cfg()).unwrap());
        // d-2: bin/app as it was, one file with other bytes of the same length, one with another mode.
        std::fs::write(rev.join("bin/same-length"), "aaab").unwrap();
        std::fs::set_permissions(rev.join("bin/mode"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ino = |release: &str, file: &str| std::fs::metadata(store.dir(release).join(file)).unwrap().ino();

        // Not serving yet: nothing is linked.
        assert!(store.stage(&rev, "d-2", &cfg()).unwrap());
        assert_ne!(ino("d-1", "bin/app"), ino("d-2", "bin/app"));

        let serving = State {
            serving: Some("d-1".into()),
            ..State::default()
        };
        store.save_state(&serving).unwrap();
        assert!(store.stage(&rev, "d-3", &cfg()).unwrap());
        assert_eq!(
            ino("d-1", "bin/app"),
            ino("d-3", "bin/app"),
            "unchanged: a link to the serving copy"
        );
        assert_eq!(ino("d-1", "deploy.yml"), ino("d-3", "deploy.yml"));
        assert_ne!(
            ino("d-1", "bin/same-length"),
            ino("d-3", "bin/same-length"),
            "other bytes: copied"
        );
        assert_eq!(
            std::fs::read_to_string(store.dir("d-3").join("bin/same-length")).unwrap(),
            "aaab"
        );
        assert_eq!(
            std::fs::read_to_string(store.dir("d-1").join("bin/same-length")).unwrap(),
            "aaaa"
        );
        assert_ne!(
            ino("d-1", "bin/mode"),
            ino("d-3", "bin/mode"),
            "another mode: copied"
        );
        assert_ne!(
            ino("d-1", "app.env"),
            ino("d-3", "app.env"),
            "written by the hooks, never linked"
        );
        // Removing the serving release leaves the new one whole.
        std::fs::remove_dir_all(store.dir("d-1")).unwrap();
        assert_eq!(
            std::fs::read_to_string(store.dir("d-3").join("bin/app")).unwrap(),
            "#!/bin/sh\n"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn the_idle_hold_reaches_native_releases_only() {
        let dir = temp("idle-hold");
        std::fs::create_dir_all(&dir).unwrap();
        let parse = |extra: &str| {
            DeployConfig::parse(&format!(
                "service: t\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n{extra}"
            ))
            .unwrap()
        };
        let native = parse("drain:\n  budget: 10s\n  idle_hold: 1min 30s\n");
        assert_eq!(native.drain.stop_timeout(), std::time::Duration::from_secs(95));
        write_env_file(&dir.join("native.env"), &native).unwrap();
        let env = std::fs::read_to_string(dir.join("native.env")).unwrap();
        assert!(env.ends_with("HANDOFF_IDLE_HOLD_MS=90000\n"), "{env}");
        // Behind our front, the front stops sending to a retired release by itself.
        let proxied = parse("strategy: proxy\n");
        write_env_file(&dir.join("proxied.env"), &proxied).unwrap();
        let env = std::fs::read_to_string(dir.join("proxied.env")).unwrap();
        assert!(!env.contains(IDLE_HOLD_ENV), "{env}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn absolute_symlinks_are_recreated_verbatim_relative_escapes_refused() {
        let base = temp("symlink");
        let rev = base.join("rev");
        revision(&rev);
        std::fs::create_dir_all(rev.join(".venv/bin")).unwrap();
        std::fs::create_dir_all(rev.join(".venv/lib")).unwrap();
        // /bin/sh exists on every host these tests run on; "/bin" itself is often a link.
        std::os::unix::fs::symlink("/bin/sh", rev.join(".venv/bin/python3")).unwrap();
        std::os::unix::fs::symlink("python3", rev.join(".venv/bin/python")).unwrap();
        std::os::unix::fs::symlink("lib", rev.join(".venv/lib64")).unwrap();
        let store = ReleaseStore::new(base.join("root"));
        assert!(store.stage(&rev, "d-1", &cfg()).unwrap());
        let d = store.dir("d-1");
        assert_eq!(
            std::fs::read_link(d.join(".venv/bin/python3")).unwrap(),
            Path::new("/bin/sh")
        );
        assert_eq!(
            std::fs::read_link(d.join(".venv/bin/python")).unwrap(),
            Path::new("python3")
        );
        assert_eq!(
            std::fs::read_link(d.join(".venv/lib64")).unwrap(),
            Path::new("lib")
        );

        // A relative link that climbs out is refused, and nothing is left behind.
        std::os::unix::fs::symlink("../../etc/passwd", rev.join("bin/passwd")).unwrap();
        let err = format!("{:#}", store.stage(&rev, "d-2", &cfg()).unwrap_err());
        assert!(
            err.contains("bin/passwd points outside the bundle (to ../../etc/passwd)"),
            "{err}"
        );
        assert!(!store.dir("d-2").exists());
        std::fs::remove_file(rev.join("bin/passwd")).unwrap();

        // An absolute target this host lacks fails before anything is created.
        std::os::unix::fs::symlink(
            "/nonexistent/handoff/python3.11",
            rev.join(".venv/bin/python3.11"),
        )
        .unwrap();
        let err = store.stage(&rev, "d-3", &cfg()).unwrap_err();
        assert_eq!(crate::fault::exit_code(&err), 3);
        assert!(
            format!("{err:#}").contains("`.venv/bin/python3.11` links to /nonexistent/handoff/python3.11"),
            "{err:#}"
        );
        assert_eq!(store.list().unwrap(), vec!["d-1"]);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn copy_errors_keep_the_io_error_so_host_faults_exit_3() {
        let (a, b) = (Path::new("/r/a"), Path::new("/opt/shop/releases/d-1/a"));
        let code =
            |errno| crate::fault::exit_code(&copy_error(a, b, std::io::Error::from_raw_os_error(errno)));
        for errno in [
            nix::libc::ENOSPC,
            nix::libc::EDQUOT,
            nix::libc::EROFS,
            nix::libc::EACCES,
        ] {
            assert_eq!(code(errno), 3, "errno {errno}");
        }
        assert_eq!(code(nix::libc::EIO), 1);
        let e = copy_error(a, b, std::io::Error::from_raw_os_error(nix::libc::EROFS));
        assert!(
            format!("{e:#}")
                .starts_with("cannot copy /r/a to /opt/shop/releases/d-1/a: Read-only file system"),
            "{e:#}"
        );
    }

    #[test]
    fn unsafe_release_ids_are_refused() {
        let base = temp("ids");
        let store = ReleaseStore::new(base.join("root"));
        for id in ["../x", "a/b", "", "a b", "x@y"] {
            assert!(store.stage(&base, id, &cfg()).is_err(), "{id} accepted");
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let base = temp("prune");
        let store = ReleaseStore::new(base.join("root"));
        for (i, r) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let d = store.dir(r);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(COMPLETE), format!("{}\n", 100 + i)).unwrap();
        }
        // keep 3, and "a" (oldest) serves: b and c go.
        assert_eq!(store.prune(3, &["a"], &[]).unwrap(), vec!["b", "c"]);
        assert_eq!(store.list().unwrap(), vec!["a", "d", "e"]);
        // A prune interrupted after its rename: the release is no longer listed, and the
        // next prune deletes what is left.
        std::fs::rename(store.dir("d"), store.releases_dir().join(".removing-d")).unwrap();
        assert_eq!(store.list().unwrap(), vec!["a", "e"]);
        store.prune(3, &[], &[]).unwrap();
        assert!(!store.releases_dir().join(".removing-d").exists());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn prune_removes_failed_releases_before_the_last_good_ones() {
        let base = temp("prune-failed");
        let store = ReleaseStore::new(base.join("root"));
        // v1 good, a release that failed at start, v2 good, v3 failed validation (rolled
        // back to v2): the kept releases must still hold a good one besides the serving v2.
        for (i, r) in ["v1", "f1", "v2", "v3"].iter().enumerate() {
            let d = store.dir(r);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(COMPLETE), format!("{}\n", 100 + i)).unwrap();
        }
        let failed = vec!["f1".to_string(), "v3".to_string()];
        assert_eq!(store.prune(3, &["v2", "v3"], &failed).unwrap(), vec!["f1"]);
        assert_eq!(store.list().unwrap(), vec!["v1", "v2", "v3"]);
        // keep 1: every unprotected release goes, failed ones first.
        assert_eq!(store.prune(1, &["v2"], &failed).unwrap(), vec!["v3", "v1"]);
        assert_eq!(store.list().unwrap(), vec!["v2"]);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn state_round_trips_and_events_append() {
        let base = temp("state");
        let store = ReleaseStore::new(base.join("root"));
        assert_eq!(store.load_state().unwrap(), State::default());
        for i in 0..12 {
            store
                .update("test", "d", &format!("event {i}"), |s| {
                    s.serving = Some("d-2".into())
                })
                .unwrap();
        }
        let s = store.load_state().unwrap();
        assert_eq!(s.serving.as_deref(), Some("d-2"));
        let events = store.recent_events(10);
        assert_eq!(events.len(), 10);
        assert_eq!(events.last().unwrap().message, "event 11");
        // A state file written by a newer version, with fields this one does not know, loads,
        // and saving it again keeps those fields.
        std::fs::write(
            store.state_path(),
            r#"{"schema":9,"serving":"d-9","previous":null,"future":{"a":1}}"#,
        )
        .unwrap();
        store
            .update("test", "d", "older hook", |s| s.previous = Some("d-8".into()))
            .unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(store.state_path()).unwrap()).unwrap();
        assert_eq!(raw["future"], serde_json::json!({"a": 1}), "{raw}");
        assert_eq!(raw["schema"], 9, "a newer schema number is never lowered: {raw}");
        assert_eq!(raw["serving"], "d-9");
        assert_eq!(raw["previous"], "d-8");
        // events.log is rotated past its size limit, so it never grows without bound.
        std::fs::write(store.events_path(), vec![b'x'; EVENTS_MAX_BYTES as usize + 1]).unwrap();
        store.record("test", "d", "after rotation").unwrap();
        assert!(store.root().join("events.log.1").exists());
        assert_eq!(store.recent_events(10).len(), 1);
        // A state file of the first version (no schema) loads.
        std::fs::write(store.state_path(), r#"{"serving":"d-1","previous":null}"#).unwrap();
        assert_eq!(store.load_state().unwrap().serving.as_deref(), Some("d-1"));
        std::fs::remove_dir_all(base).unwrap();
    }
}
