//! The service's three units, rendered from a release's `units/` templates with values from
//! its `deploy.yml`, and installed into `/etc/systemd/system`.
//!
//! Installing compares before writing (each file written durably: temporary file, fsync,
//! rename). A change of the socket's listen addresses is told apart ([`listen_change`]),
//! because systemd applies it only when the socket is re-created (see [`crate::deploy`]).
//!
//! Every rendered unit starts with a [`MARKER`] line. A unit file of the same name without it
//! belongs to someone else (`service: ssh` would otherwise overwrite the distribution's
//! `ssh@.service`): the hooks refuse to touch it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::DeployConfig;
use crate::fault::Fault;

pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The first line of every unit the hooks install.
pub const MARKER: &str =
    "# Managed by the handoff deploy hooks: edits here are replaced at the next deployment.";

/// Template file in `units/` → installed name. With `strategy: proxy` the instances come from
/// `proxied@.service` (no socket: the app listens on `$PORT`) and the front is a unit of its own.
pub fn templates(cfg: &DeployConfig) -> Vec<(&'static str, String)> {
    let mut t = vec![
        ("app.socket", cfg.socket_unit()),
        ("app-hold.service", cfg.holder_unit()),
    ];
    if cfg.is_proxy() {
        t.push(("proxied@.service", cfg.template_unit()));
        t.push(("front@.service", cfg.front_template_unit()));
    } else {
        t.push(("app@.service", cfg.template_unit()));
    }
    t
}

/// Services the hooks deployed on this host: the socket units in `dir` that they rendered.
pub fn installed_services(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let service = name.strip_suffix(".socket")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.starts_with(MARKER).then_some(service)
        })
        .collect();
    found.sort();
    found
}

/// A unit file ready to install.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub text: String,
}

