//! What the app gets from its host rather than from its bundle: environment files (secrets and
//! host settings), credentials, and writable directories that outlive releases.
//!
//! ```yaml
//! app:
//!   environment_files: [/etc/myapp/env, -/etc/myapp/optional.env]
//!   credentials: { db_password: /etc/myapp/db_password }
//!   state_directory: myapp        # StateDirectory=   → $STATE_DIRECTORY   (/var/lib/myapp)
//!   cache_directory: myapp        # CacheDirectory=   → $CACHE_DIRECTORY   (/var/cache/myapp)
//!   logs_directory: myapp         # LogsDirectory=    → $LOGS_DIRECTORY    (/var/log/myapp)
//!   runtime_directory: myapp      # RuntimeDirectory= → $RUNTIME_DIRECTORY (/run/myapp)
//! ```
//!
//! They become lines of the instance template's `{{app_host}}` placeholder ([`unit_lines`]) and
//! properties of the before-switch step ([`crate::before_switch`]), so both run with the same
//! environment and places:
//!
//! - `EnvironmentFile=` lines come after the release's own `app.env`: for a variable set in
//!   both, the host's value wins. A leading `-` is systemd's own "optional" mark.
//! - `LoadCredential=name:path` (systemd ≥ 247): systemd copies the file, as root, into a
//!   directory only the app's (dynamic) user can read, `$CREDENTIALS_DIRECTORY/name`; the
//!   file itself can stay readable by root alone.
//! - `StateDirectory=` and the others: with `DynamicUser=yes` systemd keeps them under
//!   `/var/lib/private/<name>` (and the like) and links them in; every release's instance
//!   names the same directory, so it survives switches and rollbacks. All instances of the
//!   template share one dynamic user (named after the service), so the files stay theirs. The
//!   app learns the paths from `$STATE_DIRECTORY`, `$CACHE_DIRECTORY`, `$LOGS_DIRECTORY` and
//!   `$RUNTIME_DIRECTORY` (systemd ≥ 240).
//!
//! On Elastic Beanstalk the platform writes the environment properties to [`BEANSTALK_ENV`];
//! on such a host (the folder [`BEANSTALK_DIR`] exists) it is added as an optional
//! environment file before the configured ones, so the properties reach the service at its
//! next deployment, and every re-render (undo, rollback) on that host sees the same line.
//!
//! Paths with `%` are refused rather than escaped (`%%`): a systemd specifier in a secret's
//! path is far more likely a mistake than a name.

use std::path::{Component, Path};

use anyhow::{Result, bail};

use crate::config::{App, DeployConfig};
use crate::fault::Fault;

/// The Beanstalk platform's folder on Amazon Linux 2 / 2023 hosts.
pub const BEANSTALK_DIR: &str = "/opt/elasticbeanstalk/deployment";
/// The environment properties, as the platform writes them (`KEY=value` lines).
pub const BEANSTALK_ENV: &str = "/opt/elasticbeanstalk/deployment/env";

/// Whether this host is an Elastic Beanstalk instance.
pub fn on_beanstalk() -> bool {
    Path::new(BEANSTALK_DIR).is_dir()
}

/// One `app.environment_files` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub path: String,
    pub optional: bool,
}

impl EnvFile {
    pub fn parse(entry: &str) -> Self {
        match entry.strip_prefix('-') {
            Some(path) => Self {
                path: path.to_string(),
                optional: true,
            },
            None => Self {
                path: entry.to_string(),
                optional: false,
            },
        }
    }

    /// The unit-file form: `-/path` when optional.
    pub fn directive_value(&self) -> String {
        format!("{}{}", if self.optional { "-" } else { "" }, self.path)
    }
}

/// A writable directory systemd creates for the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    State,
    Cache,
    Logs,
    Runtime,
}

impl Place {
    pub const ALL: [Place; 4] = [Place::State, Place::Cache, Place::Logs, Place::Runtime];

    /// The deploy.yml field.
    pub fn field(self) -> &'static str {
        match self {
            Place::State => "app.state_directory",
            Place::Cache => "app.cache_directory",
            Place::Logs => "app.logs_directory",
            Place::Runtime => "app.runtime_directory",
        }
    }

    /// The unit directive.
    pub fn directive(self) -> &'static str {
        match self {
            Place::State => "StateDirectory",
            Place::Cache => "CacheDirectory",
            Place::Logs => "LogsDirectory",
            Place::Runtime => "RuntimeDirectory",
        }
    }

    /// Where systemd puts it (without DynamicUser=; with it, under a `private/` folder there).
    pub fn base(self) -> &'static str {
        match self {
            Place::State => "/var/lib",
            Place::Cache => "/var/cache",
            Place::Logs => "/var/log",
            Place::Runtime => "/run",
        }
    }

    fn of(self, app: &App) -> Option<&str> {
        match self {
            Place::State => app.state_directory.as_deref(),
            Place::Cache => app.cache_directory.as_deref(),
            Place::Logs => app.logs_directory.as_deref(),
            Place::Runtime => app.runtime_directory.as_deref(),
        }
    }
}

