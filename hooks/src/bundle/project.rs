//! Bring your own server: `handoff init` writes what a project needs to deploy with the hooks
//! (`deploy.yml`, `appspec.yml`, `units/`), and `handoff bundle` packs any app folder with the
//! static hook executables into a revision zip that passes `lint-bundle`.
//!
//! The unit templates and the appspec are the ones this repository ships, compiled in: a
//! project gets the templates of the hooks it bundles. A folder without its own `appspec.yml`
//! or `units/` is bundled with these, so an app folder needs only the app and `deploy.yml`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::bundle::files::Packed;
use crate::config::{self, DeployConfig, Need, Ready, Strategy};
use crate::fault::Fault;

/// The appspec the hooks ship: the four lifecycle hooks, timeouts that cover the default
/// deadlines.
pub const APPSPEC: &str = include_str!("../../../appspec.yml");

/// Unit templates, by their file name in `units/`.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("app.socket", include_str!("../../../units/app.socket")),
    (
        "app-hold.service",
        include_str!("../../../units/app-hold.service"),
    ),
    ("app@.service", include_str!("../../../units/app@.service")),
    (
        "proxied@.service",
        include_str!("../../../units/proxied@.service"),
    ),
    ("front@.service", include_str!("../../../units/front@.service")),
];

/// The one executable a bundle carries in `hooks/`: every lifecycle hook, and `status` and
/// `rollback` for the operator.
pub const HOOK_BINARY: &str = "handoff";

/// A front build of its own inside a release, when the bundle ships one (tests do, to tell
/// front builds apart); otherwise the release's hooks executable ([`HOOK_BINARY`]
/// under `hooks/`) is the front.
pub const FRONT_BINARY: &str = "front/handoff-front";

/// The name the front runs under (`<root>/fronts/<id>/handoff-front`): `handoff` started
/// under this name is the front.
pub const FRONT_NAME: &str = "handoff-front";

/// The front executable of a release: its own front build if it ships one, else its hooks
/// executable.
pub fn front_binary(release_dir: &Path) -> PathBuf {
    let own = release_dir.join(FRONT_BINARY);
    if own.exists() {
        own
    } else {
        release_dir.join("hooks").join(HOOK_BINARY)
    }
}

/// The lifecycle hooks appspec.yml names, each a [`HOOK_SCRIPT`] in `hooks/` that runs
/// `handoff <hook>`: one static executable per revision instead of one per hook.
pub const HOOKS: [&str; 4] = [
    "application-stop",
    "before-install",
    "application-start",
    "validate-service",
];

/// What each of [`HOOKS`] is in a bundle: a script that runs the `handoff` beside it, with its
/// own file name as the step.
pub const HOOK_SCRIPT: &str = include_str!("../../hook.sh");

/// Where `handoff bundle` takes the hooks for `arch` from when `--hooks` is not given: the
/// folder of `exe` (this `handoff`) for its own architecture; for another, that
/// architecture's static build beside it, of the same profile (`target/<arch>-unknown-linux-musl/
/// release` for `make static`).
pub fn hooks_for(exe: &Path, arch: Arch) -> Result<PathBuf> {
    let own = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if arch == Arch::host() {
        return Ok(own);
    }
    let profile = own.file_name().unwrap_or("release".as_ref());
    let beside = own.join("../..").join(arch.target_triple()).join(profile);
    if beside.join(HOOK_BINARY).is_file() {
        return Ok(beside);
    }
    bail!(Fault::input(format!(
        "this handoff carries the {} hooks; for {arch} pass --hooks with the bin/ folder of the {arch} tarball \
         (handoff-<version>-{arch}.tar.gz) or the {arch} static build (target/{}/release, `make dist`)",
        Arch::host(),
        arch.target_triple()
    )))
}

/// Refuses hooks (and the front, when it is there) built for another architecture than `arch`.
pub fn check_hooks_arch(hooks: &Path, arch: Arch) -> Result<()> {
    for name in [HOOK_BINARY, "handoff-front"] {
        let path = hooks.join(name);
        if let Some(found) = crate::arch::elf_arch(&path)
            && found != Ok(arch)
        {
            bail!(Fault::input(format!(
                "{} is built for {}, not {arch}; pass --hooks with the {arch} build's folder, or --arch for the hosts' \
                 architecture",
                path.display(),
                found
                    .map(|a| a.to_string())
                    .unwrap_or_else(|m| format!("ELF machine {m:#x}"))
            )));
        }
    }
    Ok(())
}

