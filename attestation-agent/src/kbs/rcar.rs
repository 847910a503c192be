//! The RCAR handshake (Request, Challenge, Attestation, Response):
//! `POST /kbs/v0/auth` → challenge + session cookie; evidence binding
//! JCS({"additional-evidence","nonce","tee-pubkey"}) hashed with the
//! negotiated algorithm; `POST /kbs/v0/attest` → token.

use kbs_types::{Attestation, Challenge, CompositeEvidence, HashAlgorithm, InitData, Request, RuntimeData};
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::session::{session_cookie, token_expiry, Session};
use super::transport::Call;
use super::{http_error, KbsClient, KbsError, KBS_PROTOCOL_VERSION};
use crate::attester::{EvidenceRequest, TeeKind};
use crate::jcs;

/// Longest nonce accepted from a KBS (an SE request fits; junk does not).
const MAX_NONCE: usize = 64 * 1024;

/// The algorithms we offer, strongest first.
const OFFERED: [HashAlgorithm; 3] = [HashAlgorithm::Sha384, HashAlgorithm::Sha512, HashAlgorithm::Sha256];

/// The binding hash the hardware report carries.
pub fn binding_hash(
    algorithm: HashAlgorithm,
    nonce: &str,
    tee_pubkey: &kbs_types::TeePubKey,
    additional_evidence: &str,
) -> Result<Vec<u8>, KbsError> {
    let value = json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    let canonical = jcs::canonicalize(&value).map_err(|e| KbsError::Protocol(e.to_string()))?;
    Ok(algorithm.digest(&canonical))
}

fn negotiated(challenge: &Challenge, tee: TeeKind) -> Result<HashAlgorithm, KbsError> {
    let default = if tee == TeeKind::Se { HashAlgorithm::Sha512 } else { HashAlgorithm::Sha384 };
    let Some(selected) = challenge.extra_params.get("selected-hash-algorithm") else { return Ok(default) };
    let name = selected
        .as_str()
        .ok_or_else(|| KbsError::Protocol(format!("selected-hash-algorithm is {selected}, not a string")))?
        .to_ascii_lowercase();
    OFFERED
        .into_iter()
        .find(|a| a.as_ref() == name)
        .ok_or_else(|| KbsError::Protocol(format!("KBS selected hash algorithm {name:?}, which we did not offer")))
}

/// The auth answer: a challenge with a usable nonce, and the hash algorithm
/// the KBS selected among ours.
pub(crate) fn read_challenge(body: &[u8], tee: TeeKind) -> Result<(Challenge, HashAlgorithm), KbsError> {
    let challenge: Challenge =
        serde_json::from_slice(body).map_err(|e| KbsError::Protocol(format!("auth answer is not a challenge: {e}")))?;
    if challenge.nonce.is_empty() || challenge.nonce.len() > MAX_NONCE {
        return Err(KbsError::Protocol(format!(
            "challenge nonce is {} bytes (1..={MAX_NONCE})",
            challenge.nonce.len()
        )));
    }
    let algorithm = negotiated(&challenge, tee)?;
    Ok((challenge, algorithm))
}

/// The attest answer: the token and its `exp`, if any.
pub(crate) fn read_token(body: &[u8]) -> Result<(String, Option<u64>), KbsError> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: String,
    }
    let TokenAnswer { token } =
        serde_json::from_slice(body).map_err(|e| KbsError::Protocol(format!("attest answer has no token: {e}")))?;
    let exp = token_expiry(&token)?;
    Ok((token, exp))
}

