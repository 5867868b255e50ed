//! What of an app folder goes into its revision (`handoff bundle`): everything but the
//! default exclusions and the patterns of `.handoffignore` at the folder's root (gitignore
//! syntax, `!pattern` re-includes), and never a secret by accident.
//!
//! - The defaults ([`DEFAULT_EXCLUDES`]) come first, so `.handoffignore` can re-include one of
//!   them with `!pattern`. The folder's `.gitignore` is NOT read: a built asset is often
//!   gitignored and must ship all the same.
//! - A file that looks like a secret ([`secret_reason`]: by name, or a private key or an AWS
//!   secret in a small file's first 4 KiB) and is not excluded refuses the bundle (exit 2)
//!   unless a `!` line of `.handoffignore` matches it: shipping it is then a decision.
//! - Symlinks are packed as links, never followed ([`crate::links`] says which are kept).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::fault::Fault;

/// The app's own exclusions, at the app folder's root.
pub const IGNORE_FILE: &str = ".handoffignore";

/// Left out of every bundle (gitignore syntax), before `.handoffignore` is applied: version
/// control, environment files and private keys, caches and editor files. `.env.example`,
/// `.env.sample` and `.env.template` are templates and ship. Not here on purpose: `target/`
/// (a Maven app ships `target/app.jar`) and `*.pem` (certifi's `cacert.pem` in every
/// virtualenv is a public CA bundle; a `.pem` holding a private key is refused by content).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".git/",
    ".hg/",
    ".svn/",
    ".env",
    ".env.*",
    "!.env.example",
    "!.env.sample",
    "!.env.template",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.p12",
    "*.pfx",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".tox/",
    ".gradle/",
    "**/node_modules/.cache/",
    "**/.next/cache/",
    ".DS_Store",
    "*.swp",
    ".idea/",
    ".vscode/",
    "*.zip.partial",
];

/// Files larger than this are not sniffed for secrets (a key or a credentials file is small).
const SNIFF_MAX_FILE: u64 = 64 * 1024;
/// How much of a small file is read for the sniff.
const SNIFF_BYTES: usize = 4096;

/// One entry of the revision: a file (its source and mode), a symlink (its target, verbatim),
/// a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packed {
    File { path: PathBuf, mode: u32, size: u64 },
    Symlink(PathBuf),
    Dir,
}

/// What `select` chose: the entries (path in the zip, what), and what the rules left out.
#[derive(Debug, Default)]
pub struct Selection {
    pub entries: Vec<(String, Packed)>,
    /// Paths left out (a folder counts once, with a trailing `/`).
    pub left_out: Vec<String>,
    /// `.handoffignore`, when the folder has one.
    pub ignore_file: Option<PathBuf>,
}

/// The rules: the defaults, then `.handoffignore`.
fn rules(app: &Path) -> Result<(Gitignore, Option<PathBuf>)> {
    let mut b = GitignoreBuilder::new(app);
    for line in DEFAULT_EXCLUDES {
        b.add_line(None, line)
            .expect("the default exclusions are valid globs");
    }
    let file = app.join(IGNORE_FILE);
    let used = file.is_file().then(|| file.clone());
    if let Some(f) = &used
        && let Some(e) = b.add(f)
    {
        bail!(Fault::input(format!(
            "{}: {e}; fix the pattern (gitignore syntax)",
            f.display()
        )));
    }
    let gi = b
        .build()
        .map_err(|e| Fault::input(format!("{IGNORE_FILE}: {e}; fix the pattern (gitignore syntax)")))?;
    Ok((gi, used))
}

/// Why a file looks like a secret, or None. `path` is read only when it is small.
pub fn secret_reason(rel: &Path, path: &Path, size: u64) -> Option<String> {
    let name = rel.file_name()?.to_string_lossy().to_string();
    let templates = [".env.example", ".env.sample", ".env.template"];
    if (name == ".env" || name.starts_with(".env.")) && !templates.contains(&name.as_str()) {
        return Some("an environment file (.env*), where secrets usually live".into());
    }
    if name.ends_with(".key") || name.ends_with(".p12") || name.ends_with(".pfx") {
        return Some("a private key or keystore by its name".into());
    }
    for key in ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"] {
        if name.starts_with(key) && !name.ends_with(".pub") {
            return Some(format!("an SSH private key by its name ({key})"));
        }
    }
    if name == "credentials" {
        return Some("a credentials file by its name (like ~/.aws/credentials)".into());
    }
    if name.ends_with(".tfstate") || name.ends_with(".tfstate.backup") {
        return Some("Terraform state, which holds the resources' secrets in clear".into());
    }
    if size > SNIFF_MAX_FILE {
        return None;
    }
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(path)
        .and_then(|f| f.take(SNIFF_BYTES as u64).read_to_end(&mut head))
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    if (name == ".npmrc" || name == ".pypirc")
        && text.lines().any(|l| {
            let l = l.trim();
            !l.starts_with(['#', ';'])
                && (l.contains("_authToken") || l.contains("_auth") || l.starts_with("password"))
        })
    {
        return Some(format!("{name} with a token or password line"));
    }
    if text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----") {
        return Some("holds a private key (-----BEGIN … PRIVATE KEY-----)".into());
    }
    if text.lines().any(aws_secret_line) {
        return Some("holds an AWS secret access key (aws_secret_access_key = …)".into());
    }
    None
}