/// The configured directories, in [`Place::ALL`]'s order.
pub fn directories(app: &App) -> Vec<(Place, &str)> {
    Place::ALL
        .into_iter()
        .filter_map(|p| p.of(app).map(|d| (p, d)))
        .collect()
}

/// The host environment files in the order systemd reads them: Beanstalk's properties (on a
/// Beanstalk host), then `app.environment_files`.
pub fn environment_files(app: &App, beanstalk: bool) -> Vec<EnvFile> {
    let mut files = Vec::new();
    if beanstalk {
        files.push(EnvFile {
            path: BEANSTALK_ENV.into(),
            optional: true,
        });
    }
    files.extend(app.environment_files.iter().map(|e| EnvFile::parse(e)));
    files
}

/// Whether deploy.yml asks for lines of the `{{app_host}}` placeholder.
pub fn configured(app: &App) -> bool {
    !app.environment_files.is_empty() || !app.credentials.is_empty() || !directories(app).is_empty()
}

/// An absolute, normalized host path that a unit line can carry as it is.
fn host_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("is not an absolute path");
    }
    if path.contains(['\n', '"', '\'', '\\', '%']) || path.contains(char::is_whitespace) {
        return Some("contains a space, newline, quote, backslash or '%' (a systemd specifier)");
    }
    let normal = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !normal || path.ends_with('/') || path.contains("//") || path.contains("/./") {
        return Some("is not a plain path (no '..', '.', '//' or trailing '/')");
    }
    None
}

/// systemd's credential names, stricter: letters, digits, `.`, `-`, `_`, at most 255.
fn credential_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A relative directory name as systemd takes it: `myapp` or `myapp/uploads`.
fn directory_ok(dir: &str) -> bool {
    !dir.is_empty()
        && dir.len() <= 255
        && !dir.starts_with('/')
        && !dir.ends_with('/')
        && dir.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
}

/// The checks of deploy.yml's host fields (called by [`DeployConfig::validate`]).
pub fn validate(app: &App) -> Result<()> {
    for entry in &app.environment_files {
        let file = EnvFile::parse(entry);
        if let Some(problem) = host_path_problem(&file.path) {
            bail!(
                "app.environment_files: '{entry}' {problem}; write the absolute path of a file on the host, e.g. \
                 /etc/myapp/env, with a leading '-' if it may be missing (-/etc/myapp/optional.env)"
            );
        }
        if app
            .environment_files
            .iter()
            .filter(|e| EnvFile::parse(e).path == file.path)
            .count()
            > 1
        {
            bail!(
                "app.environment_files: {} is listed twice; list it once",
                file.path
            );
        }
    }
    for (name, path) in &app.credentials {
        if !credential_name_ok(name) {
            bail!(
                "app.credentials: '{name}' is not a credential name; use letters, digits, '.', '-' and '_' (at most \
                 255, not starting with '.'), e.g. db_password: /etc/myapp/db_password"
            );
        }
        if let Some(problem) = host_path_problem(path) {
            bail!(
                "app.credentials.{name}: '{path}' {problem}; write the absolute path of the file on the host, e.g. \
                 {name}: /etc/myapp/{name}"
            );
        }
    }
    for (place, dir) in directories(app) {
        if !directory_ok(dir) {
            bail!(
                "{}: '{dir}' is not a directory name systemd accepts; write a relative name of letters, digits, '.', \
                 '-' and '_', parts separated by '/', without '..', e.g. myapp or myapp/uploads (systemd puts it \
                 under {})",
                place.field(),
                place.base()
            );
        }
    }
    Ok(())
}