/// What `handoff init` writes into deploy.yml.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub service: String,
    pub command: String,
    pub args: Vec<String>,
    pub listen: String,
    pub strategy: Strategy,
    pub ready: Ready,
    pub needs: Vec<Need>,
    /// `None`: X-Instance in native mode.
    pub instance_header: Option<String>,
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// `handoff init` without `--service`: the project folder's name, as a unit name.
pub fn service_for(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir)?;
    let name: String = abs
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if !config::is_safe_name(&name, false) {
        bail!(Fault::input(format!(
            "cannot name the service after the folder {}; pass --service NAME (letters, digits, '-', '_')",
            abs.display()
        )));
    }
    Ok(name)
}

/// The deploy.yml `handoff init` writes, with a comment on each choice.
pub fn deploy_yml(o: &InitOptions) -> String {
    let mut y = format!(
        "# The deploy config the hooks read from the bundle; README \"deploy.yml\" explains every field.\n\
         # Units: {0}.socket holds the listening socket across every release; {0}@<release>.service runs one.\n\
         service: {0}\n\
         # 0.0.0.0:80 behind a load balancer.\n\
         listen: [\"{1}\"]\n\
         strategy: {2}\n\
         app:\n  command: {3}\n",
        o.service,
        o.listen,
        o.strategy.name(),
        o.command
    );
    if !o.args.is_empty() {
        y.push_str(&format!("  args: {}\n", yaml_list(&o.args)));
    }
    if o.strategy != Strategy::Proxy {
        y.push_str(match o.ready {
            Ready::Notify => {
                "  # The app sends READY=1 once it serves the inherited socket.\n  ready: notify\n"
            }
            Ready::Probe => {
                "  # The app cannot send READY=1: it is ready once it answers health.path.\n  ready: probe\n"
            }
        });
    }
    if !o.needs.is_empty() {
        let names: Vec<String> = o.needs.iter().map(|n| n.name().to_string()).collect();
        y.push_str(&format!(
            "  # Hardening the runtime cannot live without (README \"Hardening profiles\").\n  needs: [{}]\n",
            names.join(", ")
        ));
    }
    y.push_str("  environment: {}\nhealth:\n  path: /healthz\n");
    if o.strategy == Strategy::Handoff {
        let header = o.instance_header.clone().unwrap_or_else(|| "X-Instance".into());
        y.push_str(&format!(
            "  # The app sends its INSTANCE environment variable (the release id) in this response header.\n  \
             instance_header: {header}\n"
        ));
    }
    y.push_str(
        "  stable_for: 2s\ndeadlines:\n  # Ready within this, or the new release is stopped.\n  start: 60s\n  \
         validate: 30s\ndrain:\n  # TimeoutStopSec=: above the app's own drain deadline.\n  budget: 30s\n\
         releases:\n  keep: 3\n",
    );
    y
}

/// Which templates a project of this strategy needs.
fn needed_templates(strategy: Strategy) -> Vec<&'static str> {
    let mut t = vec!["app.socket", "app-hold.service"];
    if strategy == Strategy::Proxy {
        t.extend(["proxied@.service", "front@.service"]);
    } else {
        t.push("app@.service");
    }
    t
}

fn template(name: &str) -> &'static str {
    TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .expect("every needed template is compiled in")
}

