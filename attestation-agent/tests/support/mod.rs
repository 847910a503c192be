//! Shared helpers of the attestation-agent integration tests: configs for a
//! test KBS on loopback, and an openssl-made certificate for HTTPS.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use attestation_agent::config::Config;

/// aa.toml text for a KBS at `url` with the sample attester (a plain
/// `http://` test KBS gets `insecure_http = true`).
pub fn aa_toml(url: &str, extra: &str) -> String {
    let insecure = if url.starts_with("http://") { "insecure_http = true\n" } else { "" };
    format!(
        "[token_configs.kbs]\nurl = \"{url}\"\n{insecure}\n[attester]\ntype = \"sample\"\n\n[kbs_client]\nmax_attempts = 3\nbackoff_ms = 10\ntimeout_secs = 10\n{extra}\n"
    )
}

pub fn config(url: &str, extra: &str) -> Config {
    Config::from_toml(&aa_toml(url, extra), Path::new("aa.toml")).expect("test config parses")
}

pub fn resources(n: usize) -> HashMap<String, Vec<u8>> {
    (0..n).map(|i| (format!("default/key/{i}"), format!("secret-{i}").into_bytes())).collect()
}

/// Skips (returns false) when `tool` is missing, unless CI=true.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required with CI=true (make deps installs it)");
        }
        eprintln!("SKIP: {tool} not installed");
    }
    found
}

/// A self-signed end-entity certificate for 127.0.0.1 (cert PEM, key PEM),
/// the kind a KBS deployment pins.
pub fn self_signed(dir: &Path, name: &str) -> (String, String) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let conf = dir.join(format!("{name}.cnf"));
    std::fs::write(
        &conf,
        "[req]\ndistinguished_name = dn\nx509_extensions = v3\nprompt = no\n[dn]\nCN = 127.0.0.1\n\
         [v3]\nsubjectAltName = IP:127.0.0.1,DNS:localhost\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-config",
        ])
        .arg(&conf)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap())
}

/// What an operator gets from `openssl req -x509 -newkey rsa:2048 -nodes
/// -subj /CN=<cn> -addext subjectAltName=<san>`: self-signed with openssl's
/// default extensions, i.e. `CA:TRUE` (cert PEM, key PEM).
pub fn openssl_default_x509(dir: &Path, name: &str, cn: &str, san: &str) -> (String, String) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-addext"])
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&cert).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"), "openssl's default is CA:TRUE");
    (std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap())
}
