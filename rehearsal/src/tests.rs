use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use super::*;

// --- whole deployments with shell-script hooks, in a temporary root ------------------

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!(
        "handoff-rehearsal-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bundle whose every hook prints who it is, from where, with what environment.
fn bundle(dir: &Path, label: &str, extra: &str) -> PathBuf {
    let b = dir.join(label);
    let report = format!(
        "echo \"{label} $LIFECYCLE_EVENT id=$DEPLOYMENT_ID app=$APPLICATION_NAME group=$DEPLOYMENT_GROUP_NAME \
             gid=$DEPLOYMENT_GROUP_ID cwd=$(pwd) from=$(cd \"$(dirname \"$0\")/..\" && pwd)\"\n\
             echo \"to stderr\" >&2\n\
             if read -r line; then echo \"stdin had $line\"; fi"
    );
    for h in ["stop", "before", "after", "start", "validate"] {
        script(&b.join("hooks").join(h), &report);
    }
    std::fs::create_dir_all(b.join("payload/sub")).unwrap();
    std::fs::write(b.join("payload/a.txt"), label).unwrap();
    std::fs::write(b.join(format!("payload/sub/{label}.txt")), label).unwrap();
    std::fs::write(
            b.join("appspec.yml"),
            format!(
                "version: 0.0\nos: linux\n{extra}hooks:\n  ApplicationStop:\n    - location: hooks/stop\n      timeout: 30\n  \
                 BeforeInstall:\n    - location: hooks/before\n  AfterInstall:\n    - location: hooks/after\n  \
                 ApplicationStart:\n    - location: hooks/start\n      timeout: 30\n  ValidateService:\n    - location: hooks/validate\n"
            ),
        )
        .unwrap();
    b
}

fn options(root: &Path, bundle: &Path, id: &str) -> Options {
    Options {
        bundle: bundle.to_path_buf(),
        deployment_id: Some(id.into()),
        root: root.to_path_buf(),
        group_id: "g-1".into(),
        application: "app".into(),
        group: "grp".into(),
        verbose: 0,
    }
}

fn log_of(root: &Path, id: &str) -> String {
    std::fs::read_to_string(Layout::new(root, "g-1", id).scripts_log).unwrap()
}

#[test]
fn in_place_order_previous_revision_stop_and_files_with_cleanup() {
    let t = tmp("order");
    let root = t.0.join("root");
    let dest = t.0.join("installed/app");
    let files = format!(
        "files:\n  - source: payload\n    destination: {}\n  - source: payload/a.txt\n    destination: {}/single\n",
        dest.display(),
        dest.display()
    );
    let v1 = bundle(&t.0, "v1", &files);
    let s = run(&options(&root, &v1, "d-1")).unwrap();
    let events: Vec<_> = s.steps.iter().map(|s| (s.event, s.outcome.clone())).collect();
    assert_eq!(events[2], ("ApplicationStop", Outcome::FirstDeployment));
    assert_eq!(events[4], ("BeforeInstall", Outcome::Ran(1)));
    assert_eq!(events[9], ("BeforeAllowTraffic", Outcome::NoScripts));
    let log = log_of(&root, "d-1");
    assert!(!log.contains("ApplicationStop"), "{log}");
    let l1 = Layout::new(&root, "g-1", "d-1");
    let order: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("] LifecycleEvent - ").map(|(_, e)| e))
        .collect();
    assert_eq!(
        order,
        [
            "BeforeInstall",
            "AfterInstall",
            "ApplicationStart",
            "ValidateService"
        ]
    );
    assert!(
        log.contains(&format!(
            "[stdout]v1 BeforeInstall id=d-1 app=app group=grp gid=g-1 cwd=/ from={}",
            l1.archive.display()
        )),
        "{log}"
    );
    assert!(log.contains("[stderr]to stderr"), "{log}");
    assert!(!log.contains("stdin had"), "stdin is closed: {log}");
    assert_eq!(
        std::fs::read_to_string(&l1.last_install_file).unwrap().trim(),
        l1.archive.display().to_string()
    );
    assert_eq!(std::fs::read_to_string(dest.join("sub/v1.txt")).unwrap(), "v1");
    assert_eq!(std::fs::read_to_string(dest.join("single/a.txt")).unwrap(), "v1");
    let cleanup = std::fs::read_to_string(&l1.cleanup_file).unwrap();
    assert!(
        cleanup
            .lines()
            .any(|l| l == dest.join("sub/v1.txt").display().to_string()),
        "{cleanup}"
    );
    assert!(
        cleanup
            .lines()
            .any(|l| l == t.0.join("installed").display().to_string()),
        "{cleanup}"
    );

    // v2: ApplicationStop is v1's script, with v2's id, logged in v2's log; Install
    // deleted v1's files before copying v2's.
    let v2 = bundle(&t.0, "v2", &files);
    run(&options(&root, &v2, "d-2")).unwrap();
    let log = log_of(&root, "d-2");
    assert!(
        log.contains(&format!(
            "[stdout]v1 ApplicationStop id=d-2 app=app group=grp gid=g-1 cwd=/ from={}",
            l1.archive.display()
        )),
        "{log}"
    );
    assert!(!dest.join("sub/v1.txt").exists(), "v1's file was cleaned up");
    assert_eq!(std::fs::read_to_string(dest.join("sub/v2.txt")).unwrap(), "v2");

    // A file Install did not create is in the way: DISALLOW fails at Install, and the last
    // successful install stays v2.
    std::fs::write(dest.join("stray"), "x").unwrap();
    let v3 = bundle(&t.0, "v3", &files);
    std::fs::write(v3.join("payload/stray"), "y").unwrap();
    let e = run(&options(&root, &v3, "d-3")).unwrap_err();
    assert_eq!(handoff::fault::exit_code(&e), 1);
    let text = format!("{e:#}");
    assert!(
        text.contains("failed at Install") && text.contains("already exists at this location"),
        "{text}"
    );
    let l2 = Layout::new(&root, "g-1", "d-2");
    assert_eq!(
        std::fs::read_to_string(&l2.last_install_file).unwrap().trim(),
        l2.archive.display().to_string()
    );
    assert!(!log_of(&root, "d-3").contains("LifecycleEvent - AfterInstall"));
}

