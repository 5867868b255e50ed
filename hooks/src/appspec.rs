//! `appspec.yml` as the CodeDeploy agent reads it, and the bundle lint (`lint-bundle`).
//!
//! The agent's rules (see shared/notes/codedeploy-agent.md) are checked the way the agent
//! applies them, and so are the traps it does not report until a deployment is under way:
//! `appspec.yaml` (validates, but no hook runs), a quoted `version: "0.0"`, the octal
//! `mode: 0644`, YAML anchors, `runas:`. The bundle's own parts are checked with the hooks'
//! code: `deploy.yml` with [`DeployConfig::load`], the unit templates with
//! [`units::render`] and, where it is installed, `systemd-analyze verify`.
//!
//! Every problem names the file, the field and the fix; all of them are reported, not only
//! the first.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::{self, DeployConfig};
use crate::units;

/// The only name under which the agent finds the hooks.
pub const FILE_NAME: &str = "appspec.yml";

/// The lifecycle events a bundle may give scripts to.
pub const HOOK_EVENTS: [&str; 9] = [
    "ApplicationStop",
    "BeforeInstall",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
    "BeforeBlockTraffic",
    "AfterBlockTraffic",
    "BeforeAllowTraffic",
    "AfterAllowTraffic",
];

/// The agent's own steps: no scripts allowed.
pub const AGENT_STEPS: [&str; 2] = ["DownloadBundle", "Install"];

/// The agent's default (and the service's maximum) script timeout, in seconds.
pub const DEFAULT_TIMEOUT: u64 = 3600;

/// Whose scripts an event runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// The last successful install's revision, with the new deployment's id.
    Previous,
    /// The revision being deployed.
    New,
    /// The agent's own step.
    Agent,
}

/// The in-place order of a deployment.
pub const IN_PLACE_ORDER: [(&str, Runs); 11] = [
    ("BeforeBlockTraffic", Runs::Previous),
    ("AfterBlockTraffic", Runs::Previous),
    ("ApplicationStop", Runs::Previous),
    ("DownloadBundle", Runs::Agent),
    ("BeforeInstall", Runs::New),
    ("Install", Runs::Agent),
    ("AfterInstall", Runs::New),
    ("ApplicationStart", Runs::New),
    ("ValidateService", Runs::New),
    ("BeforeAllowTraffic", Runs::New),
    ("AfterAllowTraffic", Runs::New),
];

/// A YAML scalar as the agent's Ruby sees it: its type matters (`"0.0"` is not `0.0`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl Scalar {
    /// Ruby's `to_i`: the integer part of a number, the leading digits of a string, else 0.
    pub fn to_i(&self) -> i64 {
        match self {
            Scalar::Bool(_) => 0,
            Scalar::Int(i) => *i,
            Scalar::Float(x) => x.trunc() as i64,
            Scalar::Text(t) => {
                let t = t.trim_start();
                let (sign, digits) = match t.strip_prefix('-') {
                    Some(rest) => (-1, rest),
                    None => (1, t.strip_prefix('+').unwrap_or(t)),
                };
                let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
                digits[..end].parse::<i64>().map(|n| sign * n).unwrap_or(0)
            }
        }
    }
}

/// `appspec.yml`. Unknown top-level keys are ignored by the agent (the lint warns).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppSpec {
    pub version: Option<Scalar>,
    pub os: Option<Scalar>,
    #[serde(default)]
    pub files: Option<Vec<FileEntry>>,
    #[serde(default)]
    pub permissions: Option<Vec<BTreeMap<String, IgnoredAny>>>,
    /// Event name → its scripts (None: the key is there with no list).
    #[serde(default)]
    pub hooks: Option<BTreeMap<String, Option<Vec<HookEntry>>>>,
    pub file_exists_behavior: Option<String>,
}

/// One `files:` entry: copy `source` (in the bundle) to `destination` (on the instance).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileEntry {
    pub source: Option<String>,
    pub destination: Option<String>,
}

/// One script of a lifecycle event.
#[derive(Debug, Clone, Deserialize)]
pub struct HookEntry {
    pub location: Option<String>,
    pub timeout: Option<Scalar>,
    pub runas: Option<String>,
    pub sudo: Option<IgnoredAny>,
    /// Keys the agent ignores (a typo like `timout:` silently means the default timeout).
    #[serde(flatten)]
    pub other: BTreeMap<String, IgnoredAny>,
}