/// Writes deploy.yml, appspec.yml and units/ into `dir`; refuses to overwrite deploy.yml or
/// units/ unless `force`. An existing appspec.yml is never overwritten, with or without
/// `force`: handoff's four hooks are merged into it ([`crate::bundle::appspec_merge::merge`]), the
/// team's `files:`, `permissions:`, other hooks and comments kept. Nothing is written when
/// anything is refused. Returns the files written.
pub fn init(dir: &Path, o: &InitOptions, force: bool) -> Result<Vec<PathBuf>> {
    let yaml = deploy_yml(o);
    let cfg = DeployConfig::parse(&yaml).map_err(|e| Fault::input(format!("{e:#}")))?;
    let mut files: Vec<(PathBuf, String)> = vec![(dir.join(config::FILE_NAME), yaml)];
    for name in needed_templates(cfg.strategy) {
        files.push((dir.join("units").join(name), template(name).to_string()));
    }
    if !force && let Some((existing, _)) = files.iter().find(|(p, _)| p.exists()) {
        bail!(Fault::input(format!(
            "{} exists; init writes deploy.yml and units/ only into a project without them (--force overwrites \
             those; an existing appspec.yml is merged, never overwritten)",
            existing.display()
        )));
    }
    let appspec = dir.join("appspec.yml");
    match std::fs::read_to_string(&appspec) {
        Ok(existing) => {
            let merged = crate::bundle::appspec_merge::merge(&existing, dir)?;
            if merged != existing {
                tracing::info!(
                    "{}: handoff's four hooks merged in, each first in its event; every other line kept",
                    appspec.display()
                );
                files.push((appspec, merged));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => files.push((appspec, APPSPEC.to_string())),
        Err(e) => bail!(Fault::input(format!("cannot read {}: {e}", appspec.display()))),
    }
    std::fs::create_dir_all(dir.join("units"))
        .with_context(|| format!("cannot create {}/units", dir.display()))?;
    for (path, text) in &files {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // What the hooks would render from it, so a mistake shows now and not at BeforeInstall.
    crate::units::render(&cfg, dir)?;
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Where the bundle's executables come from: `hooks` (default: this executable's folder,
/// where the build puts every hook and a bundle keeps them).
fn hook_binary(hooks: &Path, name: &str) -> Result<PathBuf> {
    let p = hooks.join(name);
    if !crate::bundle::appspec::is_executable(&p) {
        bail!(Fault::input(format!(
            "{} is missing or not executable; bundle with the static build's folder (--hooks \
             target/x86_64-unknown-linux-musl/release after `make static`) or from an unpacked bundle's hooks/",
            p.display()
        )));
    }
    Ok(p)
}

/// One entry of the zip: where it comes from, its mode, or a symlink's target.
enum Entry {
    File(PathBuf, u32),
    Text(String, u32),
    Symlink(PathBuf),
    Dir,
}

/// What `bundle` did: the lint report of the zip, what it packed, and whether the zip was
/// written (never when the report has errors).
#[derive(Debug)]
pub struct Bundled {
    pub report: crate::bundle::appspec::Report,
    pub summary: crate::bundle::files::Summary,
    pub written: bool,
}

/// Packs `app` (a folder with deploy.yml) with the hook executables from `hooks` into the
/// zip `output`, adding the shipped appspec.yml and unit templates where the folder has none.
/// What of the folder ships is [`crate::bundle::files`]' choice (default exclusions,
/// `.handoffignore`, a file that looks like a secret refused). The zip is built as
/// `<output>.partial`, linted the way the agent will read it, and renamed to `output` only
/// when the lint has no error; otherwise the partial is removed and `output` is not touched.
pub fn bundle(app: &Path, hooks: &Path, output: &Path) -> Result<Bundled> {
    let cfg = DeployConfig::load(&app.join(config::FILE_NAME)).map_err(|e| {
        Fault::input(format!(
            "{e:#}; a bundle starts from a folder with deploy.yml (`handoff init` writes one)"
        ))
    })?;
    if app.join("hooks").exists() {
        bail!(Fault::input(format!(
            "{}/hooks exists; the bundle puts the hook executables there: rename that folder",
            app.display()
        )));
    }
    let partial = output.with_extension("zip.partial");
    let selection = crate::bundle::files::select(
        app,
        &[std::path::absolute(output)?, std::path::absolute(&partial)?],
    )?;
    let mut entries: Vec<(String, Entry)> = selection
        .entries
        .iter()
        .map(|(rel, p)| {
            let e = match p {
                Packed::File { path, mode, .. } => Entry::File(path.clone(), *mode),
                Packed::Symlink(target) => Entry::Symlink(target.clone()),
                Packed::Dir => Entry::Dir,
            };
            (rel.clone(), e)
        })
        .collect();
    if !app.join("appspec.yml").exists() {
        entries.push(("appspec.yml".into(), Entry::Text(APPSPEC.into(), 0o644)));
    }
    if !app.join("units").is_dir() {
        entries.push(("units/".into(), Entry::Dir));
    }
    for name in needed_templates(cfg.strategy) {
        if !app.join("units").join(name).exists() {
            entries.push((format!("units/{name}"), Entry::Text(template(name).into(), 0o644)));
        }
    }
    entries.push(("hooks/".into(), Entry::Dir));
    for name in HOOKS {
        entries.push((format!("hooks/{name}"), Entry::Text(HOOK_SCRIPT.into(), 0o755)));
    }
    entries.push((
        format!("hooks/{HOOK_BINARY}"),
        Entry::File(hook_binary(hooks, HOOK_BINARY)?, 0o755),
    ));

    let written = write_zip(&partial, &entries).and_then(|sizes| {
        let report = crate::bundle::lint::lint(&partial)?;
        Ok((sizes, report))
    });
    let (sizes, report) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let zip_bytes = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let summary = crate::bundle::files::Summary::of(
        &sizes,
        &selection.left_out,
        selection.ignore_file.clone(),
        zip_bytes,
    );
    if report.errors() > 0 {
        std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        return Ok(Bundled {
            report,
            summary,
            written: false,
        });
    }
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot move {} to {}", partial.display(), output.display()))?;
    Ok(Bundled {
        report,
        summary,
        written: true,
    })
}

/// Writes the zip; returns each file's path in it and size, for the summary.
fn write_zip(path: &Path, entries: &[(String, Entry)]) -> Result<Vec<(String, u64)>> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = zip::ZipWriter::new(file);
    let mut sizes = Vec::new();
    for (rel, entry) in entries {
        let o = |mode: u32| zip::write::SimpleFileOptions::default().unix_permissions(mode);
        match entry {
            Entry::Dir => w.add_directory(rel.as_str(), o(0o755))?,
            Entry::Symlink(target) => w.add_symlink(rel.as_str(), target.to_string_lossy(), o(0o777))?,
            Entry::Text(text, mode) => {
                w.start_file(rel.as_str(), o(*mode))?;
                w.write_all(text.as_bytes())?;
                sizes.push((rel.clone(), text.len() as u64));
            }
            Entry::File(src, mode) => {
                w.start_file(rel.as_str(), o(*mode))?;
                let mut f =
                    std::fs::File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
                let n = std::io::copy(&mut f, &mut w)
                    .with_context(|| format!("cannot pack {}", src.display()))?;
                sizes.push((rel.clone(), n));
            }
        }
    }
    w.finish()?;
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-project-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn options() -> InitOptions {
        InitOptions {
            service: "api".into(),
            command: "/usr/bin/gunicorn".into(),
            args: vec!["--workers".into(), "2".into(), "app:app".into()],
            listen: "127.0.0.1:8080".into(),
            strategy: Strategy::Handoff,
            ready: Ready::Notify,
            needs: vec![Need::Setuid],
            instance_header: None,
        }
    }

    #[test]
    fn init_writes_a_project_the_hooks_accept_and_never_overwrites_it() {
        let d = scratch("init");
        let written = init(&d, &options(), false).unwrap();
        assert_eq!(written.len(), 5, "{written:?}");
        let cfg = DeployConfig::load(&d.join("deploy.yml")).unwrap();
        assert_eq!(cfg.app.needs, vec![Need::Setuid]);
        assert_eq!(cfg.instance_header(), Some("X-Instance"));
        assert_eq!(cfg.app.args, ["--workers", "2", "app:app"]);
        let units = crate::units::render(&cfg, &d).unwrap();
        assert!(
            units[2]
                .text
                .contains("ExecStart=/usr/bin/gunicorn \"--workers\" \"2\" \"app:app\"\n")
        );
        assert!(units[2].text.contains("\nSystemCallFilter=@setuid\n"));
        let err = format!("{:#}", init(&d, &options(), false).unwrap_err());
        assert!(
            err.contains("deploy.yml exists") && err.contains("--force"),
            "{err}"
        );
        // A command the hooks would refuse is refused before anything is written.
        let e = scratch("init-bad");
        let bad = InitOptions {
            command: "bin/my app".into(),
            ..options()
        };
        assert!(format!("{:#}", init(&e, &bad, false).unwrap_err()).contains("app.command"));
        assert!(!e.join("deploy.yml").exists());
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(e).unwrap();
    }

    #[test]
    fn a_bundle_holds_the_app_the_shipped_templates_and_the_hooks_and_lints_clean() {
        let d = scratch("bundle");
        let app = d.join("app");
        std::fs::create_dir_all(app.join(".git")).unwrap();
        std::fs::write(app.join(".git/HEAD"), "x").unwrap();
        std::fs::write(app.join("app.py"), "def app(e, s): pass\n").unwrap();
        std::fs::write(app.join("deploy.yml"), deploy_yml(&options())).unwrap();
        let hooks = hook_dir(&d);
        let zip = d.join("api.zip");
        let done = bundle(&app, &hooks, &zip).unwrap();
        assert_eq!(done.report.errors(), 0, "{}", done.report);
        assert!(done.written);
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        for want in [
            "app.py",
            "deploy.yml",
            "appspec.yml",
            "units/app@.service",
            "units/app.socket",
            "hooks/application-start",
            "hooks/handoff",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with(".git")), "{names:?}");
        // Each hook runs the one executable beside it.
        let mut script = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("hooks/before-install").unwrap(), &mut script)
            .unwrap();
        assert_eq!(script, HOOK_SCRIPT);
        assert!(
            script.contains("exec \"$(dirname \"$0\")/handoff\" \"$(basename \"$0\")\""),
            "{script}"
        );
        // Without the hook executable there is no bundle.
        std::fs::remove_file(hooks.join(HOOK_BINARY)).unwrap();
        let err = format!("{:#}", bundle(&app, &hooks, &zip).unwrap_err());
        assert!(
            err.contains("handoff is missing") && err.contains("make static"),
            "{err}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A stand-in hook executable, as the static build's folder holds it.
    fn hook_dir(d: &Path) -> PathBuf {
        let hooks = d.join("bin");
        std::fs::create_dir_all(&hooks).unwrap();
        std::fs::write(hooks.join(HOOK_BINARY), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(hooks.join(HOOK_BINARY), std::fs::Permissions::from_mode(0o755)).unwrap();
        hooks
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn zip_names(zip: &Path) -> Vec<String> {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
        (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_real_apps_bundle_leaves_out_the_defaults_and_handoffignore_keeps_links_and_refuses_secrets() {
        let d = scratch("real-app");
        let app = d.join("app");
        put(&app.join("deploy.yml"), &deploy_yml(&options()));
        put(&app.join("app.py"), "def app(e, s): pass\n");
        put(&app.join(".git/HEAD"), "ref: refs/heads/main\n");
        put(&app.join(".env"), "SECRET=1\n");
        put(&app.join(".env.example"), "SECRET=changeme\n");
        put(&app.join("__pycache__/x.pyc"), "\0");
        put(&app.join(".venv/lib/site.py"), "");
        std::fs::create_dir_all(app.join(".venv/bin")).unwrap();
        symlink("/usr/bin/python3", app.join(".venv/bin/python3")).unwrap();
        symlink("python3", app.join(".venv/bin/python")).unwrap();
        symlink("lib", app.join(".venv/lib64")).unwrap();
        put(&app.join("node_modules/x/cli.js"), "#!/usr/bin/env node\n");
        put(&app.join("node_modules/.cache/big"), "cache");
        std::fs::create_dir_all(app.join("node_modules/.bin")).unwrap();
        symlink("../x/cli.js", app.join("node_modules/.bin/x")).unwrap();
        put(&app.join("docs/guide.md"), "# guide\n");
        put(&app.join("app.log"), "log\n");
        put(&app.join("keep.log"), "kept\n");
        put(
            &app.join("config/server.key"),
            "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n",
        );
        put(
            &app.join(crate::bundle::files::IGNORE_FILE),
            "# ours\ndocs/\n*.log\n!keep.log\n# the TLS key ships on purpose\n!config/server.key\n",
        );
        let hooks = hook_dir(&d);
        let zip = d.join("api.zip");
        let done = bundle(&app, &hooks, &zip).unwrap();
        assert_eq!(done.report.errors(), 0, "{}", done.report);
        assert!(done.written && zip.is_file() && !d.join("api.zip.partial").exists());
        let want: Vec<&str> = vec![
            ".env.example",
            ".handoffignore",
            ".venv/",
            ".venv/bin/",
            ".venv/bin/python",
            ".venv/bin/python3",
            ".venv/lib/",
            ".venv/lib/site.py",
            ".venv/lib64",
            "app.py",
            "config/",
            "config/server.key",
            "deploy.yml",
            "keep.log",
            "node_modules/",
            "node_modules/.bin/",
            "node_modules/.bin/x",
            "node_modules/x/",
            "node_modules/x/cli.js",
            "appspec.yml",
            "units/",
            "units/app.socket",
            "units/app-hold.service",
            "units/app@.service",
            "hooks/",
            "hooks/application-stop",
            "hooks/before-install",
            "hooks/application-start",
            "hooks/validate-service",
            "hooks/handoff",
        ];
        assert_eq!(zip_names(&zip), want);
        // Links are packed as links, the absolute one verbatim.
        let out = d.join("unpacked");
        std::fs::create_dir_all(&out).unwrap();
        crate::bundle::lint::unpack_zip(&zip, &out).unwrap();
        assert_eq!(
            std::fs::read_link(out.join(".venv/bin/python3")).unwrap(),
            Path::new("/usr/bin/python3")
        );
        assert_eq!(
            std::fs::read_link(out.join("node_modules/.bin/x")).unwrap(),
            Path::new("../x/cli.js")
        );
        let s = &done.summary;
        assert_eq!(
            s.left_out,
            [
                ".env",
                ".git/",
                "__pycache__/",
                "app.log",
                "docs/",
                "node_modules/.cache/"
            ]
        );
        assert_eq!(
            s.ignore_file.as_deref(),
            Some(app.join(".handoffignore").as_path())
        );
        // 8 of the app (links and folders are not files), the appspec, 3 templates, 5 hooks.
        assert_eq!(s.files, 17, "{s}");
        assert!(s.zip_bytes > 0 && s.bytes > 0, "{s}");
        assert!(s.to_string().contains("largest folders: "), "{s}");

        // A private key that no `!` line ships is refused by name, with the fix; no zip.
        put(
            &app.join("deploy_key.pem"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n",
        );
        let refused = d.join("refused.zip");
        let err = bundle(&app, &hooks, &refused).unwrap_err();
        assert_eq!(crate::fault::exit_code(&err), 2);
        let text = format!("{err:#}");
        assert!(
            text.contains("deploy_key.pem: holds a private key")
                && text.contains("add `!path` for it to")
                && !text.contains("server.key"),
            "{text}"
        );
        assert!(!refused.exists() && !d.join("refused.zip.partial").exists());
        std::fs::remove_file(app.join("deploy_key.pem")).unwrap();

        // A revision the lint refuses is not written either, and the partial is gone.
        symlink("../../outside", app.join("config/escape")).unwrap();
        let done = bundle(&app, &hooks, &refused).unwrap();
        assert!(!done.written && done.report.errors() == 1, "{}", done.report);
        assert!(
            done.report
                .to_string()
                .contains("config/escape: symlink to ../../outside")
        );
        assert!(!refused.exists() && !d.join("refused.zip.partial").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn init_merges_into_the_teams_appspec_even_with_force() {
        let d = scratch("init-merge");
        let team = "version: 0.0\nos: linux\n# ours\nfiles:\n  - source: /static\n    destination: /srv/static\n\
                    hooks:\n  AfterInstall:\n    - location: scripts/after.sh\n      timeout: 90\n";
        put(&d.join("appspec.yml"), team);
        put(&d.join("scripts/after.sh"), "#!/bin/sh\necho migrated\n");
        std::fs::set_permissions(d.join("scripts/after.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        put(&d.join("static/site.css"), "");
        let written = init(&d, &options(), false).unwrap();
        assert!(written.contains(&d.join("appspec.yml")), "{written:?}");
        let merged = std::fs::read_to_string(d.join("appspec.yml")).unwrap();
        assert!(
            merged.starts_with(team),
            "the team's lines first, unchanged:\n{merged}"
        );
        let (spec, problems) = crate::bundle::appspec::check_text(&merged, "appspec.yml");
        assert_eq!(problems, vec![]);
        assert_eq!(
            spec.unwrap().scripts("ApplicationStart")[0].location(),
            "hooks/application-start"
        );
        // --force rewrites deploy.yml and units/, and merges again: nothing is lost, nothing doubled.
        let again = init(&d, &options(), true).unwrap();
        assert!(
            !again.contains(&d.join("appspec.yml")),
            "unchanged, not rewritten: {again:?}"
        );
        assert_eq!(std::fs::read_to_string(d.join("appspec.yml")).unwrap(), merged);
        // A bundle of it lints clean: the merged appspec by the same rules.
        put(&d.join("app.py"), "");
        let hooks = hook_dir(&d.join("tools"));
        let done = bundle(&d, &hooks, &d.join("tools/api.zip")).unwrap();
        assert_eq!(
            done.report.errors() + done.report.warnings(),
            0,
            "{}",
            done.report
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
