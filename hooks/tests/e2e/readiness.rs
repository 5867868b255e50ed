//! Servers that cannot send READY=1 (`app.ready: probe`): the unit is `Type=exec`, the new
//! release is ready when it answers through the port, and a crash at start is still seen at
//! once.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::Load;
use crate::service::{TestService, edit_deploy_yml};

fn probe_ready(revision: &Path) {
    edit_deploy_yml(
        revision,
        "  log_to_file: true\n",
        "  log_to_file: true\n  ready: probe\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_without_ready_deploys_losslessly_and_its_crash_at_start_is_seen_at_once() {
    let mut svc = TestService::new();
    // The sample app serves but never sends READY=1: a server without sd_notify.
    let quiet = [("SAMPLE_NEVER_READY", "1")];
    let v1 = svc.revision("v1", &quiet, "");
    probe_ready(&v1);
    svc.deploy_ok("d-1", &v1);
    assert_eq!(svc.unit_property("shop@d-1.service", "Type"), "exec");

    // A latency test: it runs alone (.config/nextest.toml).
    let load = Load::start(svc.port, Duration::from_secs(12), 2).await;
    let v2 = svc.revision(
        "v2",
        &[("SAMPLE_NEVER_READY", "1"), ("SAMPLE_STARTUP_DELAY_MS", "300")],
        "",
    );
    probe_ready(&v2);
    let from = crate::load::clock();
    svc.deploy_ok("d-2", &v2);
    let to = crate::load::clock();
    assert_eq!(svc.answering_release(), "v2");

    // Crashes at start, over and over (Restart=on-failure): seen at the first crash, long
    // before deadlines.start (10 s), and named as a crash.
    let v3 = svc.revision(
        "v3",
        &[("SAMPLE_NEVER_READY", "1"), ("SAMPLE_FAIL_START", "1")],
        "",
    );
    probe_ready(&v3);
    let t = Instant::now();
    let failure = svc.deploy_fails("d-3", &v3, "application-start", 1, "crashed while starting");
    let took = t.elapsed();
    assert!(failure.output.contains("d-2 keeps serving"), "{}", failure.output);
    assert!(took < Duration::from_secs(6), "the crash was seen after {took:?}");
    let report = load.finish().await;
    assert_eq!(report.failures(), 0, "{}", report.summary());
    crate::load::assert_no_stall(&report, from, to, "app.ready: probe, v1 -> v2");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);

    // A template that still says Type=notify with app.ready: probe is refused with the fix.
    let v4 = svc.revision("v4", &quiet, "");
    probe_ready(&v4);
    let template = v4.join("units/app@.service");
    let text = std::fs::read_to_string(&template)
        .unwrap()
        .replace("Type={{type}}", "Type=notify");
    std::fs::write(&template, text).unwrap();
    svc.deploy_fails(
        "d-4",
        &v4,
        "before-install",
        2,
        "Type=notify, but deploy.yml app.ready is probe, which needs Type=exec",
    );
}