#[test]
fn a_failing_script_stops_the_deployment_with_its_last_lines() {
    let t = tmp("fail");
    let root = t.0.join("root");
    let b = bundle(&t.0, "v1", "");
    script(
        &b.join("hooks/start"),
        "echo starting\necho 'port 80 is taken; free it' >&2\nexit 7",
    );
    std::fs::set_permissions(b.join("hooks/after"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = run(&options(&root, &b, "d-1")).unwrap_err();
    assert_eq!(handoff::fault::exit_code(&e), 1);
    let text = format!("{e:#}");
    assert!(
            text.contains("deployment d-1 failed at ApplicationStart: Script at specified location: hooks/start failed with exit code 7"),
            "{text}"
        );
    assert!(text.contains("[stderr]port 80 is taken; free it"), "{text}");
    let log = log_of(&root, "d-1");
    assert!(!log.contains("ValidateService"), "{log}");
    // The non-executable AfterInstall script was made executable and ran.
    assert!(log.contains("[stdout]v1 AfterInstall"), "{log}");
    let l = Layout::new(&root, "g-1", "d-1");
    assert!(
        l.last_install_file.exists(),
        "recorded after Install, before the failure"
    );

    // Death by a signal fails it too.
    let b2 = bundle(&t.0, "v2", "");
    script(&b2.join("hooks/before"), "kill -KILL $$");
    let text = format!("{:#}", run(&options(&root, &b2, "d-2")).unwrap_err());
    assert!(
        text.contains("failed at BeforeInstall") && text.contains("killed by SIGKILL"),
        "{text}"
    );
    // And a reused id is refused.
    let e = run(&options(&root, &b2, "d-2")).unwrap_err();
    assert_eq!(handoff::fault::exit_code(&e), 2, "{e:#}");
}

#[test]
fn a_bundle_the_agent_would_refuse_runs_nothing() {
    let t = tmp("refuse");
    let root = t.0.join("root");
    let b = bundle(&t.0, "v1", "");
    let text = std::fs::read_to_string(b.join("appspec.yml")).unwrap();
    std::fs::write(
        b.join("appspec.yml"),
        text.replace("version: 0.0", "version: \"0.0\""),
    )
    .unwrap();
    let e = run(&options(&root, &b, "d-1")).unwrap_err();
    assert_eq!(handoff::fault::exit_code(&e), 2);
    let text = format!("{e:#}");
    assert!(
        text.contains("the agent would refuse") && text.contains("quoted"),
        "{text}"
    );
    assert!(!root.join("g-1/d-1").exists());
    let e = run(&options(&root, &b, "../x")).unwrap_err();
    assert_eq!(handoff::fault::exit_code(&e), 2);
}

#[test]
fn output_left_open_by_a_background_process_fails_at_the_timeout() {
    let t = tmp("open");
    let root = t.0.join("root");
    let b = bundle(&t.0, "v1", "");
    script(&b.join("hooks/before"), "sleep 5 &\necho started");
    let text = std::fs::read_to_string(b.join("appspec.yml")).unwrap();
    std::fs::write(
        b.join("appspec.yml"),
        text.replace(
            "location: hooks/before\n",
            "location: hooks/before\n      timeout: 1\n",
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let text = format!("{:#}", run(&options(&root, &b, "d-1")).unwrap_err());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(
        text.contains("failed to close STDOUT/STDERR within 1 seconds"),
        "{text}"
    );
}

#[test]
fn zips_are_unpacked_into_the_archive() {
    let t = tmp("zip");
    let root = t.0.join("root");
    let b = bundle(&t.0, "v1", "");
    let zip = t.0.join("v1.zip");
    let ok = Command::new("zip")
        .args(["-q", "-r", "-y"])
        .arg(&zip)
        .arg(".")
        .current_dir(&b)
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("zip is not installed; skipping");
        return;
    }
    let s = run(&options(&root, &zip, "d-1")).unwrap();
    assert!(s.layout.archive.join("hooks/start").is_file());
    assert!(!s.layout.deployment_dir.join(".bundle").exists());
    assert!(log_of(&root, "d-1").contains("[stdout]v1 ValidateService"));
}
