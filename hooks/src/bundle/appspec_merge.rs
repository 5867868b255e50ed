//! handoff's four hooks in a team's own `appspec.yml`: `handoff init` merges them into the
//! file ([`merge`]), and `lint-bundle` checks the result the same way ([`check_order`]).
//!
//! The rule: in each of ApplicationStop, BeforeInstall, ApplicationStart and ValidateService,
//! handoff's script runs FIRST (the agent runs an event's scripts in order). The team's other
//! scripts may follow it, except one that starts a service in ApplicationStart or stops one in
//! ApplicationStop (`systemctl start|restart|stop …`, `service … start|stop|restart`): the
//! switch starts each release and drains the old one itself, and a second start or stop beside
//! it breaks the zero-downtime promise. Such a script is refused with its appspec line and
//! the line of the script that does it.
//!
//! The merge is textual: only the four events' entries are inserted (or moved to the top);
//! every other line — `version`, `os`, `files:`, `permissions:`, the team's other hooks, their
//! timeouts and `runas:`, comments — stays byte for byte. The result is parsed again with
//! [`crate::bundle::appspec::check_text`] before it is written.

use std::path::Path;

use anyhow::{Result, bail};

use crate::bundle::appspec::{self, Problem};
use crate::fault::Fault;

/// handoff's hooks: event, script, timeout (those of the shipped appspec.yml).
pub const HANDOFF_HOOKS: [(&str, &str, u64); 4] = [
    ("ApplicationStop", "hooks/application-stop", 60),
    ("BeforeInstall", "hooks/before-install", 120),
    ("ApplicationStart", "hooks/application-start", 300),
    ("ValidateService", "hooks/validate-service", 300),
];

/// What a line of a script does to a service, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Start,
    Stop,
    /// restart, try-restart, reload-or-restart: both.
    Restart,
}

/// The first line of a shell script that starts or stops a service: (line number, the line,
/// what it does).
fn service_control(script: &str) -> Vec<(usize, String, Control)> {
    let mut out = Vec::new();
    for (i, line) in script.lines().enumerate() {
        let code = match line.find('#') {
            Some(p) if p == 0 || line[..p].ends_with(char::is_whitespace) => &line[..p],
            _ => line,
        };
        let words: Vec<&str> = code
            .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
            .filter(|w| !w.is_empty())
            .collect();
        let verb = |w: &str| match w {
            "start" => Some(Control::Start),
            "stop" => Some(Control::Stop),
            "restart" | "try-restart" | "reload-or-restart" | "try-reload-or-restart" => {
                Some(Control::Restart)
            }
            _ => None,
        };
        for (k, w) in words.iter().enumerate() {
            let found = match w.rsplit('/').next().unwrap_or(w) {
                "systemctl" => words[k + 1..]
                    .iter()
                    .find(|w| !w.starts_with('-'))
                    .and_then(|w| verb(w)),
                // service NAME start|stop|restart
                "service" => words.get(k + 2).and_then(|w| verb(w)),
                _ => None,
            };
            if let Some(c) = found {
                out.push((i + 1, line.trim().to_string(), c));
                break;
            }
        }
    }
    out
}

/// The layout of the `hooks:` block, by line index (0-based) into the file's lines.
#[derive(Debug)]
struct Layout {
    /// The `hooks:` line, if any.
    hooks_line: Option<usize>,
    /// The event keys' indentation (two spaces when the block has none yet).
    event_indent: String,
    /// The last line of the block with content (where new events are appended after).
    last_content: Option<usize>,
    events: Vec<Event>,
}

