//! `--attestation-agent`: kbs:/// references resolve through the
//! attestation-agent, and an unreachable agent fails the pull closed, naming
//! the resource and the socket, before anything is written.

use std::process::Command;

#[test]
fn policy_from_unreachable_attestation_agent_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-aa.sock");
    let bundle = dir.path().join("bundle");
    let out = Command::new(env!("CARGO_BIN_EXE_image-pull"))
        .arg("--work-dir")
        .arg(dir.path().join("store"))
        .arg("--attestation-agent")
        .arg(format!("unix://{}", socket.display()))
        .args(["--policy", "kbs:///default/security-policy/test", "127.0.0.1:1/nothing:here"])
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull must fail: {stderr}");
    assert!(stderr.contains("kbs:///default/security-policy/test"), "{stderr}");
    assert!(stderr.contains(&format!("attestation-agent at unix://{}", socket.display())), "{stderr}");
    assert!(!bundle.exists(), "nothing may be written under BUNDLE_DIR");
}

#[test]
fn attestation_agent_and_key_source_dir_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_image-pull"))
        .args(["--attestation-agent", "unix:///run/aa.sock", "--key-source-dir"])
        .arg(dir.path())
        .args(["example.invalid/a:b"])
        .arg(dir.path().join("bundle"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
