use super::*;

#[test]
fn balancer_log_lines() {
    let log = parse_log(
        "1764496000123 h1 200 ---- 3 {v1}\n\
             1764496000124 h2 503 ---- 1 {v3}\n\
             1764496000125 h3 -1 SD-- 2 {}\n\
             1764496000126 h4 -1 CD-- -1 {}\n\
             1764496000127 <NOSRV> 503 SC-- 0 {}\n\
             Health check for server hosts/h2 failed, reason: Layer7 wrong status, code: 503, check duration: 1ms, status: 1/2 UP.\n\
             Server hosts/h2 is DOWN, reason: Layer7 wrong status, code: 503. 7 active and 0 backup servers left.\n",
    );
    assert_eq!(log.requests.len(), 5);
    assert_eq!(log.requests[0].release, "v1");
    let failed: Vec<bool> = log.requests.iter().map(|r| r.failed()).collect();
    // A client abort (the load stopping) is not the service's failure.
    assert_eq!(failed, [false, true, true, false, true]);
    assert_eq!(log.failed_checks.len(), 1);
    assert_eq!(log.down.len(), 1);
}
