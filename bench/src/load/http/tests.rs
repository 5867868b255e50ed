use super::*;

#[test]
fn reads_a_response_head() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let head = rt
        .block_on(read_head(
            &mut &b"HTTP/1.1 200 OK\r\nX-Release: v2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                [..],
        ))
        .unwrap();
    assert_eq!(
        (
            head.status,
            head.close,
            head.content_length,
            head.release.as_str()
        ),
        (200, true, Some(5), "v2")
    );
    let err = rt.block_on(read_head(&mut &b"HTTP/1.1 200 OK\r\nX-Rel"[..]));
    assert!(err.is_err());
}