impl HookEntry {
    /// The script's path relative to the revision (the agent joins it to the archive folder).
    pub fn location(&self) -> &str {
        self.location.as_deref().unwrap_or("").trim_start_matches('/')
    }

    /// The timeout in seconds as the agent computes it (default 3600).
    pub fn timeout_secs(&self) -> i64 {
        self.timeout.as_ref().map_or(DEFAULT_TIMEOUT as i64, Scalar::to_i)
    }
}

impl AppSpec {
    /// The scripts of one event, in order (none when the event is not listed).
    pub fn scripts(&self, event: &str) -> &[HookEntry] {
        self.hooks
            .as_ref()
            .and_then(|h| h.get(event))
            .and_then(|s| s.as_deref())
            .unwrap_or(&[])
    }

    /// DISALLOW (the default), OVERWRITE or RETAIN.
    pub fn file_exists_behavior(&self) -> &str {
        self.file_exists_behavior.as_deref().unwrap_or("DISALLOW")
    }
}

/// How bad a problem is: an error makes the agent refuse or fail the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding: the file, the field (or line), and what is wrong with the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn error(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn warning(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, field, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.field.is_empty() {
            write!(f, "{kind}: {}: {}", self.file, self.message)
        } else {
            write!(f, "{kind}: {}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// What the lint found, and what it could not check.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Checks that were skipped, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let (e, w) = (self.errors(), self.warnings());
        writeln!(
            f,
            "{e} error{}, {w} warning{}",
            if e == 1 { "" } else { "s" },
            if w == 1 { "" } else { "s" }
        )
    }
}

// ---------------------------------------------------------------------------------------
// appspec.yml: the text
// ---------------------------------------------------------------------------------------

/// One `key: value` line of the raw text, as far as a line scanner can tell.
#[derive(Debug)]
struct RawLine<'a> {
    number: usize,
    /// The top-level key this line is under (itself, for a top-level line).
    section: &'a str,
    top_level: bool,
    key: &'a str,
    /// The value as written (quotes kept), without a trailing comment.
    value: &'a str,
}

/// The text without a trailing `# comment` (a `#` outside quotes, after a blank or at the start).
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return s[..i].trim_end(),
            None => {}
        }
        prev = c;
    }
    s.trim_end()
}

/// The block-style `key: value` lines of a YAML text. Scalars are not typed by the parser
/// the way the agent's YAML 1.1 reader types them, so quoting and octal need the raw text.
fn raw_lines(text: &str) -> Vec<RawLine<'_>> {
    let mut out = Vec::new();
    let mut section = "";
    for (i, line) in text.lines().enumerate() {
        let content = strip_comment(line);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with("---") || trimmed.starts_with("...") {
            continue;
        }
        let indent = content.len() - trimmed.len();
        let item = trimmed.strip_prefix("- ").map(str::trim_start);
        let body = item.unwrap_or(trimmed);
        let Some(colon) = body.find(':') else { continue };
        let key = &body[..colon];
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        let rest = &body[colon + 1..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            continue;
        }
        let top_level = indent == 0 && item.is_none();
        if top_level {
            section = key;
        }
        out.push(RawLine {
            number: i + 1,
            section,
            top_level,
            key,
            value: rest.trim(),
        });
    }
    out
}

/// The first line with an anchor (`&name`) or alias (`*name`) outside quotes and comments.
fn anchor_line(text: &str) -> Option<usize> {
    text.lines().enumerate().find_map(|(i, line)| {
        let line = strip_comment(line);
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if (c == '&' || c == '*')
                    && (prev.is_whitespace() || matches!(prev, '[' | '{' | ','))
                    && chars
                        .peek()
                        .is_some_and(|n| n.is_alphanumeric() || *n == '_' || *n == '-') =>
                {
                    return Some(i + 1);
                }
                None => {}
            }
            prev = c;
        }
        None
    })
}

