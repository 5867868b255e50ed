use super::*;

#[test]
fn parses_ab_output() {
    let text = "Complete requests:      52310\nFailed requests:        12\n   (Connect: 0, Receive: 4, Length: 8, Exceptions: 0)\nNon-2xx responses:      3\n";
    let c = parse_ab(text);
    assert_eq!((c.requests, c.failed), (52310, 15));
    assert!(
        c.detail.contains("Receive: 4") && c.detail.contains("non-2xx: 3"),
        "{}",
        c.detail
    );
    let stopped = parse_ab("Benchmarking 127.0.0.1 (be patient)\nTotal of 27283 requests completed\n");
    assert_eq!((stopped.requests, stopped.failed), (27283, 1));
    assert!(stopped.detail.contains("stopped"), "{}", stopped.detail);
    let clean = parse_ab("Complete requests:      100\nFailed requests:        0\n");
    assert_eq!(
        (clean.requests, clean.failed, clean.detail.as_str()),
        (100, 0, "")
    );
}

#[test]
fn parses_wrk_output() {
    let text = "  81234 requests in 20.00s, 12.3MB read\n  Socket errors: connect 0, read 3, write 1, timeout 0\n  Non-2xx or 3xx responses: 2\n";
    let c = parse_wrk(text);
    assert_eq!((c.requests, c.failed), (81234, 6));
    assert_eq!(parse_wrk("  10 requests in 1.00s, 1KB read\n").failed, 0);
}