impl KbsClient {
    pub(super) async fn handshake(&self, id: u64) -> Result<Session, KbsError> {
        let tee = self.attester.tee();
        let auth_url = format!("{}/kbs/v0/auth", self.url);
        let request = Request {
            version: KBS_PROTOCOL_VERSION.into(),
            tee: tee.kbs_tee(),
            extra_params: json!({ "supported-hash-algorithms": OFFERED.map(|a| a.as_ref().to_owned()) }),
        };
        let body = serde_json::to_vec(&request).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let answer = self
            .transport
            .send(&Call { method: Method::POST, url: &auth_url, json: Some(&body), cookie: None, bearer: None })
            .await?;
        if answer.status != StatusCode::OK {
            return Err(http_error(&auth_url, answer.status, &answer.body));
        }
        let cookie = session_cookie(answer.set_cookies())?;
        let (challenge, algorithm) = read_challenge(&answer.body, tee)?;

        let tee_pubkey = self.key.public_jwk().clone();
        let additional_evidence = String::new();
        let report_data = binding_hash(algorithm, &challenge.nonce, &tee_pubkey, &additional_evidence)?;
        let attester = self.attester.clone();
        let nonce = challenge.nonce.clone();
        let aael = self.eventlog.as_ref().and_then(|(log, reg)| log.aael(*reg));
        let primary_evidence = tokio::task::spawn_blocking(move || {
            attester.evidence(&EvidenceRequest {
                report_data: &report_data,
                kbs_nonce: Some(&nonce),
                aa_eventlog: aael.as_deref(),
            })
        })
        .await
        .map_err(|e| KbsError::Protocol(format!("evidence task failed: {e}")))??;

        let attestation = Attestation {
            init_data: self.initdata.as_ref().map(|body| InitData { format: "toml".into(), body: body.clone() }),
            runtime_data: RuntimeData { nonce: challenge.nonce, tee_pubkey },
            tee_evidence: CompositeEvidence { primary_evidence, additional_evidence },
        };
        let body = serde_json::to_vec(&attestation).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let attest_url = format!("{}/kbs/v0/attest", self.url);
        let answer = self
            .transport
            .send(&Call {
                method: Method::POST,
                url: &attest_url,
                json: Some(&body),
                cookie: cookie.as_deref(),
                bearer: None,
            })
            .await?;
        if answer.status != StatusCode::OK {
            return Err(http_error(&attest_url, answer.status, &answer.body));
        }
        let (token, exp) = read_token(&answer.body)?;
        let renew_at = exp.map(|exp| exp.saturating_sub(self.token_skew));
        // A new cookie on attest replaces the one from auth.
        let cookie = session_cookie(answer.set_cookies())?.or(cookie);
        tracing::info!(tee = %tee, hash = %algorithm, session = id, "attested to the KBS");
        Ok(Session { cookie, token, renew_at, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_hash_is_over_the_jcs_of_the_three_members() {
        let tpk = kbs_types::TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "X".into(),
            y: "Y".into(),
        };
        let h = binding_hash(HashAlgorithm::Sha384, "N", &tpk, "").unwrap();
        let expected = HashAlgorithm::Sha384.digest(
            br#"{"additional-evidence":"","nonce":"N","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}"#,
        );
        assert_eq!(h, expected);
        assert_eq!(h.len(), 48);
        assert_eq!(binding_hash(HashAlgorithm::Sha512, "N", &tpk, "").unwrap().len(), 64);
    }

    #[test]
    fn negotiation_defaults_and_refuses_unoffered() {
        let c = |v: serde_json::Value| Challenge { nonce: "n".into(), extra_params: v };
        assert_eq!(negotiated(&c(json!({})), TeeKind::Tdx).unwrap(), HashAlgorithm::Sha384);
        assert_eq!(negotiated(&c(json!("")), TeeKind::Se).unwrap(), HashAlgorithm::Sha512);
        assert_eq!(
            negotiated(&c(json!({"selected-hash-algorithm": "SHA512"})), TeeKind::Tdx).unwrap(),
            HashAlgorithm::Sha512
        );
        assert!(negotiated(&c(json!({"selected-hash-algorithm": "md5"})), TeeKind::Tdx).is_err());
        assert!(negotiated(&c(json!({"selected-hash-algorithm": 5})), TeeKind::Tdx).is_err());
    }
}