#[derive(Debug)]
struct Event {
    name: String,
    key_line: usize,
    /// Each item's first line (`- location: …`) and its end (exclusive).
    items: Vec<(usize, usize)>,
    dash_indent: Option<String>,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Finds the `hooks:` block and its events. Refuses what a line scanner cannot edit safely
/// (a flow-style `hooks: {…}` or event `[…]`) with the line.
fn layout(lines: &[&str]) -> Result<Layout> {
    let refuse = |n: usize, what: &str| -> anyhow::Error {
        Fault::input(format!(
            "appspec.yml:{}: {what}; write it in block style (one `- location:` per line, as `handoff init` \
             writes), then run init again",
            n + 1
        ))
        .into()
    };
    let hooks_line = lines.iter().position(|l| {
        indent_of(l) == 0 && {
            let c = l.trim_end();
            c == "hooks:" || c.starts_with("hooks:") && c["hooks:".len()..].starts_with([' ', '\t'])
        }
    });
    let mut layout = Layout {
        hooks_line,
        event_indent: "  ".into(),
        last_content: None,
        events: Vec::new(),
    };
    let Some(h) = hooks_line else { return Ok(layout) };
    let value = lines[h]["hooks:".len()..].trim();
    let value = value.split(" #").next().unwrap_or("").trim();
    if !value.is_empty() && value != "#" && !value.starts_with('#') {
        return Err(refuse(h, "`hooks:` is written on one line"));
    }
    let end = (h + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent_of(lines[i]) == 0)
        .unwrap_or(lines.len());
    let content: Vec<usize> = (h + 1..end).filter(|&i| is_content(lines[i])).collect();
    layout.last_content = content.last().copied();
    let Some(&first) = content.first() else {
        return Ok(layout);
    };
    let ei = indent_of(lines[first]);
    layout.event_indent = lines[first][..ei].to_string();
    let keys: Vec<usize> = content
        .iter()
        .copied()
        .filter(|&i| indent_of(lines[i]) == ei)
        .collect();
    for (k, &key) in keys.iter().enumerate() {
        let text = lines[key].trim();
        let Some((name, rest)) = text.split_once(':') else {
            return Err(refuse(key, "an event key without a colon"));
        };
        let rest = rest.trim();
        let span_end = keys.get(k + 1).copied().unwrap_or(end);
        let body: Vec<usize> = content
            .iter()
            .copied()
            .filter(|&i| i > key && i < span_end)
            .collect();
        let mut event = Event {
            name: name.trim().to_string(),
            key_line: key,
            items: Vec::new(),
            dash_indent: None,
        };
        if !rest.is_empty() && !rest.starts_with('#') {
            if HANDOFF_HOOKS.iter().any(|(e, _, _)| *e == event.name) {
                return Err(refuse(key, &format!("{} is written on one line", event.name)));
            }
            layout.events.push(event);
            continue;
        }
        let dashes: Vec<usize> = body
            .iter()
            .copied()
            .filter(|&i| {
                let t = lines[i].trim_start();
                t == "-" || t.starts_with("- ")
            })
            .collect();
        if let Some(&d) = dashes.first() {
            let di = indent_of(lines[d]);
            event.dash_indent = Some(lines[d][..di].to_string());
            let items: Vec<usize> = dashes
                .into_iter()
                .filter(|&i| indent_of(lines[i]) == di)
                .collect();
            let last_body = body.last().copied().unwrap_or(key);
            for (j, &start) in items.iter().enumerate() {
                let stop = items.get(j + 1).copied().unwrap_or(last_body + 1);
                event.items.push((start, stop));
            }
        }
        layout.events.push(event);
    }
    Ok(layout)
}

/// The scripts of the four events that start or stop a service, and handoff's scripts that do
/// not run first, as problems with the appspec line. `project` is where the scripts are read.
fn problems_in(spec: &appspec::AppSpec, project: &Path, layout: &Layout) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (event, ours, _) in HANDOFF_HOOKS {
        let scripts = spec.scripts(event);
        let Some(ev) = layout.events.iter().find(|e| e.name == event) else {
            continue;
        };
        let line_of = |i: usize| ev.items.get(i).map(|(s, _)| s + 1).unwrap_or(ev.key_line + 1);
        for (i, s) in scripts.iter().enumerate() {
            let loc = s.location();
            if loc == ours {
                continue;
            }
            let flagged = match event {
                "ApplicationStart" => [Control::Start, Control::Restart].as_slice(),
                "ApplicationStop" => [Control::Stop, Control::Restart].as_slice(),
                _ => &[],
            };
            if flagged.is_empty() || !crate::links::stays_inside(Path::new(loc)) {
                continue;
            }
            let Ok(script) = std::fs::read_to_string(project.join(loc)) else {
                continue;
            };
            if let Some((n, excerpt, _)) = service_control(&script)
                .into_iter()
                .find(|(_, _, c)| flagged.contains(c))
            {
                let (does, why, instead) = if event == "ApplicationStart" {
                    (
                        "starts the app itself",
                        "handoff's ApplicationStart starts each release beside the serving one",
                        "if it starts another service than the app, move it to AfterInstall",
                    )
                } else {
                    (
                        "stops a service itself",
                        "handoff's ApplicationStop keeps the serving release up, and the switch drains it without \
                         dropping a request",
                        "if it stops another service than the app, move it to BeforeInstall",
                    )
                };
                problems.push(Problem::error(
                    appspec::FILE_NAME,
                    format!("line {}", line_of(i)),
                    format!(
                        "{loc} {does} (`{excerpt}`, line {n}); {why}: remove that script from {event} ({instead})"
                    ),
                ));
            }
        }
        if let Some(k) = scripts.iter().position(|s| s.location() == ours)
            && k > 0
        {
            problems.push(Problem::error(
                appspec::FILE_NAME,
                format!("line {}", line_of(k)),
                format!(
                    "{ours} must run first in {event} (the agent runs an event's scripts in order): move it to the top \
                     of the list (`handoff init` merges it there)"
                ),
            ));
        }
    }
    problems
}

