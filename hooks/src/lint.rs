//! `lint-bundle`: a whole revision checked before it is uploaded — its `appspec.yml` by the
//! agent's rules ([`crate::appspec`]) and handoff's hooks first in their events
//! ([`crate::appspec_merge::check_order`]), and the bundle's own parts with the hooks' code:
//! `deploy.yml` with [`DeployConfig::load`], the unit templates with [`units::render`] and,
//! where it is installed, `systemd-analyze verify`, the units' fit to the app
//! ([`crate::fit`]), the hook timeouts against the deadlines ([`crate::timeouts`]), symlinks
//! by [`crate::links`]' rule (relative ones that leave the bundle; absolute ones whose target
//! this machine lacks, a warning), and a zip's entries and modes.
//!
//! Every problem names the file, the field and the fix; all of them are reported, not only
//! the first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::appspec::{Problem, Report, check_appspec, is_executable};
use crate::config::{self, DeployConfig};
use crate::links::{self, Link};
use crate::units;

/// `deploy.yml`, through the hooks' own loader, and `app.command` in the bundle.
fn check_deploy(bundle: &Path, problems: &mut Vec<Problem>) -> Option<DeployConfig> {
    let file = config::FILE_NAME;
    let cfg = match DeployConfig::load(&bundle.join(file)) {
        Ok(cfg) => cfg,
        Err(e) => {
            let root = e.root_cause().to_string();
            // The config's own messages start with the field they are about.
            let field = root
                .split_once(": ")
                .map(|(f, _)| f)
                .filter(|f| {
                    *f != "error" && f.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                })
                .unwrap_or("");
            // Paths relative to the bundle: a zip is linted in a temporary folder.
            let message = format!("{e:#}").replace(&format!("{}/", bundle.display()), "");
            problems.push(Problem::error(file, field, message));
            return None;
        }
    };
    let command = bundle.join(&cfg.app.command);
    if Path::new(&cfg.app.command).is_absolute() {
        if !is_executable(&command) {
            problems.push(Problem::warning(
                file,
                "app.command",
                format!(
                    "{} is not an executable program on this machine; it must be installed on every host the \
                     bundle deploys to (BeforeInstall refuses the deployment where it is not)",
                    cfg.app.command
                ),
            ));
        }
    } else if !command.is_file() {
        problems.push(Problem::error(
            file,
            "app.command",
            format!(
                "{} is not in the bundle; build the bundle with the app inside (scripts/bundle does)",
                cfg.app.command
            ),
        ));
    } else if !is_executable(&command) {
        problems.push(Problem::error(
            file,
            "app.command",
            format!(
                "{} is not executable; systemd cannot start it. chmod +x it before zipping (zip keeps modes)",
                cfg.app.command
            ),
        ));
    }
    if cfg.is_proxy() && !is_executable(&bundle.join(crate::proxy::FRONT_BINARY)) {
        problems.push(Problem::error(
            file,
            "strategy",
            format!(
                "strategy: proxy ships the front as {} in the bundle, and it is missing or not executable; build the \
                 bundle with `make bundle` (scripts/bundle puts it there)",
                crate::proxy::FRONT_BINARY
            ),
        ));
    }
    Some(cfg)
}

fn temp_dir(tag: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "handoff-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Removes its folder when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p) && p.is_file())
}

