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
    let (code, text) = run(HANDOFF, &["application-start", "--revision", "/nonexistent"]);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("no deployment id"), "{text}");
    } else {
        assert_eq!(code, 3, "{text}");
        assert!(text.contains("must run as root"), "{text}");
    }
}

/// `handoff bundle --arch` packs only hooks built for that architecture, and lint-bundle
/// refuses a bundle whose executables are not of the architecture deploy.yml states. The
/// hooks are stand-ins: the first bytes of this test's own `handoff` (an ELF header), with
/// the machine field set to the architecture wanted.
#[test]
fn a_bundle_is_of_one_architecture() {
    use handoff::arch::Arch;
    use std::os::unix::fs::PermissionsExt;
    let host = Arch::host();
    let other = if host == Arch::X86_64 {
        Arch::Aarch64
    } else {
        Arch::X86_64
    };
    let dir = std::env::temp_dir().join(format!("handoff-cli-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header: Vec<u8> = std::fs::read(HANDOFF).unwrap()[..64].to_vec();
    let stand_ins = |arch: Arch| {
        let hooks = dir.join(format!("hooks-{arch}"));
        std::fs::create_dir_all(&hooks).unwrap();
        let mut elf = header.clone();
        let machine: u16 = if arch == Arch::X86_64 { 0x3e } else { 0xb7 };
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        let name = handoff::bundle::project::HOOK_BINARY;
        std::fs::write(hooks.join(name), &elf).unwrap();
        std::fs::set_permissions(hooks.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        hooks.to_str().unwrap().to_string()
    };
    let (ours, theirs) = (stand_ins(host), stand_ins(other));
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::write(app.join("bin/server"), "#!/bin/sh\nexec sleep 1\n").unwrap();
    std::fs::set_permissions(app.join("bin/server"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let deploy = "service: shop\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/server\n  ready: probe\n\
                  health:\n  path: /healthz\n  instance_header: none\n";
    std::fs::write(app.join("deploy.yml"), deploy).unwrap();
    let zip = dir.join("shop.zip");
    let bundle = |extra: &[&str]| {
        let mut args = vec!["bundle", app.to_str().unwrap(), "-o", zip.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(HANDOFF, &args)
    };
    let (other_name, host_name) = (other.to_string(), host.to_string());

    let (code, text) = bundle(&["--hooks", &ours, "--arch", &other_name]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("is built for {host}, not {other}")) && text.contains("--hooks"),
        "{text}"
    );
    assert!(!zip.exists());
    // Stated in deploy.yml: the same refusal, without --arch.
    std::fs::write(app.join("deploy.yml"), format!("{deploy}arch: {other}\n")).unwrap();
    let (code, text) = bundle(&["--hooks", &ours]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("not {other}")), "{text}");
    // The other architecture's hooks make its bundle.
    let (code, text) = bundle(&["--hooks", &theirs]);
    assert_eq!(code, 0, "{text}");

    // That bundle, with deploy.yml edited to claim this host's architecture: lint-bundle refuses it.
    let unpacked = dir.join("unpacked");
    handoff::bundle::lint::unpack_zip(&zip, &unpacked).unwrap();
    std::fs::write(
        unpacked.join("deploy.yml"),
        format!("{deploy}arch: {host_name}\n"),
    )
    .unwrap();
    let lint = std::path::Path::new(HANDOFF).with_file_name("lint-bundle");
    let (code, text) = run(lint.to_str().unwrap(), &[unpacked.to_str().unwrap()]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("hooks/handoff")
            && text.contains(&format!("{other} executable in a bundle for {host}")),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn handoff_started_as_handoff_front_is_the_front() {
    // What a front unit runs: a copy of the release's hooks executable named handoff-front.
    let dir = std::env::temp_dir().join(format!("handoff-as-front-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let front = dir.join("handoff-front");
    std::fs::copy(HANDOFF, &front).unwrap();
    let front = front.to_str().unwrap();
    let (code, text) = run(front, &["--version"]);
    assert_eq!((code, text.trim()), (0, "handoff-front 0.1.0"));
    // Its own flags, and its own refusal to run without the socket systemd passes.
    let (code, text) = run(front, &["--help"]);
    assert!(code == 0 && text.contains("--drain-timeout-ms"), "{text}");
    let (code, text) = run(front, &[]);
    assert!(code == 2 && text.contains("--routes <PATH>"), "{text}");
    let (code, text) = run(
        front,
        &[
            "--routes",
            "/nonexistent",
            "--control",
            "/nonexistent",
            "--id",
            "t",
        ],
    );
    assert!(
        code == 2 && text.contains("listening socket systemd passes"),
        "{text}"
    );
    // Under its own name it is the hooks' CLI still.
    let (code, text) = run(HANDOFF, &["--version"]);
    assert_eq!((code, text.trim()), (0, "handoff 0.1.0"));
    std::fs::remove_dir_all(&dir).unwrap();
}
