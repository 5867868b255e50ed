//! The fleet test bed, `scripts/fleet` (what `make fleet` runs with 8 hosts), with 3: each host
//! a real systemd sandbox on its own loopback address, behind a real HAProxy that checks
//! `/healthz` and never retries, deployed by `deploy-local` under `ab -r` and `wrk` through
//! the balancer. The waves: v2 to every host at once, a broken v3 to every host at once (each
//! must reject it), then v4 one host at a time with the load balancer's deregistration.

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_behind_haproxy_switch_at_once_and_reject_a_broken_release_without_a_failed_request() {
    // Two cores: 3 hosts, HAProxy and 40 clients beside a server's switch test measure each
    // other, so it runs alone (.config/nextest.toml).
    let out_dir = std::env::temp_dir().join(format!("handoff-fleet-{}", free_port()));
    let mut cmd = Command::new(workspace().join("scripts/fleet"));
    cmd.env("FLEET_HOSTS", "3")
        .env("FLEET_WAVES", "v2:AllAtOnce v3:AllAtOnce:broken v4:OneAtATime:lb")
        // Health checks every 200 ms, deregistration delay 2 s: the test's pace.
        .env("FLEET_TIME_SCALE", "150")
        .env("FLEET_OUT", &out_dir)
        .env("FLEET_SKIP_BUILD", "1")
        // This build's binaries: the static ones the bundle ships, the tools beside this test.
        .env("PROFILE", static_profile())
        .env("HANDOFF_TOOLS", own_build_dir())
        .env("FLEET_KEEP_RUN", "0");
    let out = tokio::task::block_in_place(|| run(&mut cmd));
    let report = std::fs::read_to_string(out_dir.join("fleet.md")).unwrap_or_default();
    assert!(out.status.success(), "{}\n{report}", explain(&cmd, &out));
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("fleet.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);

    // What the balancer and the clients saw: traffic all along, and not one failure.
    assert!(facts["balancer_requests"].as_u64().unwrap() > 10_000, "{report}");
    assert_eq!(facts["balancer_failed"], 0, "{report}");
    for client in facts["clients"].as_array().unwrap() {
        assert!(client[1].as_u64().unwrap() > 0, "{client} sent nothing\n{report}");
        assert_eq!(client[2], 0, "{client}\n{report}");
    }
    assert_eq!(facts["failed_checks"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(facts["hosts_down"].as_array().unwrap().len(), 0, "{report}");
    // Nor a request the balancer failed without logging it (a host closing a pooled
    // connection under a request: HAProxy closes its client's connection).
    assert_eq!(facts["unlogged_errors"].as_array().unwrap().len(), 0, "{report}");

    // Each wave: every host on the expected release afterwards (asked directly, not through
    // the balancer); the broken release rejected by every host, the others deployed.
    let waves = facts["waves"].as_array().unwrap();
    let expected = [("d-2", "v2", true), ("d-3", "v2", false), ("d-4", "v4", true)];
    assert_eq!(waves.len(), expected.len(), "{report}");
    for (wave, (id, serves, deployed)) in waves.iter().zip(expected) {
        assert_eq!(wave["id"], id);
        let hosts = wave["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 3);
        for h in hosts {
            assert_eq!(h["release_after"], serves, "{id}: {h}\n{report}");
            assert_eq!(h["result"] == "ok", deployed, "{id}: {h}\n{report}");
        }
    }
    // All at once takes about one host's time: well under three hosts one after the other.
    let single = facts["single_host_ms"].as_i64().unwrap();
    let all_at_once = waves[0]["wall_ms"].as_i64().unwrap();
    assert!(
        all_at_once < 3 * single,
        "v2 to 3 hosts at once took {all_at_once} ms, one host alone {single} ms\n{report}"
    );
}
