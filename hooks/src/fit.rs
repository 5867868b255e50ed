//! What the rendered units ask of the app, checked against what `lint-bundle` can know about
//! the app without running it: a JIT runtime cannot live under `MemoryDenyWriteExecute=yes`
//! (V8, the JVM, PyPy, .NET die with SIGTRAP or SIGSEGV at start), a shared socket without
//! `NonBlocking=yes` becomes blocking for the serving instance whenever the next one starts,
//! and without `health.instance_header` the hooks cannot tell which instance answered.

use std::path::Path;

use crate::appspec::Problem;
use crate::config::DeployConfig;
use crate::units::Rendered;

/// Runtimes that compile to machine code at run time and so need writable, executable memory.
const JIT_RUNTIMES: &[&str] = &[
    "node", "nodejs", "java", "pypy", "pypy3", "dotnet", "bun", "deno", "luajit",
];

/// The program that really runs: the interpreter of a script's `#!` line (through `env`), or
/// the command itself.
fn runtime_of(command: &Path) -> Option<String> {
    let head = std::fs::read(command).ok()?;
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let program = match std::str::from_utf8(first).ok().and_then(|l| l.strip_prefix("#!")) {
        Some(shebang) => {
            let mut words = shebang.split_whitespace();
            let interpreter = words.next()?;
            if interpreter.ends_with("/env") {
                words.find(|w| !w.starts_with('-'))?.to_string()
            } else {
                interpreter.to_string()
            }
        }
        None => command.to_string_lossy().to_string(),
    };
    Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
}

fn has_directive(unit: &str, directive: &str) -> bool {
    unit.lines().any(|l| l.trim() == directive)
}

/// Problems of the units' fit to the app, for `lint-bundle`.
pub fn check(cfg: &DeployConfig, bundle: &Path, units: &[Rendered]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(template) = units.iter().find(|u| u.name == cfg.template_unit()) else {
        return problems;
    };
    let file = if cfg.is_proxy() {
        "units/proxied@.service"
    } else {
        "units/app@.service"
    };
    if let Some(runtime) = runtime_of(&bundle.join(&cfg.app.command))
        && JIT_RUNTIMES.contains(&runtime.as_str())
        && has_directive(&template.text, "MemoryDenyWriteExecute=yes")
    {
        problems.push(Problem::error(
            file,
            "MemoryDenyWriteExecute",
            format!(
                "app.command runs {runtime}, a JIT runtime: it needs writable and executable memory and dies at start \
                 (SIGTRAP or SIGSEGV) under MemoryDenyWriteExecute=yes; remove that line from the template"
            ),
        ));
    }
    if cfg.is_proxy() {
        // No shared socket in the app, and the front names the release that answers.
        return problems;
    }
    if !has_directive(&template.text, "NonBlocking=yes") {
        problems.push(Problem::warning(
            "units/app@.service",
            "NonBlocking",
            "missing NonBlocking=yes: each new instance's start makes the shared socket blocking for the serving \
             one, and a server that set the flag once stalls in accept() at every switch; add NonBlocking=yes",
        ));
    }
    if cfg.health.instance_header.is_none() {
        problems.push(Problem::warning(
            "deploy.yml",
            "health.instance_header",
            "not set: the hooks cannot tell which instance answered a probe, so the old release's answers can \
             confirm a new release that is broken; have the app echo its INSTANCE environment variable in a \
             header (e.g. X-Instance) and name it here",
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(script: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "handoff-fit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/app"), script).unwrap();
        d
    }

    fn cfg(header: bool) -> DeployConfig {
        DeployConfig::parse(&format!(
            "service: t\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n{}",
            if header {
                "health:\n  instance_header: X-Instance\n"
            } else {
                ""
            }
        ))
        .unwrap()
    }

    fn template(text: &str) -> Vec<Rendered> {
        vec![Rendered {
            name: "t@.service".into(),
            text: text.into(),
        }]
    }

    #[test]
    fn a_jit_runtime_under_memory_deny_write_execute_is_an_error() {
        let dir = bundle("#!/usr/bin/env node\nrequire('http')\n");
        let p = check(
            &cfg(true),
            &dir,
            &template("[Service]\nNonBlocking=yes\nMemoryDenyWriteExecute=yes\n"),
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].is_error() && p[0].message.contains("runs node, a JIT runtime"),
            "{p:#?}"
        );
        // The same app without the directive, and a shell app with it, pass.
        assert!(check(&cfg(true), &dir, &template("[Service]\nNonBlocking=yes\n")).is_empty());
        let sh = bundle("#!/bin/sh\nexec true\n");
        assert!(
            check(
                &cfg(true),
                &sh,
                &template("[Service]\nNonBlocking=yes\nMemoryDenyWriteExecute=yes\n")
            )
            .is_empty()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_blocking_socket_and_an_unconfirmable_health_check_are_warnings() {
        let dir = bundle("#!/bin/sh\n");
        let p = check(&cfg(false), &dir, &template("[Service]\n"));
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 2, "{text:#?}");
        assert!(p.iter().all(|p| !p.is_error()));
        assert!(text[0].contains("missing NonBlocking=yes"), "{text:#?}");
        assert!(text[1].contains("health.instance_header: not set"), "{text:#?}");
    }

    #[test]
    fn the_shipped_units_fit_the_sample_app() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = DeployConfig::load(&repo.join("deploy.yml")).unwrap();
        let units = crate::units::render(&cfg, &repo).unwrap();
        assert_eq!(check(&cfg, &repo, &units), vec![]);
    }
}