/// `lint-bundle`'s view of the merge rule on a bundle folder: handoff's script first in each of
/// the four events that runs it, and no script beside it that starts (ApplicationStart) or stops
/// (ApplicationStop) a service. Nothing to say about an appspec that runs none of handoff's hooks.
pub fn check_order(bundle: &Path) -> Vec<Problem> {
    let Ok(text) = std::fs::read_to_string(bundle.join(appspec::FILE_NAME)) else {
        return Vec::new();
    };
    let (Some(spec), _) = appspec::check_text(&text, appspec::FILE_NAME) else {
        return Vec::new();
    };
    if !HANDOFF_HOOKS
        .iter()
        .any(|(e, ours, _)| spec.scripts(e).iter().any(|s| s.location() == *ours))
    {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let Ok(layout) = layout(&lines) else {
        return Vec::new();
    };
    problems_in(&spec, bundle, &layout)
}

/// The entry of one of handoff's hooks, at a list's indentation.
fn entry(dash_indent: &str, location: &str, timeout: u64) -> String {
    format!("{dash_indent}- location: {location}\n{dash_indent}  timeout: {timeout}\n")
}

/// Merges handoff's four hooks into the text of an existing appspec.yml, each first in its
/// event; every other line is kept as it is. `project` is the folder the team's scripts are
/// read from (a script that starts or stops a service beside handoff's is refused, exit 2,
/// naming the appspec line and the script's). Merging a merged file changes nothing.
pub fn merge(text: &str, project: &Path) -> Result<String> {
    let (spec, problems) = appspec::check_text(text, appspec::FILE_NAME);
    let Some(spec) = spec else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(Fault::input(format!(
            "appspec.yml cannot be read, so handoff's hooks cannot be merged into it: {}; fix it (or move it away \
             and run init again for the shipped one)",
            list.join("; ")
        )));
    };
    let lines: Vec<&str> = text.lines().collect();
    let layout = layout(&lines)?;
    let conflicts: Vec<String> = problems_in(&spec, project, &layout)
        .into_iter()
        .filter(|p| !p.message.contains("must run first"))
        .map(|p| {
            format!(
                "appspec.yml:{}: {}",
                p.field.trim_start_matches("line "),
                p.message
            )
        })
        .collect();
    if !conflicts.is_empty() {
        bail!(Fault::input(format!(
            "{}\nnothing was written",
            conflicts.join("\n")
        )));
    }

    // Edits by line index: text inserted before a line, and lines removed.
    let mut insert_before: Vec<(usize, String)> = Vec::new();
    let mut remove: Vec<(usize, usize)> = Vec::new();
    let mut appended = String::new();
    let ei = &layout.event_indent;
    for (event, ours, timeout) in HANDOFF_HOOKS {
        let scripts = spec.scripts(event);
        match layout.events.iter().find(|e| e.name == event) {
            Some(ev) if !ev.items.is_empty() => {
                if ev.items.len() != scripts.len() {
                    bail!(Fault::input(format!(
                        "appspec.yml:{}: {event}'s list could not be read line by line; write one `- location:` per \
                         script (block style), then run init again",
                        ev.key_line + 1
                    )));
                }
                if scripts[0].location() == ours {
                    continue;
                }
                if let Some(k) = scripts.iter().position(|s| s.location() == ours) {
                    remove.push(ev.items[k]);
                }
                let di = ev.dash_indent.clone().unwrap_or_else(|| format!("{ei}  "));
                insert_before.push((ev.items[0].0, entry(&di, ours, timeout)));
            }
            Some(ev) => {
                // The key without a list (the agent refuses that): the list goes under it.
                insert_before.push((ev.key_line + 1, entry(&format!("{ei}  "), ours, timeout)));
            }
            None => {
                appended.push_str(&format!(
                    "{ei}{event}:\n{}",
                    entry(&format!("{ei}  "), ours, timeout)
                ));
            }
        }
    }

    let mut out = String::with_capacity(text.len() + 512);
    let raw: Vec<&str> = text.split_inclusive('\n').collect();
    let append_after = match layout.hooks_line {
        Some(h) => Some(layout.last_content.unwrap_or(h)),
        None => None,
    };
    for (i, line) in raw.iter().enumerate() {
        for (_, t) in insert_before.iter().filter(|(at, _)| *at == i) {
            out.push_str(t);
        }
        if !remove.iter().any(|(s, e)| i >= *s && i < *e) {
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push('\n');
            }
        }
        if append_after == Some(i) {
            out.push_str(&appended);
        }
    }
    for (_, t) in insert_before.iter().filter(|(at, _)| *at >= raw.len()) {
        out.push_str(t);
    }
    if layout.hooks_line.is_none() {
        out.push_str("hooks:\n");
        out.push_str(&appended);
    }

    // The result must read as an appspec whose four events start with handoff's scripts.
    let (merged, _) = appspec::check_text(&out, appspec::FILE_NAME);
    let ok = merged.is_some_and(|m| {
        HANDOFF_HOOKS
            .iter()
            .all(|(e, ours, _)| m.scripts(e).first().is_some_and(|s| s.location() == *ours))
    });
    if !ok {
        bail!(Fault::input(
            "appspec.yml's layout could not be merged line by line (nothing was written); add handoff's four hooks \
             by hand, each first in its event (see the shipped appspec.yml in README \"Bring your own server\")"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("handoff-merge-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const TEAMS: &str = "\
# Our deployment (ops team)
version: 0.0
os: linux
files:
  - source: /
    destination: /srv/shop   # the app's files
permissions:
  - object: /srv/shop
    owner: shop
    mode: 755
hooks:
  # migrations, then warm the cache
  AfterInstall:
    - location: scripts/migrate.sh
      timeout: 600
      runas: shop
  ApplicationStart:
    - location: scripts/warm_cache.sh
      timeout: 120
  BeforeAllowTraffic:
    - location: scripts/notify.sh
      timeout: 30
# end of file
";

    #[test]
    fn the_shipped_appspec_has_handoffs_hooks() {
        let spec: appspec::AppSpec = serde_saphyr::from_str(crate::bundle::project::APPSPEC).unwrap();
        for (event, ours, timeout) in HANDOFF_HOOKS {
            let s = &spec.scripts(event)[0];
            assert_eq!((s.location(), s.timeout_secs()), (ours, timeout as i64));
        }
        // Merging into the shipped appspec changes nothing.
        let d = scratch("shipped");
        assert_eq!(
            merge(crate::bundle::project::APPSPEC, &d).unwrap(),
            crate::bundle::project::APPSPEC
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn merge_keeps_every_other_line_and_is_idempotent() {
        let d = scratch("keep");
        std::fs::create_dir_all(d.join("scripts")).unwrap();
        std::fs::write(
            d.join("scripts/warm_cache.sh"),
            "#!/bin/sh\ncurl -s localhost/warm\n",
        )
        .unwrap();
        let merged = merge(TEAMS, &d).unwrap();
        // Every line of the team's file is there, in order, unchanged.
        let mut rest = merged.lines();
        for line in TEAMS.lines() {
            assert!(rest.any(|l| l == line), "{line:?} lost or moved in:\n{merged}");
        }
        assert!(
            merged.contains(
                "  ApplicationStart:\n    - location: hooks/application-start\n      timeout: 300\n    - location: \
                 scripts/warm_cache.sh\n      timeout: 120\n"
            ),
            "{merged}"
        );
        assert!(
            merged.contains(
                "      timeout: 30\n  ApplicationStop:\n    - location: hooks/application-stop\n      timeout: 60\n  \
                 BeforeInstall:\n"
            ),
            "the missing events follow the last one, before the trailing comment:\n{merged}"
        );
        assert!(
            merged.ends_with("      timeout: 300\n# end of file\n"),
            "{merged}"
        );
        let (spec, problems) = appspec::check_text(&merged, appspec::FILE_NAME);
        assert_eq!(problems, vec![], "{merged}");
        let spec = spec.unwrap();
        assert_eq!(spec.scripts("AfterInstall")[0].runas.as_deref(), Some("shop"));
        assert_eq!(spec.files.as_ref().unwrap().len(), 1);
        assert_eq!(
            merge(&merged, &d).unwrap(),
            merged,
            "a second merge changes nothing"
        );

        // handoff's entry further down the list is moved to the top, once.
        let late = merged.replace(
            "    - location: hooks/application-start\n      timeout: 300\n    - location: scripts/warm_cache.sh\n      \
             timeout: 120\n",
            "    - location: scripts/warm_cache.sh\n      timeout: 120\n    - location: hooks/application-start\n      \
             timeout: 300\n",
        );
        assert_ne!(late, merged);
        std::fs::write(d.join(appspec::FILE_NAME), &late).unwrap();
        let p = check_order(&d);
        assert!(
            p.len() == 1
                && p[0]
                    .to_string()
                    .contains("line 20: hooks/application-start must run first"),
            "{p:#?}"
        );
        assert_eq!(merge(&late, &d).unwrap(), merged);

        // A file without hooks: gets them all at the end.
        let bare = "version: 0.0\nos: linux\n";
        let m = merge(bare, &d).unwrap();
        assert!(
            m.starts_with("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n"),
            "{m}"
        );
        assert_eq!(appspec::check_text(&m, appspec::FILE_NAME).1, vec![]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_script_that_starts_or_stops_the_app_is_refused_with_its_lines() {
        let d = scratch("conflict");
        std::fs::create_dir_all(d.join("scripts")).unwrap();
        std::fs::write(
            d.join("scripts/start_server.sh"),
            "#!/bin/sh\n# systemctl start is ours now\nsudo systemctl restart myapp\n",
        )
        .unwrap();
        std::fs::write(
            d.join("scripts/stop_server.sh"),
            "#!/bin/sh\nservice myapp stop || true\n",
        )
        .unwrap();
        let text = "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: scripts/stop_server.sh\n      \
                    timeout: 30\n  ApplicationStart:\n    - location: scripts/start_server.sh\n      timeout: 60\n";
        let err = merge(text, &d).unwrap_err();
        assert_eq!(crate::fault::exit_code(&err), 2);
        let msg = format!("{err:#}");
        assert!(
            msg.contains(
                "appspec.yml:8: scripts/start_server.sh starts the app itself (`sudo systemctl restart myapp`, line 3); \
                 handoff's ApplicationStart starts each release"
            ) && msg.contains("remove that script from ApplicationStart"),
            "{msg}"
        );
        assert!(
            msg.contains("appspec.yml:5: scripts/stop_server.sh stops a service itself (`service myapp stop || true`, line 2)"),
            "{msg}"
        );
        // lint-bundle says the same of a bundle that runs handoff's hooks beside them.
        let merged_by_hand = text.replace(
            "  ApplicationStart:\n",
            "  ApplicationStart:\n    - location: hooks/application-start\n      timeout: 300\n",
        );
        std::fs::write(d.join(appspec::FILE_NAME), merged_by_hand).unwrap();
        let p = check_order(&d);
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[1].to_string()
                .starts_with("error: appspec.yml: line 10: scripts/start_server.sh starts the app"),
            "{p:#?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn service_control_is_read_from_shell_lines() {
        let c = |s: &str| {
            service_control(s)
                .into_iter()
                .map(|(n, _, c)| (n, c))
                .collect::<Vec<_>>()
        };
        assert_eq!(c("systemctl --no-block start app\n"), vec![(1, Control::Start)]);
        assert_eq!(
            c("x\n/usr/bin/systemctl stop app.service\n"),
            vec![(2, Control::Stop)]
        );
        assert_eq!(c("service nginx restart\n"), vec![(1, Control::Restart)]);
        assert_eq!(
            c("# systemctl start app\nsystemctl status app\necho start\n"),
            vec![]
        );
    }
}