/// Renders the units of the release at `release_dir` (its `units/` folder).
pub fn render(cfg: &DeployConfig, release_dir: &Path) -> Result<Vec<Rendered>> {
    let root = cfg.root();
    let args: String = cfg.app.args.iter().map(|a| format!(" \"{a}\"")).collect();
    let listen: Vec<String> = cfg.listen.iter().map(|a| format!("ListenStream={a}")).collect();
    let output = if cfg.app.log_to_file {
        format!(
            "StandardOutput=append:{}/logs/%i.log\nStandardError=inherit",
            root.display()
        )
    } else {
        "# Output goes to the journal: journalctl -u <unit>.".to_string()
    };
    let values = [
        ("service", cfg.service.clone()),
        ("root", root.display().to_string()),
        ("command", cfg.app.command.clone()),
        ("executable", cfg.executable()),
        ("needs", needs_lines(cfg)),
        (
            "app_host",
            crate::config::app_env::unit_lines(&cfg.app, crate::config::app_env::on_beanstalk()),
        ),
        ("args", args),
        ("listen_streams", listen.join("\n")),
        ("start_timeout", format!("{}ms", cfg.deadlines.start.as_millis())),
        (
            "stop_timeout",
            format!("{}ms", cfg.drain.stop_timeout().as_millis()),
        ),
        ("output", output),
        (
            "type",
            if cfg.is_proxy() {
                "exec"
            } else {
                cfg.app.ready.service_type()
            }
            .to_string(),
        ),
    ];
    let mut out = Vec::new();
    for (file, name) in templates(cfg) {
        let path = release_dir.join("units").join(file);
        let mut text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the unit template {}; the bundle must ship units/{file}",
                path.display()
            )
        })?;
        let instance = file == "app@.service" || file == "proxied@.service";
        if instance {
            check_placeholders(cfg, file, &text)?;
        }
        for (key, value) in &values {
            text = text.replace(&format!("{{{{{key}}}}}"), value);
        }
        if cfg.app.needs.contains(&crate::config::Need::Proc) {
            text = without_proc_settings(&text);
        }
        if let Some(at) = text.find("{{") {
            let end = text[at..].find("}}").map(|e| at + e + 2).unwrap_or(text.len());
            bail!(Fault::input(format!(
                "units/{file}: unknown placeholder {}; known: {}",
                &text[at..end],
                values
                    .iter()
                    .map(|(k, _)| format!("{{{{{k}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if file == "app@.service" {
            check_readiness(cfg, &text)?;
        }
        let guard = match file {
            "app@.service" | "proxied@.service" => Some(GuardKey::Serving),
            "front@.service" => Some(GuardKey::Front),
            _ => None,
        };
        if let Some(key) = guard {
            text = add_boot_guard(cfg, &text, key);
        }
        if file == "app.socket" && cfg.takeover.is_some() {
            text = text.replacen(
                "[Socket]\n",
                "[Socket]\n# deploy.yml takeover: the socket joins the listening socket of the unit that serves the\n\
                 # port today, in one reuseport group (README: taking over from your unit).\nReusePort=yes\n",
                1,
            );
        }
        out.push(Rendered {
            name,
            text: format!("{MARKER}\n{text}"),
        });
    }
    Ok(out)
}

/// What a boot guard matches in `state.json`: a release instance starts when the state
/// records it as `serving`, a front instance when it records it as the `front`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardKey {
    Serving,
    Front,
}

impl GuardKey {
    fn name(self) -> &'static str {
        match self {
            GuardKey::Serving => "serving",
            GuardKey::Front => "front",
        }
    }

    /// The line that names `id` in `state.json` (serde_json's pretty form, `"key": "id"`) and
    /// in the starting marker.
    pub fn line(self, id: &str) -> String {
        format!("\"{}\": \"{id}\"", self.name())
    }
}

/// The boot guard, added to every instance template (releases and fronts) after `[Service]`:
///
/// ```text
/// ExecCondition=+/bin/grep -qsF -e "\"serving\": \"%i\"" <root>/state.json /run/handoff/<service>/starting
/// ```
///
/// An instance starts only when the state records it (as the release that serves, or as the
/// front), or when the hooks are starting it now ([`mark_starting`]: a marker under `/run`,
/// which a boot clears). So after a power cut only the recorded release and front start, even
/// if an interrupted retire left the old one enabled. A failed condition skips the unit (it is
/// not a failure). `+` runs the check outside the unit's sandbox (its dynamic user cannot
/// read the state). The state is the commit point: there is no second file to keep in step.
pub const BOOT_GUARD: &str = "ExecCondition=";

/// The file of instances the hooks are starting now, one [`GuardKey::line`] a line.
pub fn starting_path(cfg: &DeployConfig) -> PathBuf {
    Path::new("/run/handoff").join(&cfg.service).join("starting")
}

fn add_boot_guard(cfg: &DeployConfig, text: &str, key: GuardKey) -> String {
    let guard = format!(
        "# Boot guard (added by the hooks): start only the {what} that {root}/state.json records, or one the \
         hooks are starting now (a marker under /run, which a boot clears). After a power cut an instance left \
         enabled by an interrupted switch stays down.\n\
         {BOOT_GUARD}+/bin/grep -qsF -e \"\\\"{key}\\\": \\\"%i\\\"\" {root}/state.json {starting}\n",
        what = if key == GuardKey::Front {
            "front"
        } else {
            "release"
        },
        key = key.name(),
        root = cfg.root().display(),
        starting = starting_path(cfg).display(),
    );
    match text.find("[Service]\n") {
        Some(at) => {
            let end = at + "[Service]\n".len();
            format!("{}{guard}{}", &text[..end], &text[end..])
        }
        None => format!("{text}\n[Service]\n{guard}"),
    }
}

/// Marks an instance the hooks are about to start, so its boot guard lets it start before the
/// state records it. Under `/run`: a boot forgets it.
pub fn mark_starting(cfg: &DeployConfig, key: GuardKey, id: &str) -> Result<()> {
    let path = starting_path(cfg);
    let line = key.line(id);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    if text.lines().any(|l| l == line) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, format!("{text}{line}\n")).with_context(|| {
        format!(
            "cannot write {}: the boot guard would not let {id} start",
            path.display()
        )
    })
}

/// Forgets a [`mark_starting`] mark (the instance is recorded, or abandoned).
pub fn unmark_starting(cfg: &DeployConfig, key: GuardKey, id: &str) {
    let path = starting_path(cfg);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let line = key.line(id);
    let kept: String = text
        .lines()
        .filter(|l| *l != line)
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        let _ = std::fs::write(&path, kept);
    }
}

