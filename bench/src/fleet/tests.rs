use super::*;

fn ev(t: i64, event: &str, host: u32, wave: &str, detail: &str) -> String {
    format!("{t}\t{event}\t{host}\t{wave}\t{detail}\n")
}

#[test]
fn waves_times_and_verdict() {
    let mut text = ev(0, "load-start", 0, "-", "");
    text += &ev(1000, "wave-start", 0, "d-2", "v2 AllAtOnce");
    for h in 1..=2 {
        text += &ev(1000, "deploy-start", h, "d-2", "v2");
        text += &ev(4000 + h as i64 * 100, "deploy-end", h, "d-2", "ok");
        text += &ev(4300, "release", h, "d-2", "v2");
    }
    text += &ev(4250, "wave-end", 0, "d-2", "");
    text += &ev(4300, "expect", 0, "d-2", "v2");
    text += &ev(5000, "wave-start", 0, "d-3", "v3 OneAtATime + load balancer");
    for h in 1..=2u32 {
        let s = 5000 + (h as i64 - 1) * 6000;
        text += &ev(s, "deregister", h, "d-3", "");
        text += &ev(s + 1000, "deploy-start", h, "d-3", "v3");
        text += &ev(s + 4000, "deploy-end", h, "d-3", "ok");
        text += &ev(s + 5000, "register", h, "d-3", "UP");
        text += &ev(17000, "release", h, "d-3", if h == 1 { "v3" } else { "v2" });
    }
    text += &ev(17000, "wave-end", 0, "d-3", "");
    text += &ev(17000, "expect", 0, "d-3", "v3");
    text += &ev(20000, "load-end", 0, "-", "");
    let events = parse_events(&text).unwrap();
    let log = parse_log(
        "500 h1 200 ---- 4 {v1}\n2000 h1 200 ---- 7 {v1}\n3000 h2 502 SH-- 9 {}\n6000 h1 200 ---- 5 {v3}\n",
    );
    let settings = parse_settings(
        "hosts=2\nscale=60\ncheck_interval_s=30\nhealthy_threshold=5\nunhealthy_threshold=2\n\
             deregistration_delay_s=300\nab=20\nwrk=20\nrate=200\n",
    )
    .unwrap();
    let stats = parse_stats(
        "# pxname,svname,econ,eresp,srv_abrt,status\nfleet,FRONTEND,,,,OPEN\n\
             hosts,h1,0,0,0,UP\nhosts,h2,0,2,2,UP\nhosts,BACKEND,0,2,2,UP\n",
    )
    .unwrap();
    assert!(parse_stats("# pxname,svname,status\n").is_err());
    assert_eq!(stats, [("h1".into(), 0, 0, 0), ("h2".into(), 0, 2, 2)]);
    let f = analyse(settings, &events, &log, &stats, &Summary::default()).unwrap();
    assert_eq!(f.waves.len(), 2);
    assert_eq!(f.waves[0].wall_ms, 3250);
    assert_eq!((f.waves[0].requests, f.waves[0].failed), (2, 1));
    assert_eq!((f.waves[0].p99_ms, f.waves[0].max_ms), (9, 9));
    assert_eq!((f.baseline_p99_ms, f.baseline_max_ms), (4, 4));
    assert_eq!(f.waves[1].hosts[0].deploy_ms, 3000);
    assert_eq!(f.single_host_ms, Some(3000));
    assert_eq!(f.balancer_failed, 1);
    let verdict = f.verdict();
    let failed: Vec<&str> = verdict.iter().filter(|v| !v.0).map(|v| v.1.as_str()).collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed[0].starts_with("no failed request at the balancer: 1 of 4"),
        "{failed:?}"
    );
    assert!(
        failed[1].ends_with("h2: econ 0, eresp 2, srv_abrt 2"),
        "{failed:?}"
    );
    assert!(failed[2].contains("h2 answers 'v2'"), "{failed:?}");
    let md = f.markdown();
    // Per batch: 300 s + 3 s + 5 x 30 s = 453 s; 8 hosts one at a time = 1 h.
    assert!(md.contains("= 453 s"), "{md}");
    assert!(
        md.contains("| OneAtATime + load balancer (the usual setup) | 60 min | 12.6 h |"),
        "{md}"
    );
}
