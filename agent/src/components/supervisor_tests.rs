//! The supervisor against a scripted launcher on tokio's paused clock: launch
//! order, socket timeouts, restarts, backoff bounds and giving up.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::*;
use crate::components::{plan, Paths, PlanOptions, Procs};

/// What one spawn of a component does.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// Creates its socket after this long, then runs until killed or crashed.
    Serve(Duration),
    /// Exits with this code at once, without a socket.
    Exit(i32),
    /// Runs but never creates its socket.
    Mute,
}

#[derive(Default)]
struct Fake {
    script: HashMap<Component, VecDeque<Run>>,
    /// Used when a component's script is empty.
    fallback: HashMap<Component, Run>,
    spawns: Vec<(Component, Instant, i32)>,
    signals: Vec<(i32, i32)>,
    exits: HashMap<i32, oneshot::Sender<ExitStatus>>,
    ready_at: HashMap<std::path::PathBuf, Instant>,
    next_pid: i32,
}

#[derive(Default)]
struct FakeLauncher(Mutex<Fake>);

impl FakeLauncher {
    fn scripted(runs: &[(Component, &[Run])], fallback: &[(Component, Run)]) -> Arc<FakeLauncher> {
        let f = FakeLauncher::default();
        {
            let mut g = f.0.lock().unwrap();
            for (c, r) in runs {
                g.script.insert(*c, r.iter().copied().collect());
            }
            g.fallback = fallback.iter().copied().collect();
            g.next_pid = 100;
        }
        Arc::new(f)
    }

    fn spawns(&self) -> Vec<(Component, Instant, i32)> {
        self.0.lock().unwrap().spawns.clone()
    }

    fn signals(&self) -> Vec<(i32, i32)> {
        self.0.lock().unwrap().signals.clone()
    }

    /// The process dies by `sig` as if killed from outside.
    fn crash(&self, pid: i32, sig: i32) {
        if let Some(tx) = self.0.lock().unwrap().exits.remove(&pid) {
            let _ = tx.send(ExitStatus::Signaled(sig));
        }
    }
}

impl Launcher for FakeLauncher {
    fn spawn(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        let mut g = self.0.lock().unwrap();
        let run = match g.script.get_mut(&spec.component).and_then(VecDeque::pop_front) {
            Some(r) => r,
            None => *g.fallback.get(&spec.component).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?,
        };
        g.next_pid += 1;
        let pid = g.next_pid;
        g.spawns.push((spec.component, Instant::now(), pid));
        let (tx, rx) = oneshot::channel();
        match run {
            Run::Exit(code) => {
                let _ = tx.send(ExitStatus::Exited(code));
            }
            Run::Serve(after) => {
                if let Some(s) = &spec.wait_socket {
                    g.ready_at.insert(s.clone(), Instant::now() + after);
                }
                g.exits.insert(pid, tx);
            }
            Run::Mute => {
                g.exits.insert(pid, tx);
            }
        }
        Ok(Launched { pid, exit: Box::pin(async move { rx.await.ok() }) })
    }

    fn socket_ready(&self, path: &Path) -> bool {
        self.0.lock().unwrap().ready_at.get(path).is_some_and(|t| Instant::now() >= *t)
    }

    fn remove_stale_socket(&self, path: &Path) {
        self.0.lock().unwrap().ready_at.remove(path);
    }

    fn signal(&self, pid: i32, sig: i32) {
        let mut g = self.0.lock().unwrap();
        g.signals.push((pid, sig));
        if let Some(tx) = g.exits.remove(&pid) {
            let _ = tx.send(ExitStatus::Signaled(sig));
        }
    }
}

const AA: Component = Component::AttestationAgent;
const CDH: Component = Component::ConfidentialDataHub;
const API: Component = Component::ApiServerRest;

fn specs(procs: Procs) -> Vec<LaunchSpec> {
    plan(&PlanOptions { procs, ..Default::default() }, &Paths::default())
}