fn parse_error(e: &serde_saphyr::Error) -> String {
    // The error's display carries a source snippet over several lines; the first says it all.
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Parses an appspec under a budget that allows no anchors or aliases (the agent's Ruby 3.1
/// refuses them). A breach is reported, then the text is parsed again to check the rest.
fn parse_appspec(text: &str, file: &str, problems: &mut Vec<Problem>) -> Option<AppSpec> {
    let strict = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(1024 * 1024),
            max_aliases: 0,
            max_anchors: 0,
            max_depth: 32,
        },
    };
    let err = match serde_saphyr::from_str_with_options::<AppSpec>(text, strict) {
        Ok(spec) => return Some(spec),
        Err(e) => e,
    };
    match err.without_snippet() {
        serde_saphyr::Error::Budget { breach, location } => {
            use serde_saphyr::budget::BudgetBreach;
            let line = format!("line {}", anchor_line(text).unwrap_or(location.line() as usize));
            match breach {
                BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => problems.push(Problem::error(
                    file,
                    line,
                    "YAML anchors (&name) and aliases (*name) fail on current agents (Ruby 3.1 refuses them); \
                     write each value out in full",
                )),
                other => {
                    problems.push(Problem::error(
                        file,
                        line,
                        format!("too large or too deep for an appspec ({other:?}); simplify it"),
                    ));
                    return None;
                }
            }
        }
        _ => {
            problems.push(Problem::error(
                file,
                "",
                format!(
                    "is not valid YAML for an appspec: {}; fix the syntax",
                    parse_error(&err)
                ),
            ));
            return None;
        }
    }
    serde_saphyr::from_str::<AppSpec>(text).ok()
}

/// The rules the agent applies to the text of `appspec.yml`, and the traps in it.
/// Returns the parsed spec when the text could be read at all.
pub fn check_text(text: &str, file: &str) -> (Option<AppSpec>, Vec<Problem>) {
    let mut problems = Vec::new();
    let lines = raw_lines(text);
    let spec = parse_appspec(text, file, &mut problems);

    for l in lines.iter().filter(|l| l.top_level) {
        const KNOWN: [&str; 6] = [
            "version",
            "os",
            "files",
            "permissions",
            "hooks",
            "file_exists_behavior",
        ];
        if !KNOWN.contains(&l.key) {
            problems.push(Problem::warning(
                file,
                format!("{} (line {})", l.key, l.number),
                format!(
                    "unknown top-level key; the agent ignores it. Known: {}",
                    KNOWN.join(", ")
                ),
            ));
        }
    }

    // version: the agent compares with the number 0.0; a quoted "0.0" is a string.
    let raw_version = lines.iter().find(|l| l.top_level && l.key == "version");
    if let Some(l) = raw_version
        && l.value.starts_with(['"', '\''])
    {
        problems.push(Problem::error(
            file,
            format!("version (line {})", l.number),
            format!(
                "{} is quoted: the agent reads a string and rejects it; write `version: 0.0` without quotes",
                l.value
            ),
        ));
    }
    let quoted_version = raw_version.is_some_and(|l| l.value.starts_with(['"', '\'']));
    if let Some(spec) = &spec {
        match &spec.version {
            None => problems.push(Problem::error(
                file,
                "version",
                "missing; the agent requires `version: 0.0` (unquoted)",
            )),
            Some(Scalar::Float(v)) if *v == 0.0 => {}
            Some(Scalar::Int(0)) => {}
            Some(_) if quoted_version => {}
            Some(v) => problems.push(Problem::error(
                file,
                "version",
                format!("{v} is not accepted; write `version: 0.0` (unquoted)"),
            )),
        }
        match &spec.os {
            Some(Scalar::Text(os)) if os == "linux" => {}
            None => problems.push(Problem::error(file, "os", "missing; write `os: linux`")),
            Some(v) => problems.push(Problem::error(
                file,
                "os",
                format!("{v} is not accepted for these Linux hooks; write `os: linux` exactly (lowercase)"),
            )),
        }
        check_hooks(spec, file, &mut problems);
        check_files(spec, file, &mut problems);
    }
    check_modes(&lines, file, &mut problems);
    (spec, problems)
}

