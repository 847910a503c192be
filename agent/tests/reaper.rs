//! The subreaper test has a test binary of its own: `Reaper` runs
//! `waitpid(-1)`, which would steal the exit status of any child that a
//! sibling test in the same process waits for (`Command::output` then fails
//! with ECHILD).

use cvm_agent::reaper::{ExitStatus, Reaper};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn each_waiter_gets_its_own_status_and_orphans_are_reaped() {
    let reaper = Reaper::start().unwrap();
    let mut waiters = Vec::new();
    for code in 0..8 {
        let (_child, w) = reaper.spawn(Command::new("sh").arg("-c").arg(format!("exit {code}"))).unwrap();
        waiters.push((code, w));
    }
    let (_child, killed) = reaper.spawn(Command::new("sh").arg("-c").arg("kill -9 $$")).unwrap();
    for (code, w) in waiters {
        let st = tokio::time::timeout(Duration::from_secs(10), w.wait()).await.unwrap().unwrap();
        assert_eq!(st, ExitStatus::Exited(code));
    }
    let st = tokio::time::timeout(Duration::from_secs(10), killed.wait()).await.unwrap().unwrap();
    assert_eq!(st.code(), 137);

    // A grandchild orphaned to us: its parent exits first, then it must
    // be reaped (no zombie left) even though nobody registered it.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 0.3 & echo $! > {}", pidfile.display());
    let (_child, parent) = reaper.spawn(Command::new("sh").arg("-c").arg(script)).unwrap();
    assert_eq!(parent.wait().await, Some(ExitStatus::Exited(0)));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "orphan {pid} was not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
