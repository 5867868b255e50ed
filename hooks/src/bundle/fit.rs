//! What the rendered units ask of the app, checked against what `lint-bundle` can know about
//! the app without running it: a JIT runtime cannot live under `MemoryDenyWriteExecute=yes`
//! (V8, the JVM, PyPy, .NET die with SIGTRAP or SIGSEGV at start) unless `app.needs: [jit]`,
//! gunicorn's workers cannot call setuid() unless `app.needs: [setuid]`, a shared socket without
//! `NonBlocking=yes` becomes blocking for the serving instance whenever the next one starts,
//! and without `health.instance_header` the hooks cannot tell which instance answered.

use std::path::Path;

use crate::bundle::appspec::Problem;
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

/// The value a unit gives `key`: the last assignment wins, as in systemd.
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// Whether a `SystemCallFilter=` line after the deny list allows the setuid group again.
fn allows_setuid(unit: &str) -> bool {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .any(|v| !v.starts_with('~') && v.split_whitespace().any(|g| g == "@setuid"))
}

/// Problems of the units' fit to the app, for `lint-bundle`.
pub fn check(cfg: &DeployConfig, bundle: &Path, units: &[Rendered]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(template) = units.iter().find(|u| u.name == cfg.template_unit()) else {
        return problems;
    };
    let command = if Path::new(&cfg.app.command).is_absolute() {
        Path::new(&cfg.app.command).to_path_buf()
    } else {
        bundle.join(&cfg.app.command)
    };
    let program = Path::new(&cfg.app.command)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if let Some(runtime) = runtime_of(&command).or_else(|| Some(program.clone()))
        && (JIT_RUNTIMES.contains(&runtime.as_str()) || JIT_RUNTIMES.contains(&program.as_str()))
        && directive(&template.text, "MemoryDenyWriteExecute") == Some("yes")
    {
        let runtime = if JIT_RUNTIMES.contains(&program.as_str()) {
            program.clone()
        } else {
            runtime
        };
        problems.push(Problem::error(
            "deploy.yml",
            "app.needs",
            format!(
                "app.command runs {runtime}, a JIT runtime: it needs writable and executable memory and dies at start \
                 (SIGTRAP or SIGSEGV) under the unit's MemoryDenyWriteExecute=yes; add `needs: [jit]` under app:"
            ),
        ));
    }
    if program == "gunicorn" && !allows_setuid(&template.text) {
        problems.push(Problem::error(
            "deploy.yml",
            "app.needs",
            "app.command is gunicorn, whose workers call setuid()/setgid() to their own ids at start; the unit's \
             SystemCallFilter= refuses them (EPERM) and every worker fails to boot; add `needs: [setuid]` under app:"
                .to_string(),
        ));
    }
    if cfg.is_proxy() {
        // No shared socket in the app, and the front names the release that answers.
        return problems;
    }
    if directive(&template.text, "NonBlocking") != Some("yes") {
        problems.push(Problem::warning(
            "units/app@.service",
            "NonBlocking",
            "missing NonBlocking=yes: each new instance's start makes the shared socket blocking for the serving \
             one, and a server that set the flag once stalls in accept() at every switch; add NonBlocking=yes",
        ));
    }
    if let Err(e) = cfg.check_instance_confirmation() {
        problems.push(Problem::error(
            "deploy.yml",
            "health.instance_header",
            e.to_string(),
        ));
    } else if cfg.strategy == crate::config::Strategy::Handoff && cfg.instance_header().is_none() {
        problems.push(Problem::warning(
            "deploy.yml",
            "health.instance_header",
            "none: the hooks cannot tell which instance answered a probe, so the old release's answers can \
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

    fn cfg(header: &str) -> DeployConfig {
        DeployConfig::parse(&format!(
            "service: t\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n{}",
            if header.is_empty() {
                String::new()
            } else {
                format!("health:\n  instance_header: {header}\n")
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
            &cfg("X-Instance"),
            &dir,
            &template("[Service]\nNonBlocking=yes\nMemoryDenyWriteExecute=yes\n"),
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].is_error()
                && p[0].message.contains("runs node, a JIT runtime")
                && p[0].message.contains("needs: [jit]"),
            "{p:#?}"
        );
        // The same app without the directive, or with app.needs: [jit] rendered after it, and a
        // shell app with it, pass.
        assert!(
            check(
                &cfg("X-Instance"),
                &dir,
                &template("[Service]\nNonBlocking=yes\n")
            )
            .is_empty()
        );
        assert!(
            check(
                &cfg("X-Instance"),
                &dir,
                &template(
                    "[Service]\nNonBlocking=yes\nMemoryDenyWriteExecute=yes\nMemoryDenyWriteExecute=no\n"
                )
            )
            .is_empty()
        );
        let sh = bundle("#!/bin/sh\nexec true\n");
        assert!(
            check(
                &cfg("X-Instance"),
                &sh,
                &template("[Service]\nNonBlocking=yes\nMemoryDenyWriteExecute=yes\n")
            )
            .is_empty()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gunicorn_without_setuid_is_an_error() {
        let dir = bundle("#!/bin/sh\n");
        let mut c = cfg("X-Instance");
        c.app.command = "/usr/bin/gunicorn".into();
        let strict =
            "[Service]\nNonBlocking=yes\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged\n";
        let p = check(&c, &dir, &template(strict));
        assert!(
            p.len() == 1 && p[0].is_error() && p[0].message.contains("needs: [setuid]"),
            "{p:#?}"
        );
        let relaxed = format!("{strict}SystemCallFilter=@setuid\n");
        assert!(check(&c, &dir, &template(&relaxed)).is_empty());
    }

    #[test]
    fn a_blocking_socket_is_a_warning_and_an_unconfirmable_health_check_must_be_deliberate() {
        let dir = bundle("#!/bin/sh\n");
        let p = check(&cfg(""), &dir, &template("[Service]\n"));
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 2, "{text:#?}");
        assert!(
            !p[0].is_error() && text[0].contains("missing NonBlocking=yes"),
            "{text:#?}"
        );
        assert!(
            p[1].is_error() && text[1].contains("instance_header: none"),
            "{text:#?}"
        );
        let p = check(&cfg("none"), &dir, &template("[Service]\nNonBlocking=yes\n"));
        assert!(
            p.len() == 1
                && !p[0].is_error()
                && p[0].message.contains("can confirm a new release that is broken"),
            "{p:#?}"
        );
    }

    #[test]
    fn the_shipped_units_fit_the_sample_app() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = DeployConfig::load(&repo.join("deploy.yml")).unwrap();
        let units = crate::units::render(&cfg, &repo).unwrap();
        assert_eq!(check(&cfg, &repo, &units), vec![]);
    }
}