/// The lines of the instance template's `{{app_host}}` placeholder.
pub fn unit_lines(app: &App, beanstalk: bool) -> String {
    let mut lines = Vec::new();
    let files = environment_files(app, beanstalk);
    if !files.is_empty() {
        lines.push(
            "# Host environment files (deploy.yml app.environment_files), read after app.env: a variable set in both \
             takes the host's value. A leading - marks a file that may be missing."
                .to_string(),
        );
        if beanstalk {
            lines.push(
                "# Elastic Beanstalk's environment properties, written by the platform on this host."
                    .to_string(),
            );
        }
        lines.extend(
            files
                .iter()
                .map(|f| format!("EnvironmentFile={}", f.directive_value())),
        );
    }
    if !app.credentials.is_empty() {
        lines.push(
            "# Credentials (app.credentials; systemd >= 247): each file is copied for this unit alone to \
             $CREDENTIALS_DIRECTORY/<name>, readable by its dynamic user only."
                .to_string(),
        );
        lines.extend(
            app.credentials
                .iter()
                .map(|(name, path)| format!("LoadCredential={name}:{path}")),
        );
    }
    let dirs = directories(app);
    if !dirs.is_empty() {
        lines.push(
            "# Writable places (app.*_directory): every release's instance names the same ones, so they outlive \
             switches and rollbacks; the app finds them in $STATE_DIRECTORY, $CACHE_DIRECTORY, $LOGS_DIRECTORY, \
             $RUNTIME_DIRECTORY."
                .to_string(),
        );
        for (place, dir) in &dirs {
            lines.push(format!("{}={dir}", place.directive()));
        }
        if app.runtime_directory.is_some() {
            lines.push(
                "# Two instances run at once during a switch, and systemd removes a RuntimeDirectory= when its \
                 unit stops: the old instance's stop would pull it from under the new one. Kept; /run empties at \
                 boot."
                    .to_string(),
            );
            lines.push("RuntimeDirectoryPreserve=yes".to_string());
        }
    }
    if lines.is_empty() {
        return "# app.environment_files, app.credentials, app.*_directory: none.".into();
    }
    lines.join("\n")
}