/// Lets the supervisor tasks run until `cond` holds (paused clock: sleeps
/// advance time instantly).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn components_start_in_order_each_after_the_previous_socket() {
    let fake = FakeLauncher::scripted(
        &[
            (AA, &[Run::Serve(Duration::from_secs(2))]),
            (CDH, &[Run::Serve(Duration::from_secs(1))]),
            (API, &[Run::Mute]),
        ],
        &[],
    );
    let board = StatusBoard::default();
    let t0 = Instant::now();
    let mut sup = Supervisor::start(specs(Procs::ApiServerRest), fake.clone(), RestartPolicy::default(), board.clone())
        .await
        .unwrap();
    let spawns = fake.spawns();
    let order: Vec<Component> = spawns.iter().map(|s| s.0).collect();
    assert_eq!(order, [AA, CDH, API]);
    assert!(spawns[1].1 - t0 >= Duration::from_secs(2), "CDH started before the AA socket");
    assert!(spawns[2].1 - spawns[1].1 >= Duration::from_secs(1), "api-server-rest started before the CDH socket");
    // api-server-rest has no socket to wait for: start returned at once.
    assert!(Instant::now() - spawns[2].1 < Duration::from_millis(100));
    let snap = board.snapshot();
    assert!(snap.iter().all(|s| s.state == State::Running && s.restarts == 0 && s.pid.is_some()), "{snap:?}");
    sup.stop().await;
    assert!(board.snapshot().iter().all(|s| s.state == State::Stopped && s.pid.is_none()));
    let terms: Vec<i32> = fake.signals().iter().filter(|s| s.1 == libc::SIGTERM).map(|s| s.0).collect();
    assert_eq!(terms.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_never_appears_fails_the_boot_after_the_timeout() {
    let fake = FakeLauncher::scripted(&[(AA, &[Run::Mute])], &[]);
    let board = StatusBoard::default();
    let t0 = Instant::now();
    let err =
        Supervisor::start(specs(Procs::ConfidentialDataHub), fake.clone(), RestartPolicy::default(), board.clone())
            .await
            .err()
            .expect("boot must fail");
    let waited = Instant::now() - t0;
    assert!(waited >= Duration::from_secs(6) && waited < Duration::from_secs(7), "{waited:?}");
    assert!(err.to_string().contains("attestation-agent.sock") && err.to_string().contains("6s"), "{err}");
    // The mute process is killed, and the CDH never started.
    assert_eq!(fake.signals(), [(fake.spawns()[0].2, libc::SIGKILL)]);
    assert_eq!(fake.spawns().len(), 1);
    assert_eq!(board.get(AA).unwrap().state, State::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_component_that_exits_at_boot_fails_it_with_its_status() {
    let fake = FakeLauncher::scripted(&[(AA, &[Run::Serve(Duration::ZERO)]), (CDH, &[Run::Exit(3)])], &[]);
    let board = StatusBoard::default();
    let err =
        Supervisor::start(specs(Procs::ConfidentialDataHub), fake.clone(), RestartPolicy::default(), board.clone())
            .await
            .err()
            .expect("boot must fail");
    assert!(err.to_string().contains("confidential-data-hub exited (exit code 3)"), "{err}");
    // The AA already running is stopped again.
    let aa_pid = fake.spawns()[0].2;
    assert!(fake.signals().contains(&(aa_pid, libc::SIGTERM)));
    assert_eq!(board.get(AA).unwrap().state, State::Stopped);
    assert_eq!(board.get(CDH).unwrap().state, State::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_component_is_restarted_after_the_initial_backoff() {
    let serve = Run::Serve(Duration::from_millis(300));
    let fake = FakeLauncher::scripted(&[], &[(AA, serve), (CDH, serve)]);
    let board = StatusBoard::default();
    let policy = RestartPolicy::default();
    let mut sup =
        Supervisor::start(specs(Procs::ConfidentialDataHub), fake.clone(), policy, board.clone()).await.unwrap();
    let first = board.get(AA).unwrap().pid.unwrap();
    let killed_at = Instant::now();
    fake.crash(first, libc::SIGKILL);
    until("AA running again", || board.get(AA).is_some_and(|s| s.state == State::Running && s.pid != Some(first)))
        .await;
    let spawns = fake.spawns();
    let respawn = spawns.iter().rfind(|s| s.0 == AA).unwrap();
    let delay = respawn.1 - killed_at;
    assert!(delay >= policy.initial_backoff && delay < policy.initial_backoff * 2, "{delay:?}");
    let aa = board.get(AA).unwrap();
    assert_eq!(aa.restarts, 1);
    // The CDH was left alone.
    assert_eq!(spawns.iter().filter(|s| s.0 == CDH).count(), 1);
    assert_eq!(board.get(CDH).unwrap().restarts, 0);
    sup.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_up_to_the_cap_then_the_component_is_given_up() {
    let policy = RestartPolicy { max_failures: 9, ..Default::default() };
    // Serves once, then every relaunch exits at once.
    let fake = FakeLauncher::scripted(&[(AA, &[Run::Serve(Duration::ZERO)])], &[(AA, Run::Exit(1))]);
    let board = StatusBoard::default();
    let _sup = Supervisor::start(specs(Procs::AttestationAgent), fake.clone(), policy, board.clone()).await.unwrap();
    let first = board.get(AA).unwrap().pid.unwrap();
    fake.crash(first, libc::SIGSEGV);
    until("AA given up", || board.get(AA).is_some_and(|s| s.state == State::Failed)).await;
    let times: Vec<Instant> = fake.spawns().iter().map(|s| s.1).collect();
    assert_eq!(times.len(), 1 + 9, "one boot launch and max_failures relaunches");
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_millis() as u64).collect();
    // The first gap also holds the run before the crash (no time on a paused clock).
    assert_eq!(gaps, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    let aa = board.get(AA).unwrap();
    assert_eq!((aa.restarts, aa.pid), (9, None));
    assert_eq!(policy.backoff(1), Duration::from_millis(500));
    assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_run_that_stayed_up_resets_the_backoff() {
    let policy = RestartPolicy::default();
    let serve = Run::Serve(Duration::ZERO);
    let fake = FakeLauncher::scripted(&[(AA, &[serve, Run::Exit(1), Run::Exit(1), serve])], &[(AA, serve)]);
    let board = StatusBoard::default();
    let _sup = Supervisor::start(specs(Procs::AttestationAgent), fake.clone(), policy, board.clone()).await.unwrap();
    fake.crash(board.get(AA).unwrap().pid.unwrap(), libc::SIGKILL);
    // 0.5 s, 1 s (exit), 2 s (exit), then it serves.
    until("AA back", || board.get(AA).is_some_and(|s| s.state == State::Running && s.restarts == 3)).await;
    tokio::time::sleep(policy.stable_after).await;
    let crashed = Instant::now();
    fake.crash(board.get(AA).unwrap().pid.unwrap(), libc::SIGKILL);
    until("AA back again", || board.get(AA).is_some_and(|s| s.state == State::Running && s.restarts == 4)).await;
    let last = fake.spawns().last().unwrap().1;
    assert_eq!(last - crashed, policy.initial_backoff);
}

#[tokio::test(start_paused = true)]
async fn stop_during_backoff_leaves_the_component_stopped() {
    let fake = FakeLauncher::scripted(&[(AA, &[Run::Serve(Duration::ZERO)])], &[(AA, Run::Exit(1))]);
    let board = StatusBoard::default();
    let mut sup =
        Supervisor::start(specs(Procs::AttestationAgent), fake.clone(), RestartPolicy::default(), board.clone())
            .await
            .unwrap();
    fake.crash(board.get(AA).unwrap().pid.unwrap(), libc::SIGKILL);
    until("AA restarting", || board.get(AA).is_some_and(|s| s.state == State::Restarting)).await;
    sup.stop().await;
    assert_eq!(board.get(AA).unwrap().state, State::Stopped);
    let n = fake.spawns().len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(fake.spawns().len(), n, "relaunched after stop");
}