/// The unit templates, rendered with the hooks' own code, then `systemd-analyze verify`.
fn check_units(cfg: &DeployConfig, bundle: &Path, report: &mut Report) {
    let rendered = match units::render(cfg, bundle) {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(Problem::error(
                "units/",
                "",
                format!("{e:#}; the hooks cannot install the service's units"),
            ));
            return;
        }
    };
    report.problems.extend(crate::fit::check(cfg, bundle, &rendered));
    let Some(analyze) = find_on_path("systemd-analyze") else {
        report
            .notes
            .push("systemd-analyze is not on PATH: the unit files were rendered but not verified".into());
        return;
    };
    let dir = match temp_dir("units") {
        Ok(d) => TempDir(d),
        Err(e) => {
            report.notes.push(format!("unit files not verified: {e:#}"));
            return;
        }
    };
    let mut files = Vec::new();
    for u in &rendered {
        let path = dir.0.join(&u.name);
        if let Err(e) = std::fs::write(&path, &u.text) {
            report.notes.push(format!(
                "unit files not verified: cannot write {}: {e}",
                path.display()
            ));
            return;
        }
        files.push(path);
    }
    // The temp folder first, so the socket's Service= finds the holder; the trailing ':' keeps
    // the default search path for the targets the units name.
    let out = Command::new(analyze)
        .arg("verify")
        .args(&files)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.0.display()))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            report
                .notes
                .push(format!("unit files not verified: systemd-analyze: {e}"));
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let release_root = format!("{}/releases/", cfg.root().display());
    let dir_prefix = format!("{}/", dir.0.display());
    let templates: Vec<(String, String)> = units::templates(cfg)
        .into_iter()
        .map(|(file, name)| (name, format!("units/{file}")))
        .collect();
    let template_of = |name: &str| {
        templates
            .iter()
            .find(|(n, _)| {
                n == name
                    || n.replace("@.service", "@") == name.split('@').next().unwrap_or("").to_string() + "@"
            })
            .map(|(_, t)| t.as_str())
    };
    let fronts_root = format!("{}/fronts/", cfg.root().display());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // ExecStart= points into the release folder the hooks create on the instance
        // (/opt/<service>/releases/<release>/...), which does not exist on the machine that
        // lints the bundle: systemd-analyze reports exactly that as "Command ... is not
        // executable: No such file or directory". That one message is expected here.
        if (line.contains(&release_root) || line.contains(&fronts_root))
            && (line.contains("is not executable") || line.contains("No such file or directory"))
        {
            continue;
        }
        // "/tmp/…/shop@.service:15: Unknown key …" → units/app@.service, line 15 as rendered.
        let (file, field, message) = match line.strip_prefix(&dir_prefix).and_then(|rest| {
            let (name, rest) = rest.split_once(':')?;
            let (lineno, msg) = rest.split_once(':').unwrap_or(("", rest));
            Some((name, lineno, msg.trim()))
        }) {
            Some((name, lineno, msg)) => (
                template_of(name).unwrap_or("units/"),
                if lineno.chars().all(|c| c.is_ascii_digit()) && !lineno.is_empty() {
                    format!("line {lineno} of the rendered {name}")
                } else {
                    name.to_string()
                },
                msg.to_string(),
            ),
            None => {
                let unit = line.split(':').next().unwrap_or("");
                let file = template_of(unit).unwrap_or("units/");
                (file, String::new(), line.to_string())
            }
        };
        report.problems.push(Problem::error(
            file,
            field,
            format!(
                "systemd-analyze verify: {}; fix the directive (see systemd.unit(5), systemd.service(5))",
                message.trim_end_matches('.')
            ),
        ));
    }
}

/// Symlinks by [`crate::links`]' rule: a relative one that climbs out of the bundle is an
/// error (the archive is unpacked elsewhere, so it dangles or points at whatever the instance
/// has there); one to an absolute path is kept, and a warning when this machine lacks its
/// target (BeforeInstall refuses a host that lacks it).
fn check_symlinks(bundle: &Path, problems: &mut Vec<Problem>) {
    fn walk(root: &Path, dir: &Path, problems: &mut Vec<Problem>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                match links::classify(&rel, &target) {
                    Link::Inside => {}
                    Link::Escapes => problems.push(Problem::error(
                        &rel.display().to_string(),
                        "",
                        links::escape_message(&target),
                    )),
                    Link::Absolute => {
                        if std::fs::metadata(&target).is_err() {
                            problems.push(Problem::warning(
                                &rel.display().to_string(),
                                "",
                                format!(
                                    "symlink to {}, which this machine does not have; every host needs it \
                                     (BeforeInstall refuses one without it): {}",
                                    target.display(),
                                    links::install_hint(&target)
                                ),
                            ));
                        }
                    }
                }
            } else if meta.is_dir() {
                walk(root, &path, problems);
            }
        }
    }
    walk(bundle, bundle, problems);
}

/// The bundle's executables (its hooks, the app's command when it is in the bundle) are of one
/// architecture: the one deploy.yml states (`arch:`), or else the hooks' `handoff`'s.
fn check_arch(cfg: &DeployConfig, bundle: &Path, problems: &mut Vec<Problem>) {
    use crate::platform::elf_arch;
    let hooks = format!("hooks/{}", crate::project::HOOK_BINARY);
    let (arch, why) = match (cfg.arch, elf_arch(&bundle.join(&hooks))) {
        (Some(a), _) => (a, "deploy.yml says arch: ".to_string() + a.name()),
        (None, Some(Ok(a))) => (a, format!("{hooks} is {a}")),
        _ => return,
    };
    for (path, what) in crate::platform::foreign_executables(bundle, &cfg.app.command, arch) {
        let rel = path.strip_prefix(bundle).unwrap_or(&path).display().to_string();
        problems.push(Problem::error(
            &rel,
            "",
            format!(
                "{what} executable in a bundle for {arch} ({why}); every executable must be built for the hosts' \
                 architecture (`handoff bundle --arch {arch}`)"
            ),
        ));
    }
}

