//! Where our users run: the host's systemd (BeforeInstall refuses one older than a setting of
//! the units), other distributions' systemd (`make test-systemd` boots the sandbox from a
//! debootstrap root: [`the_sandbox_boots_the_systemd_it_was_given`]), and arm64: the aarch64
//! hooks and sample app, run by the sandbox's systemd under qemu-user-static (binfmt_misc),
//! switch under load.

use std::time::{Duration, Instant};

use crate::load::Load;
use crate::service::TestService;
use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The systemd version the sandbox boots: `HANDOFF_EXPECT_SYSTEMD` (make test-systemd names
/// each root's), else the host's, as `systemctl --version` prints it ("252").
fn expected_systemd_version() -> String {
    if let Ok(v) = std::env::var("HANDOFF_EXPECT_SYSTEMD") {
        return v;
    }
    let host = std::process::Command::new("systemctl")
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8_lossy(&host.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// The sandbox boots the systemd it was given: the host's, or with `HANDOFF_SANDBOX_ROOT`
/// another distribution's (`make test-systemd`, which names the major version each root must
/// boot in `HANDOFF_EXPECT_SYSTEMD` and prints this test's line).
#[tokio::test]
async fn the_sandbox_boots_the_systemd_it_was_given() {
    let sandbox = Sandbox::start();
    let booted = sandbox.systemd().await.version().await.unwrap();
    let root = std::env::var("HANDOFF_SANDBOX_ROOT")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "the host's".into());
    let expected = expected_systemd_version();
    eprintln!("systemd booted: {booted} (root: {root})");
    assert_eq!(
        Some(booted),
        handoff::systemd::major_version(&expected),
        "the sandbox (root: {root}) booted systemd {booted}, not {expected}"
    );
}

/// A host whose systemd is older than a setting the units use is refused at BeforeInstall,
/// before anything changes (systemd would ignore the setting and run the app without it);
/// the message names the settings, the host's likely distribution and the fix.
#[test]
fn a_host_whose_systemd_lacks_a_setting_of_the_units_is_refused_at_before_install() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");
    let mut cmd = svc.hook_command("before-install", "d-2", &v2);
    cmd.env("HANDOFF_TEST_SYSTEMD_VERSION", "239.78-1.el8");
    let out = run(&mut cmd);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a host fault: {}",
        explain(&cmd, &out)
    );
    for needle in [
        "this host runs systemd 239 (the version of RHEL 8",
        "ProtectProc= (247",
        "systemd would ignore them",
        "Deploy to hosts with systemd 247 or newer",
    ] {
        assert!(err.contains(needle), "missing {needle:?}:\n{err}");
    }
    assert_eq!(svc.answering_release(), "v1");
    // Ubuntu 20.04's 245 lacks only the /proc settings: the relaxation is named, and with it
    // the release passes.
    let mut cmd = svc.hook_command("before-install", "d-2", &v2);
    cmd.env("HANDOFF_TEST_SYSTEMD_VERSION", "245.4-4ubuntu3");
    let out = run(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{}", explain(&cmd, &out));
    assert!(
        err.contains("Ubuntu 20.04")
            && err.contains("`app.needs: [proc]`")
            && err.contains(handoff::platform::PROC_COST),
        "{err}"
    );
    let relaxed = svc.revision("v2-proc", &[], "");
    crate::service::edit_deploy_yml(
        &relaxed,
        "  log_to_file: true\n",
        "  log_to_file: true\n  needs: [proc]\n",
    );
    let mut cmd = svc.hook_command("before-install", "d-2", &relaxed);
    cmd.env("HANDOFF_TEST_SYSTEMD_VERSION", "245.4-4ubuntu3");
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", explain(&cmd, &out));
    // The sandbox's real version passes, and is named.
    let version = expected_systemd_version();
    let out = svc.hook("before-install", "d-2", &v2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("systemd {version},")),
        "{}",
        stderr(&out)
    );
}

/// A release of the sample app. qemu translates aarch64 code as a JIT does (it writes machine
/// code, then runs it), which the unit's `MemoryDenyWriteExecute=` would stop: the release asks
/// for `app.needs: [jit]` (on a Graviton host the default holds). The x86_64 run, side by side,
/// gets the same units.
fn jit_release(svc: &TestService, label: &str) -> std::path::PathBuf {
    let rev = svc.revision(label, &[], "");
    crate::service::edit_deploy_yml(
        &rev,
        "  log_to_file: true\n",
        "  log_to_file: true\n  needs: [jit]\n",
    );
    rev
}

/// One architecture's build through the lifecycle: a first deployment, then a switch under
/// load; returns both times and the load's summary.
async fn first_deployment_and_switch(arch: &'static str) -> (Duration, Duration, String) {
    let mut svc = TestService::on_arch(arch);
    for bin in ["sample-app", "handoff"] {
        let path = svc.sandbox.host_path(&svc.sandbox.test_binary(bin));
        let head = std::fs::read(&path).unwrap();
        let machine: &[u8] = if arch == "aarch64" { &[0xb7, 0] } else { &[0x3e, 0] };
        assert_eq!(
            &head[18..20],
            machine,
            "{} is not an {arch} executable",
            path.display()
        );
    }
    let v1 = jit_release(&svc, "v1");
    let first = Instant::now();
    svc.deploy_ok("d-1", &v1);
    let first = first.elapsed();
    assert_eq!(svc.answering_release(), "v1");

    let load = Load::start(svc.port, Duration::from_secs(60), 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = jit_release(&svc, "v2");
    let switch = Instant::now();
    svc.deploy_ok("d-2", &v2);
    let switch = switch.elapsed();
    let report = load.finish().await;
    crate::load::assert_no_failures(&report, &format!("{arch}: v1 -> v2"));
    assert_eq!(svc.answering_release(), "v2");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    (first, switch, report.summary())
}

/// The aarch64 build (hooks and sample app) through the lifecycle under load, beside the
/// x86_64 one: the sandbox's systemd starts the aarch64 instances, the kernel runs them (and
/// the hooks) through qemu-user-static (binfmt_misc), and the switch loses nothing. It runs
/// alone (.config/nextest.toml): emulation costs CPU that the latency tests would feel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aarch64_build_switches_under_load_under_emulation() {
    assert!(
        std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(),
        "qemu-aarch64 is not registered in binfmt_misc: run scripts/setup (it registers Debian's qemu-user-static)"
    );
    let native = first_deployment_and_switch("x86_64").await;
    let emulated = first_deployment_and_switch("aarch64").await;
    eprintln!(
        "the lifecycle's wall time, x86_64 native | aarch64 under qemu-user-static:\n\
         first deployment: {:.1?} | {:.1?}\nswitch under load: {:.1?} | {:.1?}\n\
         x86_64 load:\n{}\naarch64 load:\n{}",
        native.0, emulated.0, native.1, emulated.1, native.2, emulated.2
    );
}
