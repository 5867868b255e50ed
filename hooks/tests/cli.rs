//! The real `handoff` and hook executables (debug builds), black box: the exit codes of the
//! cases that need neither root nor systemd (README, "Exit codes"). The end-to-end tests
//! (`tests/e2e`) cover the rest against a real systemd.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("HANDOFF_SERVICE")
        .env_remove("DEPLOYMENT_ID")
        .current_dir(std::env::temp_dir());
    let out: Output = cmd.output().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff");

#[test]
fn status_of_a_service_that_is_not_here_is_bad_input() {
    let service = format!("nope-{}", std::process::id());
    assert!(!std::path::Path::new("/opt").join(&service).exists());
    let (code, text) = run(HANDOFF, &["status", "--service", &service]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("no service {service} on this host")),
        "{text}"
    );
    let (code, text) = run(HANDOFF, &["status", "--json", "--service", &service]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = run(HANDOFF, &["status", "--service", "../etc"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is not a service name"), "{text}");
}

#[test]
fn status_without_a_service_on_a_host_without_one_is_bad_input() {
    let installed = handoff::units::installed_services(std::path::Path::new(handoff::units::UNIT_DIR));
    if installed.len() == 1 {
        eprintln!("skipped: this host has one service deployed by handoff ({installed:?})");
        return;
    }
    let (code, text) = run(HANDOFF, &["status"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--service"), "{text}");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--frobnicate"][..],
        &[][..],
        &["status", "--bogus"][..],
        &["rollback", "--lock-wait", "soon"][..],
        &["completions", "tcsh"][..],
    ] {
        let (code, text) = run(HANDOFF, args);
        assert_eq!(code, 2, "handoff {args:?}: {text}");
    }
    let (code, text) = run(HANDOFF, &["completions", "bash"]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_hook_without_a_deployment_id_is_bad_input_and_needs_root_first() {
    let hook = env!("CARGO_BIN_EXE_application-start");
    let (code, text) = run(hook, &["--revision", "/nonexistent"]);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("no deployment id"), "{text}");
    } else {
        assert_eq!(code, 3, "{text}");
        assert!(text.contains("must run as root"), "{text}");
    }
}