/// A hook that is our launcher ([`crate::project::HOOK_SCRIPT`]) needs the `handoff` beside it.
fn check_hook_binary(bundle: &Path, problems: &mut Vec<Problem>) {
    use crate::project::{HOOK_BINARY, HOOK_SCRIPT, HOOKS};
    let binary = bundle.join("hooks").join(HOOK_BINARY);
    if crate::appspec::is_executable(&binary) {
        return;
    }
    for hook in HOOKS {
        let rel = format!("hooks/{hook}");
        if std::fs::read_to_string(bundle.join(&rel)).is_ok_and(|text| text == HOOK_SCRIPT) {
            problems.push(Problem::error(
                &rel,
                "",
                format!(
                    "runs hooks/{HOOK_BINARY}, which is missing or not executable; bundle again with `handoff bundle` \
                     (or copy the static build's {HOOK_BINARY} into hooks/)"
                ),
            ));
        }
    }
}

/// Lints an unpacked bundle folder.
pub fn lint_dir(bundle: &Path) -> Report {
    let mut report = Report::default();
    let (spec, problems) = check_appspec(bundle);
    report.problems.extend(problems);
    report.problems.extend(crate::appspec_merge::check_order(bundle));
    if let Some(cfg) = check_deploy(bundle, &mut report.problems) {
        if let Some(spec) = &spec {
            report.problems.extend(crate::timeouts::check(spec, &cfg));
        }
        check_units(&cfg, bundle, &mut report);
        check_arch(&cfg, bundle, &mut report.problems);
    }
    check_hook_binary(bundle, &mut report.problems);
    check_symlinks(bundle, &mut report.problems);
    report
}

/// Lints a revision: a zip (unpacked into a temporary folder first) or a folder.
pub fn lint(path: &Path) -> Result<Report> {
    if path.is_dir() {
        return Ok(lint_dir(path));
    }
    if !path.is_file() {
        bail!(
            "{}: no such file or folder; pass a revision zip or an unpacked bundle",
            path.display()
        );
    }
    if !is_zip(path) {
        bail!(
            "{} is not a zip (no zip signature); pass the revision zip or the bundle folder",
            path.display()
        );
    }
    let dir = TempDir(temp_dir("lint")?);
    let unpack_problems = unpack_zip(path, &dir.0)?;
    let mut report = lint_dir(&dir.0);
    report.problems.splice(0..0, unpack_problems);
    Ok(report)
}

/// Whether a file is a zip archive (by its signature, whatever its name).
pub fn is_zip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06")
}