fn check_hooks(spec: &AppSpec, file: &str, problems: &mut Vec<Problem>) {
    let Some(hooks) = &spec.hooks else { return };
    for (event, scripts) in hooks {
        let field = format!("hooks.{event}");
        if AGENT_STEPS.contains(&event.as_str()) {
            problems.push(Problem::error(
                file,
                &field,
                format!(
                    "{event} is the agent's own step and takes no scripts; move them to BeforeInstall or AfterInstall"
                ),
            ));
            continue;
        }
        if !HOOK_EVENTS.contains(&event.as_str()) {
            let hint = HOOK_EVENTS
                .iter()
                .find(|h| h.eq_ignore_ascii_case(event))
                .map(|h| format!("did you mean {h}? "))
                .unwrap_or_default();
            problems.push(Problem::error(
                file,
                &field,
                format!(
                    "unknown lifecycle event; the agent rejects it. {hint}Known: {}",
                    HOOK_EVENTS.join(", ")
                ),
            ));
            continue;
        }
        let Some(scripts) = scripts else {
            problems.push(Problem::error(
                file,
                &field,
                "has no scripts (the agent fails on an empty event); add `- location: ...` or remove the event",
            ));
            continue;
        };
        let mut total = 0i64;
        for (i, s) in scripts.iter().enumerate() {
            let field = format!("hooks.{event}[{i}]");
            if s.location().is_empty() {
                problems.push(Problem::error(
                    file,
                    format!("{field}.location"),
                    "missing; every script needs `location: path/in/bundle`",
                ));
            }
            let timeout = s.timeout_secs();
            total += timeout.max(0);
            if timeout <= 0 {
                problems.push(Problem::error(
                    file,
                    format!("{field}.timeout"),
                    format!(
                        "{} is not a positive number of seconds (the agent reads it as {timeout}); write e.g. `timeout: 300`",
                        s.timeout.as_ref().map(ToString::to_string).unwrap_or_default()
                    ),
                ));
            } else if timeout > DEFAULT_TIMEOUT as i64 {
                problems.push(Problem::error(
                    file,
                    format!("{field}.timeout"),
                    format!("{timeout} s is over CodeDeploy's limit of 3600 s per lifecycle event; lower it"),
                ));
            }
            if let Some(user) = &s.runas {
                problems.push(Problem::warning(
                    file,
                    format!("{field}.runas"),
                    format!(
                        "`runas: {user}` runs the script through `su {user}`, but these hooks manage systemd units and \
                         /opt and need root; remove `runas:`"
                    ),
                ));
            }
            for key in s.other.keys() {
                problems.push(Problem::warning(
                    file,
                    format!("{field}.{key}"),
                    "unknown key; the agent ignores it (known: location, timeout, runas, sudo)",
                ));
            }
        }
        if total > DEFAULT_TIMEOUT as i64 && scripts.len() > 1 {
            problems.push(Problem::warning(
                file,
                &field,
                format!("the timeouts add up to {total} s; CodeDeploy allows 3600 s per lifecycle event"),
            ));
        }
    }
}

fn check_files(spec: &AppSpec, file: &str, problems: &mut Vec<Problem>) {
    for (i, f) in spec.files.iter().flatten().enumerate() {
        if f.source.as_deref().unwrap_or("").is_empty() {
            problems.push(Problem::error(
                file,
                format!("files[{i}].source"),
                "missing; write the path in the bundle (`/` for all of it)",
            ));
        }
        match f.destination.as_deref() {
            Some(d) if d.starts_with('/') => {}
            Some(d) => problems.push(Problem::error(
                file,
                format!("files[{i}].destination"),
                format!("'{d}' is not an absolute path; write e.g. /opt/my-app"),
            )),
            None => problems.push(Problem::error(
                file,
                format!("files[{i}].destination"),
                "missing; write an absolute folder on the instance",
            )),
        }
    }
    if let Some(b) = &spec.file_exists_behavior
        && !["DISALLOW", "OVERWRITE", "RETAIN"].contains(&b.as_str())
    {
        problems.push(Problem::error(
            file,
            "file_exists_behavior",
            format!("'{b}' is not one of DISALLOW, OVERWRITE, RETAIN"),
        ));
    }
}

