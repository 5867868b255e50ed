use std::time::Duration;

use handoff::config::is_safe_name;

use super::*;

#[test]
fn timestamps() {
    let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_007);
    assert_eq!(timestamp(t), "2024-02-29 23:59:59.007");
    assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
}

#[test]
fn deployment_ids_look_like_the_agents() {
    let a = new_deployment_id().unwrap();
    let b = new_deployment_id().unwrap();
    assert_ne!(a, b);
    for id in [a, b] {
        assert_eq!(id.len(), 11, "{id}");
        assert!(id.starts_with("d-"), "{id}");
        assert!(
            id[2..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{id}"
        );
        assert!(is_safe_name(&id, false));
    }
}
