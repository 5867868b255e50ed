//! `lint-bundle`: a whole revision checked before it is uploaded — its `appspec.yml` by the
//! agent's rules ([`crate::bundle::appspec`]) and handoff's hooks first in their events
//! ([`crate::bundle::appspec_merge::check_order`]), and the bundle's own parts with the hooks' code:
//! `deploy.yml` with [`DeployConfig::load`], the unit templates with [`units::render`] and,
//! where it is installed, `systemd-analyze verify`, the units' fit to the app
//! ([`crate::bundle::fit`]), the hook timeouts against the deadlines ([`crate::bundle::timeouts`]), symlinks
//! by [`crate::links`]' rule (relative ones that leave the bundle; absolute ones whose target
//! this machine lacks, a warning), and a zip's entries and modes.
//!
//! Every problem names the file, the field and the fix; all of them are reported, not only
//! the first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bundle::appspec::{Problem, Report, check_appspec, is_executable};
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
    if cfg.is_proxy() && !is_executable(&crate::bundle::project::front_binary(bundle)) {
        problems.push(Problem::error(
            file,
            "strategy",
            format!(
                "strategy: proxy runs the front from hooks/{} (or {}), and it is missing or not executable; build \
                 the bundle with `make bundle` or `handoff bundle`, which ship it",
                crate::bundle::project::HOOK_BINARY,
                crate::bundle::project::FRONT_BINARY
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
    report
        .problems
        .extend(crate::bundle::fit::check(cfg, bundle, &rendered));
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
    use crate::arch::elf_arch;
    let hooks = format!("hooks/{}", crate::bundle::project::HOOK_BINARY);
    let (arch, why) = match (cfg.arch, elf_arch(&bundle.join(&hooks))) {
        (Some(a), _) => (a, "deploy.yml says arch: ".to_string() + a.name()),
        (None, Some(Ok(a))) => (a, format!("{hooks} is {a}")),
        _ => return,
    };
    for (path, what) in crate::arch::foreign_executables(bundle, &cfg.app.command, arch) {
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

/// A hook that is our launcher ([`crate::bundle::project::HOOK_SCRIPT`]) needs the `handoff` beside it.
fn check_hook_binary(bundle: &Path, problems: &mut Vec<Problem>) {
    use crate::bundle::project::{HOOK_BINARY, HOOK_SCRIPT, HOOKS};
    let binary = bundle.join("hooks").join(HOOK_BINARY);
    if crate::bundle::appspec::is_executable(&binary) {
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
    report
        .problems
        .extend(crate::bundle::appspec_merge::check_order(bundle));
    if let Some(cfg) = check_deploy(bundle, &mut report.problems) {
        if let Some(spec) = &spec {
            report.problems.extend(crate::bundle::timeouts::check(spec, &cfg));
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
mod tests;