/// `permissions: ... mode:` — the agent's YAML 1.1 reads `0644` as octal (420), then reads
/// that number's digits as a mode again: 0644 becomes mode 420, 0755 (493) is rejected.
fn check_modes(lines: &[RawLine<'_>], file: &str, problems: &mut Vec<Problem>) {
    for l in lines
        .iter()
        .filter(|l| l.section == "permissions" && !l.top_level && l.key == "mode")
    {
        let field = format!("permissions: mode (line {})", l.number);
        let quoted = l.value.starts_with(['"', '\'']);
        let value = l.value.trim_matches(['"', '\'']);
        let all_digits = !value.is_empty() && value.chars().all(|c| c.is_ascii_digit());
        if !quoted && all_digits && value.len() > 1 && value.starts_with('0') {
            let fixed = value.trim_start_matches('0');
            let fixed = if fixed.is_empty() { "0" } else { fixed };
            let effect = match u32::from_str_radix(value, 8) {
                Ok(n) => {
                    let digits = n.to_string();
                    if digits.len() > 4 || digits.contains(['8', '9']) {
                        format!("the agent reads it as octal ({n}) and rejects that as a mode")
                    } else {
                        format!("the agent reads it as octal ({n}) and applies mode {digits}, not {value}")
                    }
                }
                Err(_) => "the agent's YAML reader does not take it as a number at all".to_string(),
            };
            problems.push(Problem::error(
                file,
                field,
                format!("`mode: {value}` has a leading 0: {effect}; write `mode: {fixed}`"),
            ));
        } else if !all_digits || value.len() > 4 || value.contains(['8', '9']) {
            problems.push(Problem::error(
                file,
                field,
                format!("'{value}' is not a mode; write three or four octal digits without a leading 0, e.g. `mode: 644`"),
            ));
        }
    }
}

/// The appspec of a bundle folder: its name, its text, and the scripts it points at.
/// Returns the parsed spec when it could be read.
pub fn check_appspec(bundle: &Path) -> (Option<AppSpec>, Vec<Problem>) {
    let path = bundle.join(FILE_NAME);
    if !path.is_file() {
        let mut problems = Vec::new();
        if bundle.join("appspec.yaml").is_file() {
            problems.push(Problem::error(
                "appspec.yaml",
                "",
                "the agent validates appspec.yaml but then finds no hooks in it and runs none; rename it to appspec.yml",
            ));
        } else if let Some(nested) = nested_appspec(bundle) {
            problems.push(Problem::error(
                &nested,
                "",
                format!(
                    "appspec.yml must be at the bundle's root, not in a folder; zip the folder's contents \
                     (cd {} && zip -r ../bundle.zip .)",
                    Path::new(&nested).parent().unwrap_or(Path::new(".")).display()
                ),
            ));
        } else {
            problems.push(Problem::error(
                FILE_NAME,
                "",
                "missing at the bundle's root; the agent needs appspec.yml next to deploy.yml",
            ));
        }
        return (None, problems);
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return (
                None,
                vec![Problem::error(FILE_NAME, "", format!("cannot be read: {e}"))],
            );
        }
    };
    let (spec, mut problems) = check_text(&text, FILE_NAME);
    if let Some(spec) = &spec {
        check_locations(spec, bundle, &mut problems);
        check_sources(spec, bundle, &mut problems);
    }
    (spec, problems)
}

fn nested_appspec(bundle: &Path) -> Option<String> {
    let entries = std::fs::read_dir(bundle).ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        (e.path().join(FILE_NAME).is_file()).then(|| format!("{name}/{FILE_NAME}"))
    })
}

