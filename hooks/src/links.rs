//! Symlinks in a revision, one rule for `handoff bundle`, `lint-bundle` and the release copy.
//!
//! - A link to an ABSOLUTE path (a virtualenv's `.venv/bin/python3 -> /usr/bin/python3`) is
//!   kept as that same link: it names something the host provides. BeforeInstall and the
//!   release copy check that every such target exists on the host
//!   ([`check_absolute_links`]); `lint-bundle` warns when it is missing on the machine that
//!   lints.
//! - A RELATIVE link that stays inside the bundle (`.venv/bin/python -> python3`,
//!   `node_modules/.bin/x -> ../x/cli.js`) is kept.
//! - A RELATIVE link that climbs out of the bundle (`../../shared/x`) is refused: the revision
//!   is unpacked elsewhere, so it would point at whatever the host has there.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fault::Fault;

/// What a symlink of the bundle is, by the rule above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// To an absolute path: kept; the host must have the target.
    Absolute,
    /// Relative, inside the bundle: kept.
    Inside,
    /// Relative, climbing out of the bundle: refused.
    Escapes,
}

/// Classifies the link at `rel` (its path relative to the bundle's root) pointing at `target`.
pub fn classify(rel: &Path, target: &Path) -> Link {
    if target.is_absolute() {
        Link::Absolute
    } else if stays_inside(&rel.parent().unwrap_or(Path::new("")).join(target)) {
        Link::Inside
    } else {
        Link::Escapes
    }
}

/// The message for a relative link that climbs out of the bundle.
pub fn escape_message(target: &Path) -> String {
    format!(
        "symlink to {} points outside the bundle; ship the file itself, or link relatively to a file inside \
         (a link to an absolute path is kept, for a program the host provides)",
        target.display()
    )
}

/// What to install for a missing link target, by what the target looks like.
pub fn install_hint(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.starts_with("python") {
        return "install that program (for a virtualenv: the same Python the venv was made with, e.g. \
                `apt-get install python3` / `dnf install python3.11`), or rebuild the venv on a host like this one"
            .into();
    }
    let program = if name.starts_with("node") {
        "Node.js (e.g. `apt-get install nodejs`)"
    } else if name.starts_with("ruby") {
        "Ruby (e.g. `apt-get install ruby`), the same version the gems were installed with"
    } else {
        "the package that provides it (`dpkg -S` / `rpm -qf` on the machine the bundle was built on names it)"
    };
    format!("install that program: {program}, or ship the file itself in the bundle")
}

/// Every symlink under `dir` to an absolute path: (its path relative to `dir`, its target).
/// Symlinked folders are not followed.
pub fn absolute_links(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let ft = e
                .file_type()
                .with_context(|| format!("cannot read {}", path.display()))?;
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {}", path.display()))?;
                if target.is_absolute() {
                    out.push((path.strip_prefix(root).unwrap_or(&path).to_path_buf(), target));
                }
            } else if ft.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// How many missing targets an error names; the rest are counted.
const NAMED: usize = 10;

/// Refuses a revision with a symlink to an absolute path this host does not have (a
/// virtualenv's interpreter, a runtime): a `Fault::environment` naming each link, its target
/// and what to install (at most 10, then a count). Run before anything on the host changes.
pub fn check_absolute_links(revision_dir: &Path) -> Result<()> {
    let missing: Vec<(PathBuf, PathBuf)> = absolute_links(revision_dir)?
        .into_iter()
        .filter(|(_, target)| std::fs::metadata(target).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut lines: Vec<String> = missing
        .iter()
        .take(NAMED)
        .map(|(link, target)| {
            format!(
                "`{}` links to {}, which this host does not have: {}",
                link.display(),
                target.display(),
                install_hint(target)
            )
        })
        .collect();
    if missing.len() > NAMED {
        lines.push(format!(
            "and {} more link(s) to paths this host does not have",
            missing.len() - NAMED
        ));
    }
    bail!(Fault::environment(format!(
        "{} symlink(s) in the bundle point at absolute paths missing on this host; nothing was changed:\n  {}",
        missing.len(),
        lines.join("\n  ")
    )))
}

/// Whether a path relative to the bundle stays inside it (no `..` above its root).
pub(crate) fn stays_inside(relative: &Path) -> bool {
    let mut depth = 0i32;
    for c in relative.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-links-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_are_classified_by_where_they_lead() {
        let c = |rel: &str, t: &str| classify(Path::new(rel), Path::new(t));
        assert_eq!(c(".venv/bin/python3", "/usr/bin/python3"), Link::Absolute);
        assert_eq!(c(".venv/bin/python", "python3"), Link::Inside);
        assert_eq!(c(".venv/lib64", "lib"), Link::Inside);
        assert_eq!(c("node_modules/.bin/x", "../express/bin/cli.js"), Link::Inside);
        assert_eq!(c("bin/up", "../../x"), Link::Escapes);
        assert_eq!(c("top", "../x"), Link::Escapes);
    }

    #[test]
    fn a_missing_absolute_target_is_named_with_what_to_install() {
        let d = scratch("missing");
        std::fs::create_dir_all(d.join(".venv/bin")).unwrap();
        symlink("/bin/sh", d.join(".venv/bin/present")).unwrap();
        symlink("python3", d.join(".venv/bin/python")).unwrap();
        symlink("/nonexistent/handoff/bin/python3.11", d.join(".venv/bin/python3")).unwrap();
        symlink("/nonexistent/handoff/node", d.join("node")).unwrap();
        let err = check_absolute_links(&d).unwrap_err();
        assert_eq!(crate::fault::exit_code(&err), 3, "a host fault");
        let text = format!("{err:#}");
        assert!(text.starts_with("2 symlink(s)"), "{text}");
        assert!(
            text.contains(
                "`.venv/bin/python3` links to /nonexistent/handoff/bin/python3.11, which this host does not have: \
                 install that program (for a virtualenv: the same Python the venv was made with"
            ),
            "{text}"
        );
        assert!(
            text.contains("`node` links to /nonexistent/handoff/node"),
            "{text}"
        );
        assert!(text.contains("Node.js"), "{text}");
        assert!(
            !text.contains("present") && !text.contains("`.venv/bin/python`"),
            "{text}"
        );

        // At most ten are named, the rest counted.
        for i in 0..12 {
            symlink(format!("/nonexistent/handoff/{i}"), d.join(format!("l{i:02}"))).unwrap();
        }
        let text = format!("{:#}", check_absolute_links(&d).unwrap_err());
        assert!(text.starts_with("14 symlink(s)"), "{text}");
        assert_eq!(
            text.matches("which this host does not have").count(),
            10,
            "{text}"
        );
        assert!(text.contains("and 4 more link(s)"), "{text}");

        // Every target present: nothing to say.
        let ok = scratch("present");
        symlink("/bin/sh", ok.join("sh")).unwrap();
        check_absolute_links(&ok).unwrap();
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(ok).unwrap();
    }
}
