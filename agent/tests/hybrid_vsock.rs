//! The host client's hybrid-vsock mode, through a multiplexer written here the
//! way cloud-hypervisor / vhost-device-vsock behave: a unix socket that takes
//! `CONNECT <port>\n`, answers `OK <host port>\n` and then relays bytes to the
//! guest port (here: the agent's unix socket), or closes the connection when
//! nothing listens on that port.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ctl, stderr, stdout, Agent};
use serde_json::Value;

#[derive(Clone)]
enum Backend {
    /// Relay to this unix socket (the agent).
    Relay(PathBuf),
    /// Accept the guest connection, then never answer (a hung guest).
    BlackHole,
}

/// Serves the multiplexer on `path` until the test process exits.
fn spawn_mux(path: &Path, guest_port: u32, backend: Backend) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let backend = backend.clone();
            std::thread::spawn(move || serve(conn, guest_port, backend));
        }
    });
}

fn serve(conn: UnixStream, guest_port: u32, backend: Backend) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let Some(port) = line.strip_prefix("CONNECT ").and_then(|p| p.trim_end().parse::<u32>().ok()) else {
        return;
    };
    if port != guest_port {
        return; // nothing listens there: close, as the real multiplexers do
    }
    let mut to_host = conn;
    // The host-side port number is arbitrary; clients must only check "OK ".
    to_host.write_all(b"OK 49153\n").unwrap();
    match backend {
        Backend::BlackHole => {
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        }
        Backend::Relay(agent) => {
            let guest = UnixStream::connect(agent).unwrap();
            let mut guest_w = guest.try_clone().unwrap();
            let mut guest_r = guest;
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut guest_w);
                let _ = guest_w.shutdown(std::net::Shutdown::Write);
            });
            let _ = std::io::copy(&mut guest_r, &mut to_host);
            let _ = to_host.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        }
    }
}

#[test]
fn check_version_and_unimplemented_through_hybrid_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let mux = dir.path().join("vm.vsock");
    spawn_mux(&mux, 1024, Backend::Relay(agent.socket.clone()));
    let addr = format!("unix://{}", mux.display());

    let out = ctl(&["--addr", &addr, "--hybrid-vsock", "1024", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap()["status"], 1);

    let out = ctl(&["--addr", &addr, "--hybrid-vsock", "1024", "version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap()["agent_version"], env!("CARGO_PKG_VERSION"));

    let out = ctl(&["--addr", &addr, "--hybrid-vsock", "1024", "call", "StartContainer", r#"{"container_id":"c1"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("NOT_FOUND") && stderr(&out).contains(r#"container "c1" not found"#),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_guest_port_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let mux = dir.path().join("vm.vsock");
    spawn_mux(&mux, 1024, Backend::BlackHole);
    let out = ctl(&["--addr", &format!("unix://{}", mux.display()), "--hybrid-vsock", "2048", "check"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("nothing listens on guest port 2048"), "{}", stderr(&out));
}

#[test]
fn a_hung_guest_hits_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mux = dir.path().join("vm.vsock");
    spawn_mux(&mux, 1024, Backend::BlackHole);
    let started = Instant::now();
    let out =
        ctl(&["--addr", &format!("unix://{}", mux.display()), "--hybrid-vsock", "1024", "--timeout", "1", "check"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out after 1s"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn hybrid_mode_needs_a_unix_socket_address() {
    let out = ctl(&["--addr", "vsock://3:1024", "--hybrid-vsock", "1024", "check"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("--hybrid-vsock needs a unix:///path"), "{}", stderr(&out));
}