/// Whether a path relative to the bundle stays inside it (no `..` above its root).
fn stays_inside(relative: &Path) -> bool {
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

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

fn check_locations(spec: &AppSpec, bundle: &Path, problems: &mut Vec<Problem>) {
    for event in HOOK_EVENTS {
        for (i, s) in spec.scripts(event).iter().enumerate() {
            let loc = s.location();
            if loc.is_empty() {
                continue;
            }
            let field = format!("hooks.{event}[{i}].location");
            if !stays_inside(Path::new(loc)) {
                problems.push(Problem::error(
                    FILE_NAME,
                    field,
                    format!("'{loc}' points outside the bundle; scripts must ship in it"),
                ));
                continue;
            }
            let path = bundle.join(loc);
            if !path.exists() {
                problems.push(Problem::error(
                    FILE_NAME,
                    field,
                    format!("{loc} is not in the bundle; the agent fails the deployment at {event}. Add it or fix the path"),
                ));
            } else if !path.is_file() {
                problems.push(Problem::error(
                    FILE_NAME,
                    field,
                    format!("{loc} is not a file; point at the script itself"),
                ));
            } else if !is_executable(&path) {
                problems.push(Problem::warning(
                    FILE_NAME,
                    field,
                    format!("{loc} is not executable; the agent chmods it +x with a warning. chmod +x it before zipping"),
                ));
            }
        }
    }
}

fn check_sources(spec: &AppSpec, bundle: &Path, problems: &mut Vec<Problem>) {
    for (i, f) in spec.files.iter().flatten().enumerate() {
        let Some(source) = f.source.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let rel = source.trim_start_matches('/');
        if !stays_inside(Path::new(rel)) || !bundle.join(rel).exists() {
            problems.push(Problem::error(
                FILE_NAME,
                format!("files[{i}].source"),
                format!("'{source}' is not in the bundle; Install fails. Add it or fix the path"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The rest of the bundle
// ---------------------------------------------------------------------------------------

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
    if !command.is_file() {
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
    let template_of = |name: &str| {
        [
            (cfg.socket_unit(), "units/app.socket"),
            (cfg.holder_unit(), "units/app-hold.service"),
            (cfg.template_unit(), "units/app@.service"),
        ]
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // ExecStart= points into the release folder the hooks create on the instance
        // (/opt/<service>/releases/<release>/...), which does not exist on the machine that
        // lints the bundle: systemd-analyze reports exactly that as "Command ... is not
        // executable: No such file or directory". That one message is expected here.
        if line.contains(&release_root)
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
                let base = unit.split('@').next().unwrap_or(unit);
                let file = [
                    (cfg.socket_unit(), "units/app.socket"),
                    (cfg.holder_unit(), "units/app-hold.service"),
                ]
                .into_iter()
                .find(|(n, _)| n == unit)
                .map(|(_, t)| t)
                .or_else(|| (base == cfg.service && unit.contains('@')).then_some("units/app@.service"))
                .unwrap_or("units/");
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

/// Symlinks whose target is outside the bundle: the archive is unpacked elsewhere, so they
/// dangle, or point at whatever the instance has there.
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
                let inside = target.is_relative()
                    && stays_inside(&rel.parent().unwrap_or(Path::new("")).join(&target));
                if !inside {
                    problems.push(Problem::error(
                        &rel.display().to_string(),
                        "",
                        format!(
                            "symlink to {} points outside the bundle; ship the file itself, or link relatively to a file inside",
                            target.display()
                        ),
                    ));
                }
            } else if meta.is_dir() {
                walk(root, &path, problems);
            }
        }
    }
    walk(bundle, bundle, problems);
}

/// Lints an unpacked bundle folder.
pub fn lint_dir(bundle: &Path) -> Report {
    let mut report = Report::default();
    let (spec, problems) = check_appspec(bundle);
    report.problems.extend(problems);
    if let Some(cfg) = check_deploy(bundle, &mut report.problems) {
        if let Some(spec) = &spec {
            report.problems.extend(crate::timeouts::check(spec, &cfg));
        }
        check_units(&cfg, bundle, &mut report);
    }
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

    const GOOD: &str = "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: hooks/application-stop\n      timeout: 60\n  BeforeInstall:\n    - location: hooks/before-install\n      timeout: 120\n  ApplicationStart:\n    - location: hooks/application-start\n      timeout: 300\n  ValidateService:\n    - location: hooks/validate-service\n      timeout: 300\n";

    fn problems(text: &str) -> Vec<Problem> {
        check_text(text, FILE_NAME).1
    }

    /// The one problem of a text, as displayed.
    #[track_caller]
    fn only(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
        p[0].to_string()
    }

    #[test]
    fn a_good_appspec_passes_and_the_repos_own_does_too() {
        assert_eq!(problems(GOOD), vec![]);
        let repo =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../appspec.yml")).unwrap();
        let (spec, p) = check_text(&repo, FILE_NAME);
        assert_eq!(p, vec![], "the repository's appspec.yml");
        let spec = spec.unwrap();
        assert_eq!(
            spec.scripts("ApplicationStart")[0].location(),
            "hooks/application-start"
        );
        assert_eq!(spec.scripts("ApplicationStart")[0].timeout_secs(), 300);
        assert!(spec.scripts("AfterInstall").is_empty());
        assert_eq!(spec.file_exists_behavior(), "DISALLOW");
    }

    #[test]
    fn quoted_version_is_refused() {
        let e = only(&GOOD.replace("version: 0.0", "version: \"0.0\""));
        assert!(e.starts_with("error: appspec.yml: version (line 1)"), "{e}");
        assert!(
            e.contains("quoted") && e.contains("write `version: 0.0` without quotes"),
            "{e}"
        );
        let e = only(&GOOD.replace("version: 0.0", "version: '0.0'  # quoted"));
        assert!(e.contains("quoted"), "{e}");
        let e = only(&GOOD.replace("version: 0.0", "version: 1.0"));
        assert!(e.contains("version: 1.0 is not accepted"), "{e}");
        let e = only(&GOOD.replace("version: 0.0\n", ""));
        assert!(e.contains("version: missing"), "{e}");
        // Ruby: 0 == 0.0.
        assert_eq!(problems(&GOOD.replace("version: 0.0", "version: 0")), vec![]);
    }

    #[test]
    fn os_must_be_linux() {
        let e = only(&GOOD.replace("os: linux", "os: Linux"));
        assert!(
            e.contains("os: \"Linux\" is not accepted") && e.contains("`os: linux`"),
            "{e}"
        );
        let e = only(&GOOD.replace("os: linux\n", ""));
        assert!(e.contains("os: missing"), "{e}");
    }

    #[test]
    fn unknown_and_agent_events_are_refused() {
        let e = only(&GOOD.replace("ValidateService:", "ValidateSevice:"));
        assert!(e.contains("hooks.ValidateSevice: unknown lifecycle event"), "{e}");
        let e = only(&GOOD.replace("ValidateService:", "validateservice:"));
        assert!(e.contains("did you mean ValidateService?"), "{e}");
        let e = only(&GOOD.replace("ValidateService:", "Install:"));
        assert!(
            e.contains("hooks.Install: Install is the agent's own step"),
            "{e}"
        );
        let e = only(&GOOD.replace("ValidateService:", "DownloadBundle:"));
        assert!(
            e.contains("hooks.DownloadBundle: DownloadBundle is the agent's own step"),
            "{e}"
        );
        let e = only(&format!("{GOOD}  AfterInstall:\n"));
        assert!(e.contains("hooks.AfterInstall: has no scripts"), "{e}");
    }

    #[test]
    fn every_script_needs_a_location_and_a_positive_timeout() {
        let e = only(&GOOD.replace("- location: hooks/before-install\n     ", "-"));
        assert!(e.contains("hooks.BeforeInstall[0].location: missing"), "{e}");
        let e = only(&GOOD.replace("timeout: 120", "timeout: 0"));
        assert!(
            e.contains("hooks.BeforeInstall[0].timeout: 0 is not a positive number"),
            "{e}"
        );
        let e = only(&GOOD.replace("timeout: 120", "timeout: -5"));
        assert!(e.contains("timeout: -5 is not a positive"), "{e}");
        let e = only(&GOOD.replace("timeout: 120", "timeout: soon"));
        assert!(e.contains("reads it as 0"), "{e}");
        let e = only(&GOOD.replace("timeout: 120", "timeout: 7200"));
        assert!(e.contains("7200 s is over CodeDeploy's limit of 3600 s"), "{e}");
        // The agent takes "30" with to_i; no timeout means 3600.
        let (spec, p) = check_text(&GOOD.replace("timeout: 120", "timeout: \"30\""), FILE_NAME);
        assert_eq!(p, vec![]);
        assert_eq!(spec.unwrap().scripts("BeforeInstall")[0].timeout_secs(), 30);
        let (spec, _) = check_text(&GOOD.replace("      timeout: 120\n", ""), FILE_NAME);
        assert_eq!(spec.unwrap().scripts("BeforeInstall")[0].timeout_secs(), 3600);
    }

    #[test]
    fn runas_and_unknown_keys_are_warnings() {
        let p = problems(&GOOD.replace("timeout: 120", "timeout: 120\n      runas: deploy"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].severity, Severity::Warning);
        assert!(
            p[0].to_string()
                .contains("hooks.BeforeInstall[0].runas: `runas: deploy`")
                && p[0].message.contains("need root; remove `runas:`"),
            "{}",
            p[0]
        );
        let p = problems(&GOOD.replace("timeout: 120", "timout: 120"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].to_string()
                .contains("hooks.BeforeInstall[0].timout: unknown key"),
            "{}",
            p[0]
        );
        let p = problems(&format!("{GOOD}hook:\n  x: 1\n"));
        assert!(
            p.len() == 1 && p[0].severity == Severity::Warning && p[0].field == "hook (line 16)",
            "{p:#?}"
        );
    }

    #[test]
    fn octal_modes_are_caught_with_their_effect() {
        let spec = |mode: &str| {
            format!(
                "{GOOD}permissions:\n  - object: /opt/app\n    pattern: \"**\"\n    mode: {mode}\n    type:\n      - file\n"
            )
        };
        assert_eq!(problems(&spec("644")), vec![]);
        assert_eq!(problems(&spec("\"0644\"")), vec![]);
        let e = only(&spec("0644"));
        assert!(e.contains("permissions: mode (line 19)"), "{e}");
        assert!(
            e.contains("octal (420) and applies mode 420, not 0644") && e.contains("write `mode: 644`"),
            "{e}"
        );
        let e = only(&spec("0755"));
        assert!(
            e.contains("octal (493) and rejects") && e.contains("write `mode: 755`"),
            "{e}"
        );
        let e = only(&spec("0755  # rwx"));
        assert!(e.contains("write `mode: 755`"), "{e}");
        let e = only(&spec("rwx"));
        assert!(e.contains("'rwx' is not a mode"), "{e}");
        let e = only(&spec("788"));
        assert!(e.contains("'788' is not a mode"), "{e}");
        // A `mode:` elsewhere (not under permissions:) is not the agent's business.
        assert_eq!(
            problems(&format!("{GOOD}files:\n  - source: /\n    destination: /opt/x\n")),
            vec![]
        );
    }

    #[test]
    fn anchors_and_aliases_are_refused() {
        let text = "version: 0.0\nos: linux\nhooks:\n  BeforeInstall: &pre\n    - location: a\n  AfterInstall: *pre\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].message.contains("anchors (&name) and aliases (*name)"),
            "{}",
            p[0]
        );
        assert_eq!(p[0].field, "line 4", "the anchor's line: {}", p[0]);
        assert_eq!(anchor_line("a: \"&x\"\nb: [1, *y]\n"), Some(2));
        // The rest is still checked: the aliased list is read.
        let text = text.replace("location: a", "location: a\n      timeout: 0");
        let p = problems(&text);
        assert_eq!(p.len(), 3, "anchor + both timeouts: {p:#?}");
        // A & or * inside a quoted string is text, not an anchor.
        assert_eq!(
            problems(&GOOD.replace("hooks/before-install", "\"hooks/a&b*c\"")),
            vec![]
        );
    }

    #[test]
    fn syntax_errors_and_files_entries_are_reported() {
        let e = only("version: 0.0\nos: linux\nhooks: [1\n");
        assert!(e.contains("is not valid YAML") && e.contains("line"), "{e}");
        let p = problems(&format!(
            "{GOOD}files:\n  - source: bin\n    destination: opt/app\n  - destination: /x\nfile_exists_behavior: KEEP\n"
        ));
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 3, "{text:#?}");
        assert!(text[0].contains("files[0].destination: 'opt/app' is not an absolute path"));
        assert!(text[1].contains("files[1].source: missing"));
        assert!(text[2].contains("file_exists_behavior: 'KEEP'"));
    }

    #[test]
    fn raw_scanner_reads_block_yaml() {
        let lines = raw_lines("a: 1 # c\nb:\n  - c: \"x # y\"\n    d: 2\n# only\ne: 'q'\n");
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.number, l.section, l.top_level, l.key, l.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a", true, "a", "1"),
                (2, "b", true, "b", ""),
                (3, "b", false, "c", "\"x # y\""),
                (4, "b", false, "d", "2"),
                (6, "e", true, "e", "'q'"),
            ]
        );
    }

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
    fn symlinks_out_of_the_bundle_are_flagged() {
        let d = bundle();
        std::os::unix::fs::symlink("/etc/passwd", d.0.join("bin/abs")).unwrap();
        std::os::unix::fs::symlink("../../x", d.0.join("bin/up")).unwrap();
        std::os::unix::fs::symlink("sample-app", d.0.join("bin/ok")).unwrap();
        std::os::unix::fs::symlink("../deploy.yml", d.0.join("bin/ok2")).unwrap();
        let r = lint_dir(&d.0);
        let text = messages(&r);
        assert_eq!(r.errors(), 2, "{text}");
        assert!(
            text.contains("error: bin/abs: symlink to /etc/passwd points outside the bundle"),
            "{text}"
        );
        assert!(
            text.contains("error: bin/up: symlink to ../../x points outside the bundle"),
            "{text}"
        );
    }

    #[test]
    fn zips_are_unpacked_with_modes_and_linted() {
        let d = bundle();
        std::os::unix::fs::symlink("/etc", d.0.join("etc-link")).unwrap();
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
            text.contains("etc-link: symlink to /etc points outside"),
            "{text}"
        );
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