/// `aws_secret_access_key = <a key-like value>` (a credentials file or an env file), not a
/// mention of the name in code (`aws_secret_access_key=None`).
fn aws_secret_line(line: &str) -> bool {
    let l = line.trim().trim_start_matches("export ");
    let lower = l.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("aws_secret_access_key") else {
        return false;
    };
    let rest = rest.trim_start();
    let Some(value) = rest.strip_prefix(['=', ':']) else {
        return false;
    };
    let value = value.trim().trim_matches(['"', '\'']);
    value.len() >= 16
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '='))
}

/// The entries of `app` for its revision, sorted, with `skip` (the output zip and its
/// partial) left out. Refuses (exit 2, nothing written) when a file that looks like a secret
/// would ship without a `!` line of `.handoffignore` for it.
pub fn select(app: &Path, skip: &[PathBuf]) -> Result<Selection> {
    let (rules, ignore_file) = rules(app)?;
    let mut sel = Selection {
        ignore_file,
        ..Selection::default()
    };
    let mut secrets = Vec::new();
    walk(app, app, &rules, skip, &mut sel, &mut secrets)?;
    if !secrets.is_empty() {
        let lines: Vec<String> = secrets.iter().map(|(rel, why)| format!("{rel}: {why}")).collect();
        bail!(Fault::input(format!(
            "{} file(s) look like secrets and would ship in the revision (no zip written):\n  {}\n\
             remove each from the folder, or add `!path` for it to {} if it must ship",
            secrets.len(),
            lines.join("\n  "),
            app.join(IGNORE_FILE).display()
        )));
    }
    Ok(sel)
}

