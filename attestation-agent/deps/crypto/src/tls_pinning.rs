//! TLS server-certificate pinning shared by every HTTPS client of the guest:
//! the attestation-agent's KBS client (`token_configs.kbs.cert`), image-rs'
//! registry client (`--ca-file`, `ca-files`) and a data hub.
//!
//! [`PinnedCertVerifier`] accepts a server whose end-entity certificate is
//! byte-for-byte one of the configured certificates, provided the name the
//! client asked for (DNS or IP SAN) is in it, it is within its validity, and
//! the handshake signature verifies with its key. This is what makes a
//! certificate made by `openssl req -x509 …` (self-signed, `CA:TRUE`) usable
//! as "the" server certificate, which plain webpki refuses as
//! `CaUsedAsEndEntity`. Every other certificate goes to the normal webpki
//! verification against the roots ([`Roots`]).
//!
//! It must never accept a certificate that is not pinned without the
//! fallback verifier's approval, and never skip the name, the validity or
//! the handshake signature of a pinned one.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsPinError {
    #[error("{origin}: not a PEM certificate: {reason}")]
    Pem { origin: String, reason: String },
    #[error("{origin}: holds no PEM certificate")]
    Empty { origin: String },
    #[error("{origin}: certificate {index} cannot be parsed: {reason}")]
    Certificate { origin: String, index: usize, reason: String },
    #[error("cannot build the TLS verifier: {0}")]
    Verifier(String),
}

/// What a certificate that is not pinned is verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// Only the configured certificates as trust anchors (the KBS: its
    /// certificate is the only trust).
    ConfiguredOnly,
    /// The platform's roots plus the configured certificates (registries).
    PlatformAndConfigured,
}

/// Every certificate of a PEM bundle, each checked to parse as X.509.
/// `origin` names the source in errors (a path or a config key).
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsPinError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsPinError::Pem { origin: origin.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsPinError::Empty { origin: origin.to_owned() });
    }
    for (index, cert) in certs.iter().enumerate() {
        ParsedCertificate::try_from(cert).map_err(|e| TlsPinError::Certificate {
            origin: origin.to_owned(),
            index,
            reason: e.to_string(),
        })?;
        validity(cert.as_ref()).map_err(|e| TlsPinError::Certificate {
            origin: origin.to_owned(),
            index,
            reason: format!("validity: {e}"),
        })?;
    }
    Ok(certs)
}

/// A rustls client config (HTTP/1.1 ALPN) whose server certificates go
/// through a [`PinnedCertVerifier`] of `certs`.
pub fn client_config(certs: Vec<CertificateDer<'static>>, roots: Roots) -> Result<rustls::ClientConfig, TlsPinError> {
    let provider = provider();
    let verifier = PinnedCertVerifier::new(certs, roots, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsPinError::Verifier(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Exact-match pinning in front of a webpki verifier.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pinned: Vec<CertificateDer<'static>>,
    fallback: Arc<dyn ServerCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    pub fn new(
        pinned: Vec<CertificateDer<'static>>,
        roots: Roots,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsPinError> {
        let algorithms = provider.signature_verification_algorithms;
        let fallback: Arc<dyn ServerCertVerifier> = match roots {
            Roots::ConfiguredOnly => {
                let mut store = RootCertStore::empty();
                let (added, _ignored) = store.add_parsable_certificates(pinned.iter().cloned());
                if added == 0 {
                    return Err(TlsPinError::Verifier("no configured certificate can be a trust anchor".into()));
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                    .build()
                    .map_err(|e| TlsPinError::Verifier(e.to_string()))?
            }
            Roots::PlatformAndConfigured => Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(pinned.iter().cloned(), provider)
                    .map_err(|e| TlsPinError::Verifier(e.to_string()))?,
            ),
        };
        Ok(Self { pinned, fallback, algorithms })
    }

    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| p.as_ref() == cert.as_ref())
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.is_pinned(end_entity) {
            return self
                .fallback
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|reason| {
                    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                        NotPinned { sha256: hex(&Sha256::digest(end_entity.as_ref())), reason },
                    ))))
                });
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_validity(end_entity.as_ref(), now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.is_pinned(cert) {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        } else {
            self.fallback.verify_tls12_signature(message, cert, dss)
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.is_pinned(cert) {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        } else {
            self.fallback.verify_tls13_signature(message, cert, dss)
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a certificate that is not pinned was refused, with its fingerprint
/// (compare with `openssl x509 -noout -fingerprint -sha256`). rustls prints
/// it with `Debug`, so `Debug` is the readable text.
struct NotPinned {
    sha256: String,
    reason: rustls::Error,
}

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server certificate sha256:{} is not a pinned certificate and the roots refuse it: {}",
            self.sha256, self.reason
        )
    }
}

impl std::fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NotPinned {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_validity(cert: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
    let (not_before, not_after) =
        validity(cert).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if now.as_secs() < not_before.as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { time: now, not_before }));
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { time: now, not_after }));
    }
    Ok(())
}

/// `(notBefore, notAfter)` of an X.509 certificate (RFC 5280 4.1: Certificate
/// → TBSCertificate → [0] version, serialNumber, signature, issuer, validity).
pub fn validity(cert: &[u8]) -> Result<(UnixTime, UnixTime), der::Error> {
    use der::asn1::AnyRef;
    use der::{Decode, Reader, SliceReader, Tag, TagNumber};

    fn time<'a>(r: &mut SliceReader<'a>) -> Result<UnixTime, der::Error> {
        let since_epoch = match Tag::peek(r)? {
            Tag::UtcTime => der::asn1::UtcTime::decode(r)?.to_unix_duration(),
            _ => der::asn1::GeneralizedTime::decode(r)?.to_unix_duration(),
        };
        Ok(UnixTime::since_unix_epoch(since_epoch))
    }

    let mut reader = SliceReader::new(cert)?;
    let out = reader.sequence(|certificate| {
        let out = certificate.sequence(|tbs| {
            if Tag::peek(tbs)? == (Tag::ContextSpecific { constructed: true, number: TagNumber(0) }) {
                AnyRef::decode(tbs)?;
            }
            for _serial_signature_issuer in 0..3 {
                AnyRef::decode(tbs)?;
            }
            let out = tbs.sequence(|v| Ok::<_, der::Error>((time(v)?, time(v)?)))?;
            tbs.read_slice(tbs.remaining_len())?;
            Ok::<_, der::Error>(out)
        })?;
        certificate.read_slice(certificate.remaining_len())?;
        Ok::<_, der::Error>(out)
    })?;
    reader.finish()?;
    Ok(out)
}

#[cfg(test)]
#[path = "tls_pinning_tests.rs"]
mod tests;
