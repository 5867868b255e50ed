//! `appspec.yml` as the CodeDeploy agent reads it (the rest of `lint-bundle` is in
//! [`crate::bundle::lint`]).
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
use std::path::Path;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::links::stays_inside;

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
            // Only handoff's own hooks (in hooks/) need root; a team's script may run as anyone.
            if let Some(user) = &s.runas
                && s.location().starts_with("hooks/")
            {
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

pub(crate) fn is_executable(path: &Path) -> bool {
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

mod report;
#[cfg(test)]
pub(crate) mod tests;

pub use report::{Problem, Report, Severity};