/// Every host file the service needs must exist before the switch: a missing environment
/// file or credential would fail the new instance's start (systemd refuses it) with a message
/// far from its cause. A host fault (exit 3), naming the file and the fix.
pub fn check_host(cfg: &DeployConfig, beanstalk: bool) -> Result<()> {
    for file in environment_files(&cfg.app, beanstalk) {
        if !file.optional && !Path::new(&file.path).is_file() {
            bail!(Fault::environment(format!(
                "app.environment_files: {} does not exist on this host; write it before deploying (see README: \
                 secrets from SSM Parameter Store) or mark it optional with a leading -",
                file.path
            )));
        }
    }
    for (name, path) in &cfg.app.credentials {
        if !Path::new(path).is_file() {
            bail!(Fault::environment(format!(
                "app.credentials.{name}: {path} does not exist on this host; write it before deploying (see README: \
                 secrets from Secrets Manager), e.g. with umask 077 so only root can read it"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{self, FaultKind};

    const GOOD: &str = "service: shop\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/shop\n";

    fn parse(extra: &str) -> Result<DeployConfig> {
        DeployConfig::parse(&format!("{GOOD}{extra}"))
    }

    fn err(extra: &str) -> String {
        format!("{:#}", parse(extra).unwrap_err())
    }

    #[test]
    fn host_fields_parse() {
        let c = parse(
            "  environment_files: [/etc/shop/env, -/etc/shop/optional.env]\n  credentials: { db_password: \
             /etc/shop/db_password }\n  state_directory: shop\n  cache_directory: shop/cache\n  logs_directory: \
             shop\n  runtime_directory: shop\n",
        )
        .unwrap();
        assert_eq!(
            environment_files(&c.app, false),
            vec![
                EnvFile {
                    path: "/etc/shop/env".into(),
                    optional: false
                },
                EnvFile {
                    path: "/etc/shop/optional.env".into(),
                    optional: true
                },
            ]
        );
        assert_eq!(c.app.credentials["db_password"], "/etc/shop/db_password");
        assert_eq!(
            directories(&c.app),
            vec![
                (Place::State, "shop"),
                (Place::Cache, "shop/cache"),
                (Place::Logs, "shop"),
                (Place::Runtime, "shop"),
            ]
        );
        assert!(configured(&c.app));
        assert!(!configured(&parse("").unwrap().app));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = err("  environment_files: [etc/shop/env]\n");
        assert!(
            e.contains("app.environment_files: 'etc/shop/env' is not an absolute path")
                && e.contains("e.g. /etc/myapp/env"),
            "{e}"
        );
        let e = err("  environment_files: [\"/etc/shop/%i.env\"]\n");
        assert!(e.contains("'%' (a systemd specifier)"), "{e}");
        let e = err("  environment_files: [/etc/shop/../passwd]\n");
        assert!(e.contains("no '..'"), "{e}");
        let e = err("  environment_files: [/etc/shop/env, -/etc/shop/env]\n");
        assert!(e.contains("/etc/shop/env is listed twice"), "{e}");
        let e = err("  credentials: { \"db/password\": /etc/shop/db }\n");
        assert!(
            e.contains("app.credentials: 'db/password' is not a credential name")
                && e.contains("db_password:"),
            "{e}"
        );
        let e = err("  credentials: { db: relative/path }\n");
        assert!(
            e.contains("app.credentials.db: 'relative/path' is not an absolute path")
                && e.contains("db: /etc/myapp/db"),
            "{e}"
        );
        let long = "x".repeat(256);
        assert!(err(&format!("  credentials: {{ {long}: /etc/x }}\n")).contains("at most 255"));
        let e = err("  state_directory: ../etc\n");
        assert!(
            e.contains("app.state_directory: '../etc' is not a directory name")
                && e.contains("myapp/uploads"),
            "{e}"
        );
        assert!(err("  cache_directory: /var/cache/shop\n").contains("app.cache_directory"));
        assert!(err("  logs_directory: \"shop logs\"\n").contains("app.logs_directory"));
        assert!(err("  runtime_directory: \"\"\n").contains("app.runtime_directory"));
        assert!(err("  runtime_directory: shop//x\n").contains("app.runtime_directory"));
    }

    #[test]
    fn unit_lines_come_in_order_with_their_reasons() {
        let c = parse(
            "  environment_files: [/etc/shop/env, -/etc/shop/optional.env]\n  credentials: { db_password: \
             /etc/shop/db_password, token: /etc/shop/token }\n  state_directory: shop\n  runtime_directory: shop\n",
        )
        .unwrap();
        let text = unit_lines(&c.app, false);
        let directives: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            directives,
            [
                "EnvironmentFile=/etc/shop/env",
                "EnvironmentFile=-/etc/shop/optional.env",
                "LoadCredential=db_password:/etc/shop/db_password",
                "LoadCredential=token:/etc/shop/token",
                "StateDirectory=shop",
                "RuntimeDirectory=shop",
                "RuntimeDirectoryPreserve=yes",
            ]
        );
        // Every directive has its comment.
        assert!(text.contains("takes the host's value"), "{text}");
        assert!(text.contains("systemd >= 247"), "{text}");
        assert!(text.contains("would pull it from under the new one"), "{text}");
        // Only a runtime directory needs preserving.
        let state_only = parse("  state_directory: shop\n").unwrap();
        assert!(!unit_lines(&state_only.app, false).contains("RuntimeDirectoryPreserve"));
        assert_eq!(
            unit_lines(&parse("").unwrap().app, false),
            "# app.environment_files, app.credentials, app.*_directory: none."
        );
    }

    #[test]
    fn beanstalk_properties_come_first_and_are_optional() {
        let c = parse("  environment_files: [/etc/shop/env]\n").unwrap();
        let text = unit_lines(&c.app, true);
        let files: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("EnvironmentFile="))
            .collect();
        assert_eq!(
            files,
            [
                "EnvironmentFile=-/opt/elasticbeanstalk/deployment/env",
                "EnvironmentFile=/etc/shop/env"
            ]
        );
        assert!(text.contains("Elastic Beanstalk's environment properties"));
        // Without any field, a Beanstalk host still gets the properties.
        let bare = unit_lines(&parse("").unwrap().app, true);
        assert!(
            bare.ends_with("EnvironmentFile=-/opt/elasticbeanstalk/deployment/env"),
            "{bare}"
        );
        // Its absence is never a host fault: it is optional.
        assert!(check_host(&parse("").unwrap(), true).is_ok());
    }

    #[test]
    fn a_missing_host_file_is_a_host_fault_naming_it() {
        let dir = std::env::temp_dir().join(format!("handoff-app-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let present = dir.join("env");
        std::fs::write(&present, "A=1\n").unwrap();
        let missing = dir.join("missing.env");
        let c = parse(&format!(
            "  environment_files: [{}, -{}]\n",
            present.display(),
            missing.display()
        ))
        .unwrap();
        check_host(&c, false).expect("present and optional files pass");
        let c = parse(&format!("  environment_files: [{}]\n", missing.display())).unwrap();
        let e = check_host(&c, false).unwrap_err();
        assert_eq!(fault::kind_of(&e), Some(FaultKind::Environment));
        assert_eq!(fault::exit_code(&e), 3);
        assert_eq!(
            e.to_string(),
            format!(
                "app.environment_files: {} does not exist on this host; write it before deploying (see README: \
                 secrets from SSM Parameter Store) or mark it optional with a leading -",
                missing.display()
            )
        );
        let c = parse(&format!("  credentials: {{ token: {} }}\n", missing.display())).unwrap();
        let e = check_host(&c, false).unwrap_err();
        assert_eq!(fault::exit_code(&e), 3);
        assert!(
            e.to_string().starts_with(&format!(
                "app.credentials.token: {} does not exist on this host",
                missing.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