/// `app.needs` as unit directives, for the template's `{{needs}}` line. Each comes after the
/// strict defaults it relaxes: the last assignment wins (`SystemCallFilter=` adds to the
/// allow list).
fn needs_lines(cfg: &DeployConfig) -> String {
    use crate::config::Need;
    if cfg.app.needs.is_empty() {
        return "# app.needs: none, the strictest profile.".into();
    }
    cfg.app
        .needs
        .iter()
        .map(|n| match n {
            Need::Jit => "# app.needs: jit (a JIT compiler writes machine code to memory, then runs it).\n\
                          MemoryDenyWriteExecute=no"
                .to_string(),
            Need::Setuid => "# app.needs: setuid (workers call setuid()/setgid() to their own ids; without \
                             capabilities no id can change).\nSystemCallFilter=@setuid"
                .to_string(),
            Need::Proc => "# app.needs: proc (ProtectProc= and ProcSubset= are left out: systemd before 247 \
                           does not know them)."
                .to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The settings `app.needs: [proc]` leaves out of every unit of the service.
pub const PROC_SETTINGS: [&str; 2] = ["ProtectProc=", "ProcSubset="];

/// `text` without the lines of [`PROC_SETTINGS`] (`app.needs: [proc]`).
fn without_proc_settings(text: &str) -> String {
    text.lines()
        .filter(|l| !PROC_SETTINGS.iter().any(|s| l.trim_start().starts_with(s)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A template must have the lines deploy.yml's settings go into: `{{needs}}` for `app.needs`,
/// `{{app_host}}` for the host's environment files, credentials and directories
/// ([`crate::config::app_env`]), `{{executable}}` for a command installed on the host.
fn check_placeholders(cfg: &DeployConfig, file: &str, text: &str) -> Result<()> {
    if !cfg.app.needs.is_empty() && !text.contains("{{needs}}") {
        bail!(Fault::input(format!(
            "units/{file}: deploy.yml app.needs asks for {}, but the template has no {{{{needs}}}} line to put it in; \
             add a line `{{{{needs}}}}` after its SystemCallFilter= lines (as the shipped template has)",
            cfg.app
                .needs
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if crate::config::app_env::configured(&cfg.app) && !text.contains("{{app_host}}") {
        bail!(Fault::input(format!(
            "units/{file}: deploy.yml sets app.environment_files, app.credentials or an app.*_directory, but the \
             template has no {{{{app_host}}}} line to put them in; add a line `{{{{app_host}}}}` right after its \
             `EnvironmentFile={{{{root}}}}/releases/%i/app.env` line (as the shipped template has)"
        )));
    }
    if !text.contains("{{app_host}}") && crate::config::app_env::on_beanstalk() {
        tracing::warn!(
            "units/{file} has no {{{{app_host}}}} line: Elastic Beanstalk's environment properties ({}) do not reach \
             the service; add `{{{{app_host}}}}` after the app.env line",
            crate::config::app_env::BEANSTALK_ENV
        );
    }
    if Path::new(&cfg.app.command).is_absolute() && !text.contains("{{executable}}") {
        bail!(Fault::input(format!(
            "units/{file}: app.command {} is a program on the host, but the template's ExecStart= does not use \
             {{{{executable}}}}; write `ExecStart={{{{executable}}}}{{{{args}}}}`",
            cfg.app.command
        )));
    }
    Ok(())
}

/// The instance template's `Type=` must be what `app.ready` expects: a `Type=notify` unit
/// whose app never sends READY=1 fails every start after `deadlines.start`; a `Type=exec`
/// unit with `ready: notify` would count a release as started before it serves.
fn check_readiness(cfg: &DeployConfig, template: &str) -> Result<()> {
    let declared = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Type="))
        .next_back()
        .unwrap_or("simple");
    let want = cfg.app.ready.service_type();
    if declared != want {
        let ready = match cfg.app.ready {
            crate::config::Ready::Notify => "notify",
            crate::config::Ready::Probe => "probe",
        };
        bail!(Fault::input(format!(
            "units/app@.service: Type={declared}, but deploy.yml app.ready is {ready}, which needs Type={want}; \
             write `Type={{{{type}}}}` in the template (the hooks fill it in from app.ready), or set app.ready: {}",
            if declared == "notify" { "notify" } else { "probe" }
        )));
    }
    Ok(())
}

/// Refuses unit names that belong to someone else: a file in `dir` without our marker, or a
/// unit systemd loads from anywhere but `dir` (a distribution's `/lib/systemd/system`).
/// `fragments` maps each name to the path systemd loaded it from ("" when not found).
pub fn check_ownership(units: &[Rendered], dir: &Path, fragments: &[(String, String)]) -> Result<()> {
    for unit in units {
        let path = dir.join(&unit.name);
        let ours = match std::fs::read_to_string(&path) {
            // Units of hooks older than the marker carry the shipped templates' header.
            Ok(text) => {
                text.lines().next() == Some(MARKER) || text.contains("— rendered by the hooks from units/")
            }
            Err(_) => true,
        };
        let elsewhere = fragments
            .iter()
            .find(|(name, _)| name == &unit.name)
            .map(|(_, f)| f.as_str())
            .filter(|f| !f.is_empty() && Path::new(f) != path);
        if !ours || elsewhere.is_some() {
            bail!(Fault::input(format!(
                "{} already exists and was not installed by these hooks ({}); deploy.yml `service:` must name a \
                 service of its own: pick another name (the units would be {})",
                unit.name,
                elsewhere.map_or_else(|| path.display().to_string(), str::to_string),
                units
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// What installing changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Units whose file was created or changed.
    pub written: Vec<String>,
    /// What each written file held before (None: it did not exist), to undo the install.
    pub previous: Vec<(PathBuf, Option<String>)>,
}

impl Changes {
    pub fn any(&self) -> bool {
        !self.written.is_empty()
    }
}

/// Writes the rendered units into `dir` (atomically each), only those that differ.
pub fn install(units: &[Rendered], dir: &Path, dry_run: bool) -> Result<Changes> {
    let mut changes = Changes::default();
    for unit in units {
        let path: PathBuf = dir.join(&unit.name);
        let before = std::fs::read_to_string(&path).ok();
        if before.as_deref() == Some(unit.text.as_str()) {
            continue;
        }
        changes.written.push(unit.name.clone());
        changes.previous.push((path.clone(), before.clone()));
        if dry_run {
            println!("dry-run: would write {}", path.display());
            continue;
        }
        std::fs::create_dir_all(dir)?;
        crate::durable::write_durably(&path, unit.text.as_bytes())
            .with_context(|| format!("cannot install {}", path.display()))?;
    }
    Ok(changes)
}

/// Puts back what `install` replaced (each file durably), removing what it created.
pub fn undo(changes: &Changes) -> Result<()> {
    for (path, before) in &changes.previous {
        match before {
            Some(text) => crate::durable::write_durably(path, text.as_bytes()),
            None => std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display())),
        }
        .with_context(|| format!("cannot restore {}", path.display()))?;
    }
    Ok(())
}

/// The `ListenStream=` lines of an installed socket unit when a rendered one changes them
/// (None when the addresses stay): systemd applies new addresses only to a re-created socket.
pub fn listen_change(installed: &str, rendered: &str) -> Option<Vec<String>> {
    let before = listen_lines(installed);
    (before != listen_lines(rendered)).then_some(before)
}

/// A socket unit's text with its `ListenStream=` lines replaced by `addresses` (in place of
/// the first one).
pub fn with_listen(text: &str, addresses: &[String]) -> String {
    let mut out = String::new();
    let mut placed = false;
    for line in text.lines() {
        if line.trim_start().starts_with("ListenStream=") {
            if !placed {
                for a in addresses {
                    out.push_str(&format!("ListenStream={a}\n"));
                }
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn listen_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("ListenStream="))
        .map(|l| l.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release_with_units() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "handoff-units-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("units")).unwrap();
        let repo_units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
        for f in ["app.socket", "app-hold.service", "app@.service"] {
            std::fs::copy(repo_units.join(f), d.join("units").join(f)).unwrap();
        }
        d
    }

    fn cfg(listen: &str) -> DeployConfig {
        DeployConfig::parse(&format!(
            "service: shop\nlisten: [\"{listen}\", \"[::1]:8081\"]\napp:\n  command: bin/shop\n  args: [\"-v\"]\ndrain:\n  budget: 20s\n"
        ))
        .unwrap()
    }

    #[test]
    fn renders_every_placeholder() {
        let dir = release_with_units();
        let units = render(&cfg("127.0.0.1:8080"), &dir).unwrap();
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["shop.socket", "shop-hold.service", "shop@.service"]);
        for u in &units {
            assert!(!u.text.contains("{{"), "{}: {}", u.name, u.text);
            assert!(u.text.starts_with(MARKER), "{}: {}", u.name, u.text);
        }
        assert!(
            units[0]
                .text
                .contains("ListenStream=127.0.0.1:8080\nListenStream=[::1]:8081\n")
        );
        assert!(units[0].text.contains("Service=shop-hold.service"));
        assert!(!units[0].text.contains("ReusePort"));
        let mut taking = cfg("127.0.0.1:8080");
        taking.takeover = Some("legacy.service".into());
        let socket = &render(&taking, &dir).unwrap()[0].text;
        assert!(socket.contains("[Socket]\n# deploy.yml takeover"), "{socket}");
        assert!(
            socket.contains("\nReusePort=yes\nListenStream=127.0.0.1:8080\n"),
            "{socket}"
        );
        assert!(
            units[2]
                .text
                .contains("ExecStart=/opt/shop/releases/%i/bin/shop \"-v\"\n")
        );
        assert!(units[2].text.contains("Sockets=shop.socket"));
        // The boot guard, right after [Service]; systemd unquotes `\"` to `"`.
        assert!(
            units[2]
                .text
                .contains("[Service]\n# Boot guard (added by the hooks)")
                && units[2].text.contains(
                    "\nExecCondition=+/bin/grep -qsF -e \"\\\"serving\\\": \\\"%i\\\"\" /opt/shop/state.json \
                 /run/handoff/shop/starting\n"
                ),
            "{}",
            units[2].text
        );
        assert!(!units[0].text.contains(BOOT_GUARD) && !units[1].text.contains(BOOT_GUARD));
        assert_eq!(GuardKey::Serving.line("d-2"), "\"serving\": \"d-2\"");
        assert!(
            units[2].text.contains("\nType=notify\n"),
            "app.ready defaults to notify"
        );
        let mut probe = cfg("127.0.0.1:8080");
        probe.app.ready = crate::config::Ready::Probe;
        assert!(render(&probe, &dir).unwrap()[2].text.contains("\nType=exec\n"));
        // A template with a fixed Type= that app.ready contradicts is refused with the fix.
        let template = dir.join("units/app@.service");
        let fixed = std::fs::read_to_string(&template)
            .unwrap()
            .replace("Type={{type}}", "Type=notify");
        std::fs::write(&template, fixed).unwrap();
        let err = format!("{:#}", render(&probe, &dir).unwrap_err());
        assert!(err.contains("write `Type={{type}}` in the template"), "{err}");
        // drain.budget 20s, but the default idle hold (60 s) may outlast it: 5 s past the hold.
        assert!(units[2].text.contains("TimeoutStopSec=65000ms"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn install_writes_only_changes_and_reports_a_new_address() {
        let dir = release_with_units();
        let target = dir.join("installed");
        let first = install(&render(&cfg("127.0.0.1:8080"), &dir).unwrap(), &target, false).unwrap();
        assert_eq!(first.written.len(), 3);
        let installed = std::fs::read_to_string(target.join("shop.socket")).unwrap();
        let same = render(&cfg("127.0.0.1:8080"), &dir).unwrap();
        assert_eq!(listen_change(&installed, &same[0].text), None);
        let again = install(&same, &target, false).unwrap();
        assert!(!again.any(), "nothing changed, nothing written");
        let elsewhere = render(&cfg("127.0.0.1:9090"), &dir).unwrap();
        assert_eq!(
            listen_change(&installed, &elsewhere[0].text).unwrap()[0],
            "ListenStream=127.0.0.1:8080"
        );
        let moved = install(&elsewhere, &target, false).unwrap();
        assert_eq!(moved.written, vec!["shop.socket"]);
        undo(&moved).unwrap();
        let restored = std::fs::read_to_string(target.join("shop.socket")).unwrap();
        assert!(restored.contains("ListenStream=127.0.0.1:8080\n"), "{restored}");
        undo(&first).unwrap();
        assert!(
            !target.join("shop.socket").exists(),
            "a unit that did not exist before is removed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn units_of_someone_else_are_refused() {
        let dir = release_with_units();
        let target = dir.join("installed");
        let units = render(&cfg("127.0.0.1:8080"), &dir).unwrap();
        check_ownership(&units, &target, &[]).unwrap();
        install(&units, &target, false).unwrap();
        check_ownership(&units, &target, &[]).expect("units the hooks installed are theirs");
        // A hand-written (or distribution) unit of the same name is never overwritten.
        std::fs::write(target.join("shop@.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
        let err = format!("{:#}", check_ownership(&units, &target, &[]).unwrap_err());
        assert!(
            err.contains("shop@.service already exists and was not installed by these hooks"),
            "{err}"
        );
        std::fs::remove_file(target.join("shop@.service")).unwrap();
        // systemd loads shop.socket from the vendor folder: refused too.
        let vendor = vec![(
            "shop.socket".to_string(),
            "/lib/systemd/system/shop.socket".to_string(),
        )];
        let err = format!("{:#}", check_ownership(&units, &target, &vendor).unwrap_err());
        assert!(
            err.contains("/lib/systemd/system/shop.socket") && err.contains("pick another name"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn app_needs_and_a_host_command_render_into_the_template_or_are_refused_with_the_line_to_add() {
        let dir = release_with_units();
        let strict = render(&cfg("127.0.0.1:8080"), &dir).unwrap()[2].text.clone();
        assert!(
            strict.contains("MemoryDenyWriteExecute=yes\n") && !strict.contains("MemoryDenyWriteExecute=no")
        );
        assert!(!strict.contains("SystemCallFilter=@setuid"));
        let mut c = cfg("127.0.0.1:8080");
        c.app.needs = vec![crate::config::Need::Jit, crate::config::Need::Setuid];
        c.app.command = "/usr/bin/node".into();
        let relaxed = render(&c, &dir).unwrap()[2].text.clone();
        // Each relaxation comes after the strict line it overrides (the last assignment wins).
        let at = |needle: &str| {
            relaxed
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} not in {relaxed}"))
        };
        assert!(at("MemoryDenyWriteExecute=no") > at("MemoryDenyWriteExecute=yes"));
        assert!(at("SystemCallFilter=@setuid") > at("SystemCallFilter=~@privileged"));
        assert!(relaxed.contains("ExecStart=/usr/bin/node \"-v\"\n"), "{relaxed}");
        assert!(relaxed.contains("ProtectProc=invisible\n") && relaxed.contains("ProcSubset=pid\n"));
        // proc leaves the /proc settings out of every unit (systemd before 247 lacks them).
        c.app.needs.push(crate::config::Need::Proc);
        for unit in render(&c, &dir).unwrap() {
            assert!(
                !unit
                    .text
                    .lines()
                    .any(|l| l.starts_with("ProtectProc=") || l.starts_with("ProcSubset=")),
                "{}: {}",
                unit.name,
                unit.text
            );
        }
        assert!(crate::platform::check(245, &render(&c, &dir).unwrap()).is_ok());
        c.app.needs.pop();
        // A template of an older bundle, without the lines to put them in.
        let template = dir.join("units/app@.service");
        let old = std::fs::read_to_string(&template)
            .unwrap()
            .replace("{{needs}}\n", "")
            .replace("{{executable}}", "{{root}}/releases/%i/{{command}}");
        std::fs::write(&template, old).unwrap();
        let err = format!("{:#}", render(&c, &dir).unwrap_err());
        assert!(
            err.contains("has no {{needs}} line") && err.contains("jit, setuid"),
            "{err}"
        );
        c.app.needs.clear();
        let err = format!("{:#}", render(&c, &dir).unwrap_err());
        assert!(err.contains("write `ExecStart={{executable}}{{args}}`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn host_files_credentials_and_directories_render_after_app_env_or_are_refused_with_the_line_to_add() {
        let dir = release_with_units();
        let repo_units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
        for f in ["proxied@.service", "front@.service"] {
            std::fs::copy(repo_units.join(f), dir.join("units").join(f)).unwrap();
        }
        let host = "  environment_files: [/etc/shop/env, -/etc/shop/optional.env]\n  credentials: { db_password: \
                    /etc/shop/db_password }\n  state_directory: shop\n  runtime_directory: shop\n";
        let native = DeployConfig::parse(&format!(
            "service: shop\nlisten: [\"127.0.0.1:8080\"]\nhealth: {{ instance_header: X-Instance }}\napp:\n  command: bin/shop\n{host}"
        ))
        .unwrap();
        let proxied = DeployConfig::parse(&format!(
            "service: shop\nlisten: [\"127.0.0.1:8080\"]\nstrategy: proxy\napp:\n  command: bin/shop\n{host}"
        ))
        .unwrap();
        let expected = "EnvironmentFile=/etc/shop/env\nEnvironmentFile=-/etc/shop/optional.env\n\
                        LoadCredential=db_password:/etc/shop/db_password\nStateDirectory=shop\nRuntimeDirectory=shop\n\
                        RuntimeDirectoryPreserve=yes\n";
        for (cfg, after) in [
            (&native, None),
            (&proxied, Some("EnvironmentFile=/opt/shop/releases/%i/port.env\n")),
        ] {
            let units = render(cfg, &dir).unwrap();
            let instance = &units.iter().find(|u| u.name == "shop@.service").unwrap().text;
            let directives: String = instance
                .lines()
                .filter(|l| {
                    [
                        "EnvironmentFile=",
                        "LoadCredential=",
                        "StateDirectory=",
                        "RuntimeDirectory",
                    ]
                    .iter()
                    .any(|d| l.starts_with(d))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            // The release's app.env first, the host's files after it (their values win); with
            // strategy: proxy the hooks' port.env last, so no host file can move the port.
            assert_eq!(
                directives,
                format!(
                    "EnvironmentFile=/opt/shop/releases/%i/app.env\n{expected}{}",
                    after.unwrap_or("")
                ),
                "{instance}"
            );
            assert!(
                instance.contains("# Two instances run at once during a switch"),
                "{instance}"
            );
        }
        // Without the fields, one comment line and no directive.
        let bare = render(&cfg("127.0.0.1:8080"), &dir).unwrap()[2].text.clone();
        assert!(bare.contains("\n# app.environment_files, app.credentials, app.*_directory: none.\n"));
        // An older template without the placeholder is refused with the line to add.
        let template = dir.join("units/app@.service");
        let old = std::fs::read_to_string(&template)
            .unwrap()
            .replace("{{app_host}}\n", "");
        std::fs::write(&template, old).unwrap();
        let err = format!("{:#}", render(&native, &dir).unwrap_err());
        assert!(
            err.contains("units/app@.service: deploy.yml sets app.environment_files")
                && err.contains("add a line `{{app_host}}` right after its `EnvironmentFile={{root}}/releases/%i/app.env` line"),
            "{err}"
        );
        assert_eq!(crate::fault::exit_code(&render(&native, &dir).unwrap_err()), 2);
        // A config without the fields still renders from it.
        render(&cfg("127.0.0.1:8080"), &dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn listen_lines_are_replaced_in_place() {
        let text = "[Socket]\nListenStream=127.0.0.1:2\nListenStream=[::1]:2\nBacklog=4096\n";
        assert_eq!(
            with_listen(text, &["127.0.0.1:1".into()]),
            "[Socket]\nListenStream=127.0.0.1:1\nBacklog=4096\n"
        );
    }

    #[test]
    fn unknown_placeholders_are_named() {
        let dir = release_with_units();
        std::fs::write(
            dir.join("units/app-hold.service"),
            "[Service]\nExecStart={{nope}}\n",
        )
        .unwrap();
        let err = format!("{:#}", render(&cfg("127.0.0.1:8080"), &dir).unwrap_err());
        assert!(
            err.contains("units/app-hold.service: unknown placeholder {{nope}}"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