/// Unpacks a revision zip into `dest` with the files' modes, as the agent does. Entries whose
/// path would land outside `dest` are not written and come back as problems. Symlinks are
/// created last, so no file is ever written through one.
pub fn unpack_zip(zip_path: &Path, dest: &Path) -> Result<Vec<Problem>> {
    let name = zip_path.display().to_string();
    let file = std::fs::File::open(zip_path).with_context(|| format!("cannot open {name}"))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| {
        format!("{name} is not a readable zip; build it with `zip -r` from inside the bundle")
    })?;
    let mut problems = Vec::new();
    let mut links = Vec::new();
    let mut dir_modes = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .with_context(|| format!("{name}: cannot read entry {i}"))?;
        let raw = entry.name().map(|n| n.to_string()).unwrap_or_default();
        let Some(rel) = entry.enclosed_name() else {
            problems.push(Problem::error(
                &raw,
                "",
                format!("zip entry escapes the bundle (absolute or '..'); rebuild {name} from inside the bundle folder"),
            ));
            continue;
        };
        let target = dest.join(&rel);
        if entry.is_symlink() {
            let mut link = String::new();
            std::io::Read::read_to_string(&mut entry, &mut link)
                .with_context(|| format!("{name}: cannot read symlink {raw}"))?;
            links.push((target, link));
        } else if entry.is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            if let Some(mode) = entry.unix_mode() {
                dir_modes.push((target, mode & 0o7777));
            }
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut out = std::fs::File::create(&target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            std::io::copy(&mut entry, &mut out).with_context(|| format!("{name}: cannot unpack {raw}"))?;
            let mode = entry.unix_mode().map(|m| m & 0o7777).unwrap_or(0o644);
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        }
    }
    for (path, target) in links {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("cannot create the symlink {}", path.display()))?;
    }
    for (dir, mode) in dir_modes {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appspec::tests::GOOD;

    // --- bundles on disk -----------------------------------------------------------------

    fn exec(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Unit templates of the shape the hooks render, fixed here so that these tests do not
    /// follow edits of the repository's units/ (the first test checks those).
    const UNITS: [(&str, &str); 3] = [
        (
            "app.socket",
            "[Socket]\n{{listen_streams}}\nService={{service}}-hold.service\nFileDescriptorName=http\n\n\
             [Install]\nWantedBy=sockets.target\n",
        ),
        (
            "app-hold.service",
            "[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n",
        ),
        (
            "app@.service",
            "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nType=notify\nSockets={{service}}.socket\nNonBlocking=yes\n\
             EnvironmentFile={{root}}/releases/%i/app.env\nWorkingDirectory={{root}}/releases/%i\n\
             ExecStart={{root}}/releases/%i/{{command}}{{args}}\nTimeoutStartSec={{start_timeout}}\n\
             TimeoutStopSec={{stop_timeout}}\nKillMode=mixed\nRestart=on-failure\n{{output}}\n\n\
             [Install]\nWantedBy=multi-user.target\n",
        ),
    ];

    /// A bundle folder like scripts/bundle builds: the repository's appspec.yml and
    /// deploy.yml, its units/ (`repo_units`) or fixed ones, and stand-in executables.
    fn bundle_with(repo_units: bool) -> TempDir {
        let d = TempDir(temp_dir("lint-test").unwrap());
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for f in ["appspec.yml", "deploy.yml"] {
            std::fs::copy(repo.join(f), d.0.join(f)).unwrap();
        }
        std::fs::create_dir_all(d.0.join("units")).unwrap();
        for (f, text) in UNITS {
            if repo_units {
                std::fs::copy(repo.join("units").join(f), d.0.join("units").join(f)).unwrap();
            } else {
                std::fs::write(d.0.join("units").join(f), text).unwrap();
            }
        }
        for h in [
            "application-stop",
            "before-install",
            "application-start",
            "validate-service",
        ] {
            exec(&d.0.join("hooks").join(h), "#!/bin/sh\n");
        }
        exec(&d.0.join("bin/sample-app"), "#!/bin/sh\n");
        d
    }

    fn bundle() -> TempDir {
        bundle_with(false)
    }

    fn messages(r: &Report) -> String {
        r.problems.iter().map(|p| format!("{p}\n")).collect()
    }

    #[test]
    fn the_repos_bundle_lints_clean() {
        let d = bundle_with(true);
        let r = lint_dir(&d.0);
        assert_eq!(r.errors() + r.warnings(), 0, "{r}");
        if find_on_path("systemd-analyze").is_none() {
            assert!(r.notes.iter().any(|n| n.contains("not verified")), "{r}");
        } else {
            assert!(r.notes.is_empty(), "{r}");
        }
    }

    #[test]
    fn appspec_yaml_and_nested_appspec_are_named() {
        let d = bundle();
        std::fs::rename(d.0.join("appspec.yml"), d.0.join("appspec.yaml")).unwrap();
        let (_, p) = check_appspec(&d.0);
        assert!(
            p.len() == 1
                && p[0].to_string().contains("appspec.yaml")
                && p[0].message.contains("rename it to appspec.yml"),
            "{p:#?}"
        );
        std::fs::create_dir_all(d.0.join("rev")).unwrap();
        std::fs::rename(d.0.join("appspec.yaml"), d.0.join("rev/appspec.yml")).unwrap();
        let (_, p) = check_appspec(&d.0);
        assert!(
            p[0].to_string()
                .contains("rev/appspec.yml: appspec.yml must be at the bundle's root"),
            "{p:#?}"
        );
        std::fs::remove_dir_all(d.0.join("rev")).unwrap();
        let (_, p) = check_appspec(&d.0);
        assert!(
            p[0].to_string()
                .contains("appspec.yml: missing at the bundle's root"),
            "{p:#?}"
        );
    }

    #[test]
    fn our_hook_scripts_need_the_handoff_beside_them() {
        let d = bundle();
        for hook in crate::project::HOOKS {
            exec(&d.0.join("hooks").join(hook), crate::project::HOOK_SCRIPT);
        }
        let r = lint_dir(&d.0);
        let text = messages(&r);
        assert_eq!(r.errors(), 4, "{text}");
        assert!(
            text.contains(
                "error: hooks/before-install: runs hooks/handoff, which is missing or not executable"
            ),
            "{text}"
        );
        exec(&d.0.join("hooks/handoff"), "#!/bin/sh\n");
        let r = lint_dir(&d.0);
        assert_eq!(r.errors(), 0, "{}", messages(&r));
    }

    #[test]
    fn scripts_must_be_in_the_bundle_and_executable() {
        let d = bundle();
        std::fs::remove_file(d.0.join("hooks/validate-service")).unwrap();
        std::fs::set_permissions(
            d.0.join("hooks/before-install"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::remove_file(d.0.join("hooks/application-start")).unwrap();
        std::fs::create_dir(d.0.join("hooks/application-start")).unwrap();
        let r = lint_dir(&d.0);
        let text = messages(&r);
        assert_eq!((r.errors(), r.warnings()), (2, 1), "{text}");
        assert!(
            text.contains("error: appspec.yml: hooks.ValidateService[0].location: hooks/validate-service is not in the bundle"),
            "{text}"
        );
        assert!(
            text.contains("error: appspec.yml: hooks.ApplicationStart[0].location: hooks/application-start is not a file"),
            "{text}"
        );
        assert!(
            text.contains("warning: appspec.yml: hooks.BeforeInstall[0].location: hooks/before-install is not executable; the agent chmods it"),
            "{text}"
        );
        let text = GOOD.replace("hooks/before-install", "../outside");
        std::fs::write(d.0.join("appspec.yml"), text).unwrap();
        let (_, p) = check_appspec(&d.0);
        assert!(
            p.iter().any(|p| p.message.contains("points outside the bundle")),
            "{p:#?}"
        );
    }

    #[test]
    fn deploy_yml_errors_come_from_the_hooks_own_loader() {
        let d = bundle();
        let path = d.0.join("deploy.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("keep: 3", "keep: 1")).unwrap();
        let r = lint_dir(&d.0);
        assert_eq!(r.problems.len(), 1, "{r}");
        assert_eq!(r.problems[0].file, "deploy.yml");
        assert_eq!(r.problems[0].field, "releases.keep");
        assert!(r.problems[0].message.contains("keep at least 2"), "{r}");

        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(d.0.join("bin/sample-app"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = lint_dir(&d.0);
        assert!(
            r.problems.len() == 1
                && r.problems[0]
                    .to_string()
                    .contains("deploy.yml: app.command: bin/sample-app is not executable"),
            "{r}"
        );
        std::fs::remove_file(d.0.join("bin/sample-app")).unwrap();
        let r = lint_dir(&d.0);
        assert!(
            messages(&r).contains("app.command: bin/sample-app is not in the bundle"),
            "{r}"
        );
        std::fs::remove_file(&path).unwrap();
        let r = lint_dir(&d.0);
        assert!(
            messages(&r).contains("error: deploy.yml: cannot read the deploy config"),
            "{r}"
        );
    }

    #[test]
    fn unit_templates_are_rendered_and_verified() {
        let d = bundle();
        let path = d.0.join("units/app@.service");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("Type=notify", "Type=notify\nFooBar=1")).unwrap();
        let r = lint_dir(&d.0);
        if find_on_path("systemd-analyze").is_none() {
            assert_eq!(r.errors(), 0, "{r}");
            assert!(r.notes[0].contains("systemd-analyze is not on PATH"), "{r}");
        } else {
            assert_eq!(
                r.errors(),
                1,
                "only the bad directive, not the missing release: {r}"
            );
            let p = &r.problems[0];
            assert_eq!(p.file, "units/app@.service", "{r}");
            assert!(
                p.field.starts_with("line ") && p.field.contains("sample@.service"),
                "{r}"
            );
            assert!(
                p.message.contains("Unknown key") && p.message.contains("FooBar"),
                "{r}"
            );
            assert!(
                !messages(&r).contains("/releases/"),
                "the release's ExecStart, absent here, is not reported: {r}"
            );
        }
        std::fs::write(&path, text.replace("{{command}}", "{{comand}}")).unwrap();
        let r = lint_dir(&d.0);
        assert!(messages(&r).contains("unknown placeholder {{comand}}"), "{r}");
    }

    #[test]
    fn relative_symlinks_out_of_the_bundle_are_errors_absolute_ones_warn_when_missing_here() {
        let d = bundle();
        std::os::unix::fs::symlink("/etc/passwd", d.0.join("bin/abs")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/handoff/python3", d.0.join("bin/python3")).unwrap();
        std::os::unix::fs::symlink("../../x", d.0.join("bin/up")).unwrap();
        std::os::unix::fs::symlink("sample-app", d.0.join("bin/ok")).unwrap();
        std::os::unix::fs::symlink("../deploy.yml", d.0.join("bin/ok2")).unwrap();
        let r = lint_dir(&d.0);
        let text = messages(&r);
        assert_eq!((r.errors(), r.warnings()), (1, 1), "{text}");
        assert!(
            text.contains("error: bin/up: symlink to ../../x points outside the bundle"),
            "{text}"
        );
        assert!(
            text.contains(
                "warning: bin/python3: symlink to /nonexistent/handoff/python3, which this machine does not have"
            ) && text.contains("rebuild the venv"),
            "{text}"
        );
        assert!(
            !text.contains("bin/abs"),
            "a present absolute target is fine: {text}"
        );
    }

    #[test]
    fn zips_are_unpacked_with_modes_and_linted() {
        let d = bundle();
        std::os::unix::fs::symlink("/etc", d.0.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../outside", d.0.join("up-link")).unwrap();
        std::fs::set_permissions(
            d.0.join("hooks/before-install"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let zip = d.0.with_extension("zip");
        let _cleanup = TempDir(zip.clone());
        write_zip(&d.0, &zip);
        assert!(is_zip(&zip));
        assert!(!is_zip(&d.0.join("deploy.yml")));
        let r = lint(&zip).unwrap();
        let text = messages(&r);
        assert_eq!((r.errors(), r.warnings()), (1, 1), "{text}");
        assert!(
            text.contains("up-link: symlink to ../outside points outside"),
            "{text}"
        );
        assert!(!text.contains("etc-link"), "{text}");
        assert!(text.contains("hooks/before-install is not executable"), "{text}");

        let out = TempDir(temp_dir("unzip-test").unwrap());
        assert_eq!(unpack_zip(&zip, &out.0).unwrap(), vec![]);
        let mode = |p: &str| std::fs::metadata(out.0.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("hooks/application-start"), 0o755);
        assert_eq!(mode("hooks/before-install"), 0o644);
        assert_eq!(
            std::fs::read_link(out.0.join("etc-link")).unwrap(),
            Path::new("/etc")
        );
        assert!(lint(&d.0.join("nope.zip")).is_err());
        assert!(format!("{:#}", lint(&d.0.join("deploy.yml")).unwrap_err()).contains("is not a zip"));
    }

    #[test]
    fn zip_entries_that_escape_are_not_written() {
        let d = TempDir(temp_dir("zip-slip").unwrap());
        let zip = d.0.join("evil.zip");
        {
            let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            w.start_file("appspec.yml", o).unwrap();
            std::io::Write::write_all(&mut w, GOOD.as_bytes()).unwrap();
            w.start_file("../escaped", o).unwrap();
            w.finish().unwrap();
        }
        let out = d.0.join("out");
        std::fs::create_dir(&out).unwrap();
        let p = unpack_zip(&zip, &out).unwrap();
        assert!(
            p.len() == 1
                && p[0]
                    .to_string()
                    .contains("../escaped: zip entry escapes the bundle"),
            "{p:#?}"
        );
        assert!(!d.0.join("escaped").exists());
        assert!(out.join("appspec.yml").is_file());
    }

    /// A zip of `dir` with modes and symlinks, as `zip -r -y` writes it.
    fn write_zip(dir: &Path, zip: &Path) {
        fn add(w: &mut zip::ZipWriter<std::fs::File>, root: &Path, dir: &Path) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().to_string();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let o = zip::write::SimpleFileOptions::default()
                    .unix_permissions(meta.permissions().mode() & 0o7777);
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    w.add_symlink(rel, target.to_string_lossy(), o).unwrap();
                } else if meta.is_dir() {
                    w.add_directory(format!("{rel}/"), o).unwrap();
                    add(w, root, &path);
                } else {
                    w.start_file(rel, o).unwrap();
                    std::io::Write::write_all(w, &std::fs::read(&path).unwrap()).unwrap();
                }
            }
        }
        let mut w = zip::ZipWriter::new(std::fs::File::create(zip).unwrap());
        add(&mut w, dir, dir);
        w.finish().unwrap();
    }
}
