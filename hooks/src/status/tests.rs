//! The report's verdict and renderings, from reports built by hand.

use super::*;

fn event(hook: &str, deployment: &str, message: &str) -> Event {
    Event {
        at: 1,
        hook: hook.into(),
        deployment: deployment.into(),
        message: message.into(),
    }
}

fn healthy_native() -> Report {
    let unit = |name: &str| UnitReport {
        unit: name.into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        need_daemon_reload: false,
        summary: format!("{name} is active (running)"),
    };
    Report {
        service: "shop".into(),
        root: "/opt/shop".into(),
        serving: Some("d-2".into()),
        strategy: Some("handoff".into()),
        socket: Some(unit("shop.socket")),
        instances: vec![InstanceReport {
            unit: unit("shop@d-2.service"),
            release: "d-2".into(),
            enabled: "enabled".into(),
        }],
        probe: Some(ProbeReport {
            url: "http://127.0.0.1:8080/healthz".into(),
            healthy: true,
            status: Some(200),
            ..ProbeReport::default()
        }),
        ..Report::default()
    }
}

#[test]
fn the_last_deployment_and_its_outcome_come_from_the_events() {
    let state = State::default();
    let ok = [
        event("application-stop", "d-2", "deployment d-2 begins; serving d-1"),
        event("application-start", "d-2", "switching to d-2"),
        event("application-start", "d-2", "d-2 serves"),
        event("validate-service", "d-2", "d-2 validated"),
        event("rollback", "-", "d-1 serves"),
    ];
    let d = last_deployment(&ok, &state).unwrap();
    assert_eq!((d.deployment.as_str(), d.outcome.as_str()), ("d-2", "succeeded"));
    let failed = [
        event("application-start", "d-3", "switching to d-3"),
        event("application-start", "d-3", "d-3 did not take over: it crashed"),
    ];
    assert_eq!(last_deployment(&failed, &state).unwrap().outcome, "failed");
    let switched = &ok[..3];
    assert_eq!(last_deployment(switched, &state).unwrap().outcome, "switched");
    let waiting = State {
        validating: Some(Validating {
            deployment: "d-2".into(),
            release: "d-2".into(),
        }),
        ..State::default()
    };
    assert_eq!(
        last_deployment(switched, &waiting).unwrap().outcome,
        "awaiting_validation"
    );
    assert_eq!(last_deployment(&ok[..2], &state).unwrap().outcome, "in_progress");
    assert!(last_deployment(&ok[4..], &state).is_none());
    // ValidateService rolled back to d-1: d-2 is marked failed, the events say "d-1 serves".
    let rolled_back = [
        event("application-start", "d-2", "switching to d-2"),
        event("application-start", "d-2", "d-2 serves"),
        event("validate-service", "d-2", "switching to d-1"),
        event("validate-service", "d-2", "d-1 serves"),
    ];
    assert_eq!(last_deployment(&rolled_back, &state).unwrap().outcome, "failed");
    // A re-run that converged after a failed attempt: its last word counts.
    let rerun = [
        event("application-start", "d-3", "switching to d-3"),
        event("application-start", "d-3", "d-3 did not take over: the host"),
        event("application-start", "d-3", "switching to d-3"),
        event("application-start", "d-3", "d-3 serves"),
        event("validate-service", "d-3", "d-3 validated"),
    ];
    assert_eq!(last_deployment(&rerun, &state).unwrap().outcome, "succeeded");
    let marked = State {
        failed: vec!["d-3".into()],
        ..State::default()
    };
    assert_eq!(last_deployment(&rerun[..2], &marked).unwrap().outcome, "failed");
    let interrupted = State {
        switching: Some(Switching {
            to: "d-3".into(),
            from: None,
            hook: "application-start".into(),
            deployment: "d-3".into(),
        }),
        ..State::default()
    };
    assert_eq!(
        last_deployment(&rerun[..1], &interrupted).unwrap().outcome,
        "unfinished"
    );
}

#[test]
fn healthy_only_when_the_recorded_release_serves_and_answers() {
    let r = healthy_native();
    let state = State {
        serving: Some("d-2".into()),
        ..State::default()
    };
    assert_eq!(problems(&r, &state, true), Vec::<String>::new());

    let mut stopped = healthy_native();
    stopped.instances[0].unit.active_state = "inactive".into();
    stopped.instances[0].unit.summary = "shop@d-2.service is inactive (dead)".into();
    let p = problems(&stopped, &state, true);
    assert!(
        p.iter()
            .any(|p| p.contains("instance is not active: shop@d-2.service is inactive")),
        "{p:?}"
    );

    let mut unfinished = healthy_native();
    unfinished.switching = Some(Switching {
        to: "d-3".into(),
        from: Some("d-2".into()),
        hook: "application-start".into(),
        deployment: "d-3".into(),
    });
    unfinished.probe.as_mut().unwrap().healthy = false;
    unfinished.probe.as_mut().unwrap().error = Some("GET …: connection refused".into());
    let p = problems(&unfinished, &state, true);
    assert!(p.iter().any(|p| p.contains("switch to d-3")), "{p:?}");
    assert!(p.iter().any(|p| p.contains("health probe failed")), "{p:?}");

    let mut nothing = healthy_native();
    nothing.serving = None;
    assert_eq!(
        problems(&nothing, &State::default(), false),
        ["no release is recorded as serving"]
    );
}

#[test]
fn proxy_mode_needs_the_recorded_front_and_the_routed_instance() {
    let mut r = healthy_native();
    r.strategy = Some("proxy".into());
    r.route = Some(RouteReport {
        release: "d-2".into(),
        upstream: "127.0.0.1:20001".into(),
    });
    let state = State {
        serving: Some("d-2".into()),
        front: Some("abc".into()),
        ..State::default()
    };
    let p = problems(&r, &state, true);
    assert_eq!(p, ["the recorded front abc is not active"]);
    r.fronts.push(FrontReport {
        unit: r.instances[0].unit.clone(),
        id: "abc".into(),
        enabled: "enabled".into(),
        recorded: true,
    });
    assert!(problems(&r, &state, true).is_empty());
    r.route.as_mut().unwrap().release = "d-1".into();
    let p = problems(&r, &state, true);
    assert!(p[0].contains("the front routes to d-1"), "{p:?}");
}

#[test]
fn verdict_and_renderings() {
    let mut r = healthy_native();
    r.healthy = true;
    assert!(r.verdict().is_ok());
    let text = r.text();
    assert!(text.starts_with("service shop (/opt/shop), hooks "), "{text}");
    assert!(
        text.contains("instance  shop@d-2.service is active (running), enabled\n"),
        "{text}"
    );
    assert!(text.contains("healthy   d-2 serves"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
    assert_eq!(json["serving"], "d-2");
    assert_eq!(json["instances"][0]["unit"], "shop@d-2.service");
    assert_eq!(json["instances"][0]["release"], "d-2");
    assert_eq!(json["instances"][0]["enabled"], "enabled");
    assert_eq!(json["healthy"], true);

    r.healthy = false;
    r.problems = vec!["the socket is not active: shop.socket is failed (failed)".into()];
    assert_eq!(fault::exit_code(&r.verdict().unwrap_err()), 1);
    assert!(r.text().contains("NOT HEALTHY:\n  - the socket is not active"));
    r.systemd_error = Some("cannot reach systemd".into());
    assert_eq!(fault::exit_code(&r.verdict().unwrap_err()), 3);
}
