use super::*;
use crate::data::{Counts, WsCounts};

fn mark(t: f64, name: &str, label: &str, attrs: &[(&str, &str)]) -> Mark {
    Mark {
        t_ms: t,
        name: name.into(),
        label: label.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn sample(t: f64, latency: f64, release: &str) -> Sample {
    Sample {
        t_ms: t,
        latency_ms: latency,
        ok: !release.is_empty(),
        release: release.into(),
    }
}

#[test]
fn windows_pair_start_and_end_by_name_and_label() {
    let marks = vec![
        mark(100.0, "switch-start", "d-2", &[("release", "v2")]),
        mark(150.0, "note", "", &[]),
        mark(300.0, "switch-start", "d-3", &[]),
        mark(250.0, "switch-end", "d-2", &[("result", "ok"), ("own_ms", "12")]),
        mark(
            900.0,
            "switch-end",
            "d-3",
            &[("result", "failed"), ("msg", "HTTP 503")],
        ),
        mark(950.0, "switch-start", "d-4", &[]),
    ];
    let w = windows(&marks, 1000.0);
    assert_eq!(w.len(), 3);
    assert_eq!(
        (w[0].label.as_str(), w[0].start_ms, w[0].end_ms),
        ("d-2", 100.0, 250.0)
    );
    assert_eq!(w[0].title(), "d-2 → v2");
    assert_eq!(w[0].attr_f64("own_ms"), Some(12.0));
    assert!(!w[0].failed());
    assert_eq!(w[1].duration_ms(), 600.0);
    assert!(w[1].failed());
    assert_eq!(w[1].attrs["msg"], "HTTP 503");
    assert_eq!(w[2].end_ms, 1000.0);
    assert!(w[2].failed(), "a window that never ended counts as failed");
    assert_eq!(events(&marks).len(), 1);
}

#[test]
fn analysis_splits_baseline_from_windows_and_tracks_releases() {
    // v1 answers fast, then a window 1000..1500 in which a request stalls 400 ms and one
    // fails, then v2.
    let mut samples = Vec::new();
    for i in 0..10 {
        samples.push(sample(f64::from(i) * 100.0, 1.0 + f64::from(i) * 0.25, "v1"));
    }
    samples.push(sample(950.0, 400.0, "v1")); // in flight when the window opens
    samples.push(sample(1100.0, 0.5, "")); // failed
    samples.push(sample(1200.0, 300.0, "v2"));
    for i in 0..10 {
        samples.push(sample(1600.0 + f64::from(i) * 100.0, 2.0, "v2"));
    }
    let summary = Summary {
        port: 1,
        duration_ms: 2500.0,
        rate: 10,
        probe: Counts {
            requests: samples.len() as u64,
            failed: 1,
            ..Default::default()
        },
        ws: Some(WsCounts {
            clients: 1,
            sessions: 2,
            closes_1012: 1,
            abnormal: 1,
            failure_t_ms: vec![1300.0, 2400.0],
            ..Default::default()
        }),
        marks: vec![
            mark(1000.0, "switch-start", "d-2", &[]),
            mark(1500.0, "switch-end", "d-2", &[("result", "ok")]),
        ],
        ..Default::default()
    };
    let a = analyse("test", &summary, &samples);
    let b = a.baseline.unwrap();
    assert_eq!(
        b.n, 5,
        "not the warm-up, nor the request still in flight at the mark"
    );
    assert_eq!((b.p50, b.p99, b.max), (2.75, 3.25, 3.25));
    let w = &a.windows[0];
    assert_eq!((w.requests, w.failed), (3, 1));
    assert_eq!(w.latency.unwrap().max, 400.0);
    assert_eq!(w.releases, vec![("v1".to_string(), 1), ("v2".to_string(), 1)]);
    assert_eq!(
        w.other_failures, 1,
        "only the WebSocket failure inside the window"
    );
    assert_eq!(a.switching.unwrap().n, 2);
    assert_eq!(a.spans.len(), 2);
    assert_eq!((a.spans[0].release.as_str(), a.spans[0].last_ms), ("v1", 950.0));
    assert_eq!(
        (a.spans[1].release.as_str(), a.spans[1].first_ms, a.spans[1].n),
        ("v2", 1200.0, 11)
    );
    assert_eq!(a.final_release(), Some("v2"));
    assert_eq!(a.total_failed(), 2, "probe 1 + websocket 1");

    // Once every client is connected (a `steady` mark), the baseline starts there.
    let mut steady = summary.clone();
    steady.marks.insert(0, mark(700.0, STEADY_MARK, "-", &[]));
    let from_steady = analyse("test", &steady, &samples);
    assert_eq!(
        from_steady.baseline.unwrap().n,
        3,
        "the requests at 700, 800 and 900 ms"
    );
    assert_eq!(from_steady.windows.len(), 1);
    assert_eq!(from_steady.windows[0].requests, 3);

    let md = markdown(&a);
    assert!(
        md.contains("| baseline | – | 5 | – | 2.75 | 3.25 | 3.25 |"),
        "{md}"
    );
    assert!(
        md.contains("| switch d-2 | 500 ms | 3 | 1 | 300 | 400 | 400 | v1 (1), v2 (1) |"),
        "{md}"
    );
    assert!(md.contains("| v2 | 1.20 s | 2.50 s | 11 |"), "{md}");
    assert!(md.contains("**Failed requests, all clients: 2**"), "{md}");

    let table = comparison_table(std::slice::from_ref(&a));
    assert!(table.contains("| test | – | – | – | 1 / 23 | 1 (1) | – | 2.75 / 3.25 / 3.25 | 300 / 400 / 400 | 500 / 500 ms | – |"), "{table}");
}

#[test]
fn final_release_needs_one_release_and_no_failure_at_the_end() {
    let summary = Summary {
        duration_ms: 3000.0,
        ..Default::default()
    };
    let mixed = vec![
        sample(2500.0, 1.0, "v2"),
        sample(2600.0, 1.0, "v3"),
        sample(2700.0, 1.0, "v2"),
    ];
    assert_eq!(analyse("t", &summary, &mixed).final_release(), None);
    let failing = vec![sample(2500.0, 1.0, "v2"), sample(2600.0, 1.0, "")];
    assert_eq!(analyse("t", &summary, &failing).final_release(), None);
    let clean = vec![
        sample(100.0, 1.0, "v3"),
        sample(2500.0, 1.0, "v2"),
        sample(2600.0, 1.0, "v2"),
    ];
    assert_eq!(analyse("t", &summary, &clean).final_release(), Some("v2"));
}

#[test]
fn gnuplot_script_shades_windows_and_colours_releases() {
    let samples = vec![
        sample(0.0, 1.0, "v1"),
        sample(1000.0, 2.0, "v2"),
        sample(1100.0, 0.2, ""),
    ];
    let summary = Summary {
        duration_ms: 2000.0,
        marks: vec![
            mark(500.0, "switch-start", "d-2", &[]),
            mark(900.0, "switch-end", "d-2", &[("result", "failed")]),
        ],
        ..Default::default()
    };
    let a = analyse("t \"q\"", &summary, &samples);
    let work = std::env::temp_dir().join(format!("bench-gp-{}", std::process::id()));
    let gp = gnuplot_script(&[(&a, &samples)], Path::new("/x/out.png"), &work).unwrap();
    assert!(gp.contains("set title \"t \\\"q\\\"\""), "{gp}");
    assert!(
        gp.contains("rect from 0.500, graph 0 to 0.900, graph 1 behind fc rgb \"#f8d0d0\""),
        "{gp}"
    );
    assert!(
        gp.contains("title \"v1 (1)\"") && gp.contains("title \"v2 (1)\""),
        "{gp}"
    );
    assert!(gp.contains("title \"failed (1)\""), "{gp}");
    assert!(gp.contains("set logscale y"), "{gp}");
    let data = std::fs::read_to_string(work.join("panel-0.dat")).unwrap();
    assert_eq!(
        data.matches("\n\n\n").count(),
        3,
        "three blocks (v1, v2, failed): {data:?}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