fn walk(
    root: &Path,
    dir: &Path,
    rules: &Gitignore,
    skip: &[PathBuf],
    sel: &mut Selection,
    secrets: &mut Vec<(String, String)>,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel_path = path.strip_prefix(root)?.to_path_buf();
        let rel = rel_path.to_string_lossy().to_string();
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let is_dir = meta.is_dir();
        if skip
            .iter()
            .any(|s| std::path::absolute(&path).ok().as_ref() == Some(s))
        {
            continue;
        }
        let matched = rules.matched(&rel_path, is_dir);
        if matched.is_ignore() {
            sel.left_out.push(if is_dir { format!("{rel}/") } else { rel });
            continue;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("cannot read the link {}", path.display()))?;
            sel.entries.push((rel, Packed::Symlink(target)));
        } else if is_dir {
            sel.entries.push((format!("{rel}/"), Packed::Dir));
            walk(root, &path, rules, skip, sel, secrets)?;
        } else if meta.is_file() {
            let explicitly_shipped = matches!(matched, Match::Whitelist(g) if g.from().is_some());
            if !explicitly_shipped && let Some(why) = secret_reason(&rel_path, &path, meta.len()) {
                secrets.push((rel.clone(), why));
            }
            sel.entries.push((
                rel,
                Packed::File {
                    path,
                    mode: meta.permissions().mode() & 0o7777,
                    size: meta.len(),
                },
            ));
        } else {
            bail!(Fault::input(format!(
                "{} is not a regular file, folder or symlink; remove it or add it to {IGNORE_FILE}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// What `handoff bundle` packed, for its report on stderr.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    /// The files' sizes added up (uncompressed).
    pub bytes: u64,
    /// The zip's size.
    pub zip_bytes: u64,
    /// The five largest folders (at most two levels deep), largest first.
    pub largest: Vec<(String, u64)>,
    pub left_out: Vec<String>,
    pub ignore_file: Option<PathBuf>,
}

impl Summary {
    /// The summary of the files packed (the app's, the hooks, the shipped templates).
    pub fn of(
        entries: &[(String, u64)],
        left_out: &[String],
        ignore_file: Option<PathBuf>,
        zip_bytes: u64,
    ) -> Self {
        let mut folders: BTreeMap<String, u64> = BTreeMap::new();
        for (rel, size) in entries {
            let parts: Vec<&str> = rel.split('/').collect();
            if parts.len() > 1 {
                let depth = (parts.len() - 1).min(2);
                *folders.entry(parts[..depth].join("/") + "/").or_default() += size;
            }
        }
        let mut largest: Vec<(String, u64)> = folders.into_iter().collect();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        largest.truncate(5);
        Summary {
            files: entries.len(),
            bytes: entries.iter().map(|(_, s)| s).sum(),
            zip_bytes,
            largest,
            left_out: left_out.to_vec(),
            ignore_file,
        }
    }
}

/// Bytes for people: 532 B, 14.2 KiB, 3.1 MiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "packed {} files, {} ({} zipped)",
            self.files,
            human(self.bytes),
            human(self.zip_bytes)
        )?;
        if !self.largest.is_empty() {
            let list: Vec<String> = self
                .largest
                .iter()
                .map(|(d, s)| format!("{d} {}", human(*s)))
                .collect();
            writeln!(f, "largest folders: {}", list.join(", "))?;
        }
        let rules = match &self.ignore_file {
            Some(p) => format!("the default exclusions and {}", p.display()),
            None => format!("the default exclusions (no {IGNORE_FILE})"),
        };
        if self.left_out.is_empty() {
            writeln!(f, "left out nothing by {rules}")
        } else {
            let shown: Vec<&str> = self.left_out.iter().take(8).map(String::as_str).collect();
            let more = self.left_out.len().saturating_sub(shown.len());
            writeln!(
                f,
                "left out {} path(s) by {rules}: {}{}",
                self.left_out.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn secrets_are_recognised_by_name_and_by_content() {
        let d = scratch("sniff");
        let why = |rel: &str, text: &str| {
            let p = d.join(rel);
            write(&p, text);
            secret_reason(Path::new(rel), &p, text.len() as u64)
        };
        assert!(why(".env", "A=1").unwrap().contains("environment file"));
        assert!(why("config/.env.production", "A=1").is_some());
        assert_eq!(why(".env.example", "A=changeme"), None);
        assert!(why("config/server.key", "x").is_some());
        assert!(why("keys/id_ed25519", "x").unwrap().contains("SSH"));
        assert_eq!(why("keys/id_ed25519.pub", "ssh-ed25519 AAAA"), None);
        assert!(why("creds/credentials", "[default]").is_some());
        assert!(
            why("infra/terraform.tfstate", "{}")
                .unwrap()
                .contains("Terraform")
        );
        assert!(why(".npmrc", "//registry/:_authToken=abc\n").is_some());
        assert_eq!(why(".npmrc", "save-exact=true\n"), None);
        assert!(
            why("deploy_key.pem", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
                .unwrap()
                .contains("private key")
        );
        assert_eq!(
            why("certifi/cacert.pem", "-----BEGIN CERTIFICATE-----\nabc\n"),
            None
        );
        assert!(
            why(
                "conf/aws.ini",
                "[x]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
            )
            .is_some()
        );
        assert_eq!(
            why(
                "lib/botocore.py",
                "def f(aws_access_key_id=None,\n      aws_secret_access_key=None):\n"
            ),
            None
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn summary_names_the_largest_folders_two_levels_deep() {
        let entries: Vec<(String, u64)> = [
            (".venv/lib/python3.11/site-packages/a.py", 3000u64),
            (".venv/bin/python", 10),
            ("node_modules/express/index.js", 2000),
            ("static/app.js", 500),
            ("app.py", 100),
        ]
        .iter()
        .map(|(p, s)| (p.to_string(), *s))
        .collect();
        let s = Summary::of(&entries, &[".git/".into()], None, 1234);
        assert_eq!(s.files, 5);
        assert_eq!(s.bytes, 5610);
        assert_eq!(
            s.largest,
            vec![
                (".venv/lib/".to_string(), 3000),
                ("node_modules/express/".to_string(), 2000),
                ("static/".to_string(), 500),
                (".venv/bin/".to_string(), 10),
            ]
        );
        let text = s.to_string();
        assert!(
            text.starts_with("packed 5 files, 5.5 KiB (1.2 KiB zipped)\n"),
            "{text}"
        );
        assert!(
            text.contains("left out 1 path(s) by the default exclusions (no .handoffignore): .git/"),
            "{text}"
        );
    }
}
