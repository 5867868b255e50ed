use super::*;

#[test]
fn crash_states_are_recognised() {
    let mut st = UnitStatus {
        active_state: "activating".into(),
        sub_state: "auto-restart".into(),
        ..Default::default()
    };
    assert!(st.has_crashed());
    st.sub_state = "start".into();
    assert!(!st.has_crashed());
    st.active_state = "failed".into();
    assert!(st.has_crashed());
}

#[test]
fn describe_names_result_and_exit_status() {
    let st = UnitStatus {
        name: "app@v2.service".into(),
        active_state: "failed".into(),
        sub_state: "failed".into(),
        result: "exit-code".into(),
        exec_main_status: 3,
        ..Default::default()
    };
    assert_eq!(
        st.describe(),
        "app@v2.service is failed (failed), result exit-code (exit status 3)"
    );
    let timeout = UnitStatus {
        result: "timeout".into(),
        ..st.clone()
    };
    assert!(
        timeout.start_failure().contains("must send READY=1"),
        "{}",
        timeout.start_failure()
    );
    let trap = UnitStatus {
        result: "signal".into(),
        exec_main_status: 5,
        ..st
    };
    assert!(
        trap.describe().contains("result signal (SIGTRAP (5))"),
        "{}",
        trap.describe()
    );
    assert!(
        trap.start_failure()
            .contains("MemoryDenyWriteExecute=yes: add `needs: [jit]`"),
        "{}",
        trap.start_failure()
    );
}
