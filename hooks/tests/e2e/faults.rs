//! Faults, bad input and least privilege: each case ends in a clear message, a consistent
//! state the next deployment builds on, and the old release serving where there is one.

use std::time::{Duration, Instant};

use crate::load::Load;
use crate::service::TestService;
use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn deployed(label: &str) -> (TestService, std::path::PathBuf) {
    let mut svc = TestService::new();
    let rev = svc.revision(label, &[], "");
    svc.deploy_ok("d-1", &rev);
    (svc, rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_unit_template_is_refused_and_the_working_units_stay() {
    let (mut svc, _) = deployed("v1");
    let load = Load::start(svc.port, Duration::from_secs(5), 2).await;
    let installed = svc.sandbox.host_path("/etc/systemd/system/shop@.service");
    let before = std::fs::read_to_string(&installed).unwrap();
    let bad = svc.revision("v2", &[], "");
    let template = bad.join("units/app@.service");
    let text = std::fs::read_to_string(&template).unwrap();
    let without_exec: String = text
        .lines()
        .filter(|l| !l.starts_with("ExecStart="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&template, without_exec).unwrap();

    svc.deploy_fails(
        "d-2",
        &bad,
        "application-start",
        2,
        "shop@d-2.service does not load (bad-setting)",
    );
    let report = load.finish().await;
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        before,
        "the working template was not restored"
    );
    assert_eq!(svc.answering_release(), "v1");
    // The next deployment builds on it.
    let good = svc.revision("v3", &[], "");
    svc.deploy_ok("d-3", &good);
    assert_eq!(svc.answering_release(), "v3");
}

#[test]
fn a_socket_address_in_use_is_named() {
    let mut svc = TestService::new();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", svc.port)).unwrap();
    let rev = svc.revision("v1", &[], "");
    let failure = svc.deploy_fails(
        "d-1",
        &rev,
        "application-start",
        3,
        &format!("is another process listening on 127.0.0.1:{}?", svc.port),
    );
    assert!(failure.output.contains("ss -ltnp"), "{}", failure.output);
    // Once the port is free, deploying again works: the failed socket is recovered.
    drop(squatter);
    let out = svc.hook("application-start", "d-1", &rev);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(svc.answering_release(), "v1");
}

#[test]
fn without_dbus_or_without_root_a_hook_fails_at_once_saying_why() {
    let svc = TestService::new();
    let rev = svc.revision("v1", &[], "");
    let started = Instant::now();
    let out = run(svc
        .hook_command("before-install", "d-1", &rev)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/nowhere"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach systemd over the system bus"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut cmd = svc.sandbox.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    cmd.arg(svc.sandbox.test_binary("handoff"))
        .arg("before-install")
        .arg("--revision")
        .arg(&rev)
        .env("DEPLOYMENT_ID", "d-1");
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(3), "{}", explain(&cmd, &out));
    assert!(stderr(&out).contains("must run as root"), "{}", stderr(&out));
    assert!(!svc.sandbox.host_path("/opt/shop").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_refused_before_copying_and_cleaned_up_when_it_fills_during_the_copy() {
    let mut svc = TestService::new();
    // A small file system for the service's releases.
    run_ok(svc.sandbox.command("mkdir").args(["-p", "/opt/shop"]));
    run_ok(
        svc.sandbox
            .command("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs", "/opt/shop"]),
    );
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let big = svc.revision("v2", &[], "");
    std::fs::write(big.join("bin/blob"), vec![7u8; 20 << 20]).unwrap();

    let load = Load::start(svc.port, Duration::from_secs(5), 2).await;
    svc.deploy_fails("d-2", &big, "before-install", 3, "MiB free; the release needs");

    // Space that vanished between BeforeInstall and ApplicationStart: the copy fails cleanly.
    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-2", &big));
    let report = load.finish().await;
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no space left"), "{}", stderr(&out));
    let releases: Vec<String> = std::fs::read_dir(svc.sandbox.host_path("/opt/shop/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(releases, vec!["d-1"], "a partial copy was left behind");
    assert_eq!(svc.answering_release(), "v1");
}

#[test]
fn a_deleted_previous_release_is_reported_when_a_rollback_would_need_it() {
    let (mut svc, _) = deployed("v1");
    let v2 = svc.revision("v2", &[], "");
    svc.deploy_ok("d-2", &v2);
    std::fs::remove_dir_all(svc.sandbox.host_path("/opt/shop/releases/d-1")).unwrap();
    let path = v2.join("deploy.yml");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("path: /healthz", "path: /missing"),
    )
    .unwrap();
    let out = svc.hook("validate-service", "d-2", &v2);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Cannot roll back: the previous release d-1 is no longer"),
        "{}",
        stderr(&out)
    );
    assert_eq!(svc.answering_release(), "v2", "d-2 is left serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_drain_budget_does_not_hold_the_switch() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[("SAMPLE_DRAIN_TIMEOUT_MS", "1000")], "");
    svc.deploy_ok("d-1", &v1);
    let port = svc.port;
    let long = tokio::task::spawn_blocking(move || http_get(port, "/?sleep_ms=8000"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = svc.revision("v2", &[], "");
    let started = Instant::now();
    let out = svc.hook("application-start", "d-2", &v2);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(5),
        "the switch waited {took:?} for a request beyond the drain budget"
    );
    let long = long.await.unwrap();
    assert!(
        !long.as_deref().is_ok_and(|r| r.contains(" 200 ")),
        "the request beyond the budget was cut: {long:?}"
    );
    assert_eq!(svc.answering_release(), "v2");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_interrupted_as_the_old_instance_drains_and_rapid_deployments_lose_nothing() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let load = Load::start(svc.port, Duration::from_secs(25), 2).await;
    let port = svc.port;
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::task::spawn_blocking(move || http_get(port, "/?sleep_ms=3000")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ApplicationStart for d-2 is stopped by the agent's timeout as d-1's drain begins (after
    // the commit): the hook settles first, joining d-1's drain (its slow requests finish).
    let v2 = svc.revision("v2", &[], "");
    let out = svc.hook_termed_at("retiring", "application-start", "d-2", &v2, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("d-2 serves (its switch was committed)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    // The next deployment goes ahead at once, then more, back to back.
    for (id, label) in [("d-3", "v3"), ("d-4", "v4"), ("d-5", "v5"), ("d-6", "v6")] {
        let rev = svc.revision(label, &[], "");
        svc.deploy_ok(id, &rev);
        assert_eq!(svc.live_instances(), vec![format!("shop@{id}.service")]);
    }
    let report = load.finish().await;
    for s in slow {
        let reply = s.await.unwrap().expect("slow request");
        assert!(
            reply.contains(" 200 "),
            "a slow request on the draining instance failed: {reply}"
        );
    }
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert_eq!(report.last_release().as_deref(), Some("v6"));
    assert_eq!(svc.serving().as_deref(), Some("d-6"));
}

#[test]
fn the_app_runs_unprivileged_from_root_owned_files() {
    let (svc, _) = deployed("v1");
    let out = run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["show", "-P", "MainPID", "shop@d-1.service"]),
    );
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let status = std::fs::read_to_string(svc.sandbox.host_path(&format!("/proc/{pid}/status"))).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "the app runs as root");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(caps, "0000000000000000", "the app has capabilities");

    use std::os::unix::fs::MetadataExt;
    for path in [
        "/opt/shop/releases/d-1",
        "/opt/shop/releases/d-1/bin/sample-app",
        "/opt/shop/releases/d-1/deploy.yml",
    ] {
        let meta = std::fs::metadata(svc.sandbox.host_path(path)).unwrap();
        assert_eq!(meta.uid(), 0, "{path} is not owned by root");
        assert_eq!(meta.mode() & 0o022, 0, "{path} is writable by group or others");
    }

    let level = exposure(&svc, "shop@d-1.service");
    assert!(level <= 2.0, "the instance unit is exposed: {level}");

    // The hardening profiles of app.needs, each rendered from the shipped template: every
    // relaxation costs only its own directive.
    let mut levels = Vec::new();
    for (profile, needs) in [
        ("strict", "[]"),
        ("jit", "[jit]"),
        ("setuid", "[setuid]"),
        ("jit-setuid", "[jit, setuid]"),
        ("proc", "[proc]"),
    ] {
        let name = format!("profile-{profile}");
        let cfg = handoff::config::DeployConfig::parse(&format!(
            "service: {name}\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n  needs: {needs}\n"
        ))
        .unwrap();
        let units = handoff::units::render(&cfg, &workspace()).unwrap();
        let template = units
            .iter()
            .find(|u| u.name == format!("{name}@.service"))
            .unwrap();
        let file = svc.sandbox.scratch(&format!("{name}@.service"));
        std::fs::write(&file, &template.text).unwrap();
        svc.sandbox.install_units(&[&file]);
        levels.push((profile, exposure(&svc, &format!("{name}@x.service"))));
    }
    eprintln!("systemd-analyze security by app.needs: {levels:?}");
    assert!(levels.iter().all(|(_, l)| *l <= 2.0), "{levels:?}");
    assert!(
        levels[0].1 <= levels[1].1 && levels[0].1 <= levels[2].1,
        "{levels:?}"
    );
    // What BeforeInstall tells a host without ProtectProc= (systemd 245) that proc costs.
    assert_eq!(
        format!("{:.1} instead of {:.1}", levels[4].1, levels[0].1),
        handoff::platform::PROC_COST,
        "{levels:?}"
    );
}

/// `systemd-analyze security`'s overall exposure level of a unit (0 safest, 10 exposed).
fn exposure(svc: &TestService, unit: &str) -> f64 {
    let out = run_ok(
        svc.sandbox
            .command("systemd-analyze")
            .args(["security", "--no-pager", unit]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("an exposure level");
    eprintln!("{unit}: {line}");
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_bundle_with_an_escaping_symlink_is_refused_and_the_old_release_serves() {
    let (mut svc, _) = deployed("v1");
    let bad = svc.revision("v2", &[], "");
    // A relative link that climbs out (one to an absolute path is kept: the next test).
    std::os::unix::fs::symlink("../../../../etc/shadow", bad.join("bin/secrets")).unwrap();
    svc.deploy_fails("d-2", &bad, "application-start", 2, "points outside the bundle");
    assert!(
        !svc.sandbox.host_path("/opt/shop/releases/d-2").exists(),
        "the refused release was kept"
    );
    assert_eq!(svc.answering_release(), "v1");
}

#[test]
fn a_bundle_whose_absolute_symlink_the_host_lacks_is_refused_at_before_install() {
    let (mut svc, _) = deployed("v1");
    let bad = svc.revision("v2", &[], "");
    std::os::unix::fs::symlink("/usr/bin/python3.99-not-installed", bad.join("bin/python3")).unwrap();
    svc.deploy_fails(
        "d-2",
        &bad,
        "before-install",
        3,
        "`bin/python3` links to /usr/bin/python3.99-not-installed, which this host does not have",
    );
    assert!(
        !svc.sandbox.host_path("/opt/shop/releases/d-2").exists(),
        "the refused release was copied"
    );
    assert_eq!(svc.answering_release(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_service_killed_during_its_rollback_converges_when_run_again() {
    let mut svc = TestService::new();
    // d-1 takes 1.5 s to start, so the rollback to it is long enough to be interrupted.
    let v1 = svc.revision("v1", &[("SAMPLE_STARTUP_DELAY_MS", "1500")], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");
    svc.deploy_ok("d-2", &v2);
    // Now d-2 fails validation (its health path breaks), quickly.
    let path = v2.join("deploy.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("path: /healthz", "path: /missing");
    std::fs::write(&path, text.replace("validate: 10s", "validate: 1s")).unwrap();

    let load = Load::start(svc.port, Duration::from_secs(20), 2).await;
    let out = svc.hook_interrupted("KILL", "2.0", "validate-service", "d-2", &v2);
    assert_eq!(
        out.status.code(),
        Some(137),
        "not killed mid-rollback: {}",
        stderr(&out)
    );
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-2", &v2));
    let report = load.finish().await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Rolled back: d-1 serves again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);
    assert_eq!(svc.answering_release(), "v1");
}

/// More connections than systemd's default soft limit of open files (1,024) allows: the
/// instance unit's `LimitNOFILE=` lets a server hold them all, each answering twice on the same
/// keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_holds_more_keep_alive_connections_than_the_default_file_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 1_500;
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 2 * CONNECTIONS as u64,
        "this test needs {} open files; the hard limit is {hard}",
        2 * CONNECTIONS
    );
    let (svc, _) = deployed("v1");

    /// One request on an open connection; its status line.
    async fn ask(s: &mut tokio::net::TcpStream) -> std::io::Result<String> {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // The health answer is small: read until the head and its short body are in.
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
            if n == 0 {
                return Err(std::io::Error::other("closed"));
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&got)
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }

    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", svc.port))
            .await
            .unwrap();
        let status = ask(&mut s).await.unwrap_or_else(|e| format!("error: {e}"));
        assert!(
            status.contains(" 200 "),
            "connection {}: {status}",
            open.len() + 1
        );
        open.push(s);
    }
    // All of them still open and served: a second request on each.
    let mut answered = 0;
    for s in &mut open {
        if ask(s).await.is_ok_and(|st| st.contains(" 200 ")) {
            answered += 1;
        }
    }
    assert_eq!(
        answered, CONNECTIONS,
        "only {answered} of {CONNECTIONS} open connections were served"
    );
}
