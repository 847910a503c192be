//! Stdin, exec into a running container, terminals, and isolation of slow
//! requests from other containers' requests.

use std::time::Duration;

use protos::agent::*;

use crate::harness::{ctx, prerequisites, spec, Rt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trips_through_cat() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    rt.run("cat", spec(&rt.rootfs("cat"), &["cat"])).await;
    let req = WriteStreamRequest { container_id: "cat".into(), data: b"ping\npong\n".to_vec(), ..Default::default() };
    assert_eq!(rt.client.write_stdin(ctx(), &req).await.unwrap().len, 10);
    rt.client
        .close_stdin(ctx(), &CloseStdinRequest { container_id: "cat".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rt.read_all("cat", "", false).await, "ping\npong\n");
    assert_eq!(rt.wait("cat", "").await, 0);
    // After EOF, reads keep answering empty (kata's EOF rule).
    let again = ReadStreamRequest { container_id: "cat".into(), len: 10, ..Default::default() };
    assert!(rt.client.read_stdout(ctx(), &again).await.unwrap().data.is_empty());
    rt.remove("cat").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_shares_the_pid_namespace_and_tty_resize_is_seen_by_stty() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    rt.run("c", spec(&rt.rootfs("c"), &["sleep", "1000"])).await;

    rt.exec("c", "e1", &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$"], false).await.unwrap();
    let out = rt.read_all("c", "e1", false).await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("sleep 1000 "), "PID 1 seen by the exec: {out:?}");
    let my_pid: i32 = lines.next().unwrap().parse().unwrap();
    assert!(my_pid > 1, "the exec runs in the container's PID namespace (pid {my_pid})");
    assert_eq!(rt.wait("c", "e1").await, 0);
    // A waited exec is forgotten, as in kata.
    let gone = rt
        .client
        .wait_process(
            ctx(),
            &WaitProcessRequest { container_id: "c".into(), exec_id: "e1".into(), ..Default::default() },
        )
        .await;
    assert!(format!("{:?}", gone.unwrap_err()).contains("NOT_FOUND"));

    // Exec errors come back on ExecProcess itself.
    let err = rt.exec("c", "bad", &["/no/such/binary"], false).await.unwrap_err();
    assert!(format!("{err:?}").contains("/no/such/binary"), "{err:?}");

    rt.exec("c", "tty", &["sh", "-c", "read x; stty size"], true).await.unwrap();
    let resize = TtyWinResizeRequest {
        container_id: "c".into(),
        exec_id: "tty".into(),
        row: 40,
        column: 100,
        ..Default::default()
    };
    rt.client.tty_win_resize(ctx(), &resize).await.unwrap();
    let go = WriteStreamRequest {
        container_id: "c".into(),
        exec_id: "tty".into(),
        data: b"go\n".to_vec(),
        ..Default::default()
    };
    rt.client.write_stdin(ctx(), &go).await.unwrap();
    let out = rt.read_all("c", "tty", false).await;
    assert!(out.contains("40 100"), "stty size after resize: {out:?}");
    assert_eq!(rt.wait("c", "tty").await, 0);
    // A resize of a process without a terminal is refused.
    let bad = TtyWinResizeRequest { container_id: "c".into(), row: 1, column: 1, ..Default::default() };
    assert!(rt.client.tty_win_resize(ctx(), &bad).await.is_err());
    rt.remove("c").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_read_does_not_delay_signal_or_remove_of_another_container() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    rt.create_sandbox("sb", false).await;
    rt.run("quiet", spec(&rt.rootfs("quiet"), &["sleep", "1000"])).await;
    rt.run("other", spec(&rt.rootfs("other"), &["sleep", "1000"])).await;
    // Long polls that will not return: a read of a silent process, a wait,
    // and the OOM event stream.
    let client = rt.client.clone();
    let blocked_read = tokio::spawn(async move {
        let req = ReadStreamRequest { container_id: "quiet".into(), len: 100, ..Default::default() };
        client.read_stdout(ctx(), &req).await
    });
    let client = rt.client.clone();
    let blocked_wait = tokio::spawn(async move {
        client.wait_process(ctx(), &WaitProcessRequest { container_id: "quiet".into(), ..Default::default() }).await
    });
    let client = rt.client.clone();
    let blocked_oom = tokio::spawn(async move { client.get_oom_event(ctx(), &GetOOMEventRequest::new()).await });
    // And a storm of StatsContainer calls on the quiet container.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut storms = Vec::new();
    for _ in 0..4 {
        let (client, stop) = (rt.client.clone(), stop.clone());
        storms.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = StatsContainerRequest { container_id: "quiet".into(), ..Default::default() };
                client.stats_container(ctx(), &req).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = std::time::Instant::now();
    rt.client
        .stats_container(ctx(), &StatsContainerRequest { container_id: "quiet".into(), ..Default::default() })
        .await
        .unwrap();
    rt.signal("other", "", libc::SIGKILL).await.unwrap();
    assert_eq!(rt.wait("other", "").await, 137);
    rt.remove("other").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "other container's requests took {:?}", t.elapsed());
    assert!(!blocked_read.is_finished() && !blocked_wait.is_finished());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stats_calls = 0;
    for s in storms {
        stats_calls += s.await.unwrap();
    }
    assert!(stats_calls > 0);

    // Removing the quiet container ends its long polls: EOF and 137.
    rt.remove("quiet").await.unwrap();
    assert!(blocked_read.await.unwrap().unwrap().data.is_empty());
    assert_eq!(blocked_wait.await.unwrap().unwrap().status, 137);
    blocked_oom.abort();
}
