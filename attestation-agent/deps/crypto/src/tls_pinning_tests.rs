//! Real TLS handshakes (rustls client and server in memory) against
//! certificates made by the openssl CLI, the way operators make them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection};

use super::*;

/// `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=<cn> -addext
/// subjectAltName=<san>`: self-signed, and CA:TRUE (openssl's default).
/// None (skip) when openssl is missing outside CI.
fn openssl_self_signed(dir: &Path, name: &str, cn: &str, san: &str) -> Option<(String, String)> {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-addext"])
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("openssl is required with CI=true"),
        _ => {
            eprintln!("SKIP: openssl not available");
            return None;
        }
    }
    Some((std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap()))
}

fn server_config(cert_pem: &str, key_pem: &str) -> rustls::ServerConfig {
    let certs = certs_from_pem(cert_pem.as_bytes(), "test").unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// Drives a full handshake in memory; the client's verdict first.
fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name)?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn pinned_client(cert_pem: &str) -> rustls::ClientConfig {
    client_config(certs_from_pem(cert_pem.as_bytes(), "pin").unwrap(), Roots::ConfiguredOnly).unwrap()
}

#[test]
fn accepts_the_pinned_self_signed_ca_certificate_that_webpki_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = openssl_self_signed(dir.path(), "srv", "127.0.0.1", "IP:127.0.0.1") else { return };
    let text =
        Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(dir.path().join("srv.crt")).output();
    assert!(String::from_utf8_lossy(&text.unwrap().stdout).contains("CA:TRUE"), "the case under test is CA:TRUE");

    // Plain webpki with that certificate as the only root: CaUsedAsEndEntity.
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs_from_pem(cert.as_bytes(), "pin").unwrap());
    let plain = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = handshake(plain, server_config(&cert, &key), "127.0.0.1").unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_)))
            || err.to_string().contains("CaUsedAsEndEntity"),
        "{err}"
    );

    handshake(pinned_client(&cert), server_config(&cert, &key), "127.0.0.1").unwrap();
}

#[test]
fn refuses_a_pinned_certificate_for_another_name() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = openssl_self_signed(dir.path(), "srv", "127.0.0.1", "IP:127.0.0.1") else { return };
    let err = handshake(pinned_client(&cert), server_config(&cert, &key), "kbs.example").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[test]
fn refuses_a_server_whose_certificate_is_not_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let Some((pinned, _)) = openssl_self_signed(dir.path(), "pinned", "127.0.0.1", "IP:127.0.0.1") else { return };
    let Some((other, other_key)) = openssl_self_signed(dir.path(), "other", "127.0.0.1", "IP:127.0.0.1") else {
        return;
    };
    let err = handshake(pinned_client(&pinned), server_config(&other, &other_key), "127.0.0.1").unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_))), "{err}");
    let text = err.to_string();
    assert!(text.contains("is not a pinned certificate") && text.contains("CaUsedAsEndEntity"), "{text}");
}

#[test]
fn refuses_a_server_presenting_the_pinned_certificate_without_its_key() {
    // The server shows the pinned certificate but signs the handshake with
    // another key: the signature check with the pinned key must fail.
    let dir = tempfile::tempdir().unwrap();
    let Some((pinned, _)) = openssl_self_signed(dir.path(), "pinned", "127.0.0.1", "IP:127.0.0.1") else { return };
    let Some((_, wrong_key)) = openssl_self_signed(dir.path(), "thief", "127.0.0.1", "IP:127.0.0.1") else { return };
    let certs = certs_from_pem(pinned.as_bytes(), "test").unwrap();
    let key = PrivateKeyDer::from_pem_slice(wrong_key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing_key = provider.key_provider.load_private_key(key).unwrap();
    // CertifiedKey::new does not check that the key matches (with_single_cert would).
    let certified = Arc::new(rustls::sign::CertifiedKey::new(certs, signing_key));
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    let err = handshake(pinned_client(&pinned), server, "127.0.0.1").unwrap_err();
    assert!(err.to_string().to_lowercase().contains("signature"), "{err}");
}

#[test]
fn pinned_certificate_outside_its_validity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, _)) = openssl_self_signed(dir.path(), "srv", "127.0.0.1", "IP:127.0.0.1") else { return };
    let der = certs_from_pem(cert.as_bytes(), "pin").unwrap().remove(0);
    let (not_before, not_after) = validity(der.as_ref()).unwrap();
    let verifier = PinnedCertVerifier::new(vec![der.clone()], Roots::ConfiguredOnly, provider()).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let at = |secs: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    verifier.verify_server_cert(&der, &[], &name, &[], at(not_before.as_secs() + 60)).unwrap();
    let late = verifier.verify_server_cert(&der, &[], &name, &[], at(not_after.as_secs() + 1)).unwrap_err();
    assert!(matches!(late, rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })), "{late}");
    let early = verifier.verify_server_cert(&der, &[], &name, &[], at(not_before.as_secs() - 1)).unwrap_err();
    assert!(matches!(early, rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })), "{early}");
}

#[test]
fn validity_matches_what_openssl_prints() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, _)) = openssl_self_signed(dir.path(), "srv", "127.0.0.1", "IP:127.0.0.1") else { return };
    let der = certs_from_pem(cert.as_bytes(), "pin").unwrap().remove(0);
    let (not_before, not_after) = validity(der.as_ref()).unwrap();
    // openssl's default -days is 30.
    assert_eq!(not_after.as_secs() - not_before.as_secs(), 30 * 86400);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(not_before.as_secs() <= now + 5 && now < not_after.as_secs());
    assert!(validity(&der.as_ref()[..der.as_ref().len() - 1]).is_err(), "truncated DER is refused");
}

#[test]
fn pem_errors_name_the_origin() {
    let err = certs_from_pem(b"no pem here", "aa.toml token_configs.kbs.cert").unwrap_err();
    assert!(err.to_string().contains("aa.toml token_configs.kbs.cert"), "{err}");
    let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = certs_from_pem(junk.as_bytes(), "ca.pem").unwrap_err();
    assert!(matches!(err, TlsPinError::Certificate { .. }), "{err}");
}

/// A server certificate issued by a configured CA (not itself configured)
/// still passes, through the webpki fallback: pinning adds, it takes nothing away.
#[test]
fn a_chain_to_a_configured_ca_still_verifies_through_webpki() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, _)) = openssl_self_signed(dir.path(), "ca", "test CA", "DNS:ca.invalid") else { return };
    let (csr, key, ext, crt) =
        (dir.path().join("s.csr"), dir.path().join("s.key"), dir.path().join("ext"), dir.path().join("s.crt"));
    let run = |args: &[&str]| {
        let ok = Command::new("openssl").args(args).stderr(std::process::Stdio::null()).status().unwrap().success();
        assert!(ok, "openssl {args:?}");
    };
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (ca_crt, ca_key) = (p(&dir.path().join("ca.crt")), p(&dir.path().join("ca.key")));
    run(&["x509", "-req", "-days", "2", "-in", &p(&csr), "-CA", &ca_crt, "-CAkey", &ca_key, "-set_serial", "7"]
        .into_iter()
        .chain(["-extfile", &p(&ext), "-out", &p(&crt)])
        .collect::<Vec<_>>());
    let server_cert = std::fs::read_to_string(&crt).unwrap();
    let server_key = std::fs::read_to_string(&key).unwrap();
    handshake(pinned_client(&ca), server_config(&server_cert, &server_key), "127.0.0.1").unwrap();
    // The CA does not vouch for another name.
    assert!(handshake(pinned_client(&ca), server_config(&server_cert, &server_key), "10.0.0.1").is_err());
}
