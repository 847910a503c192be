//! containers-policy.json(5): the model and a strict loader.
//!
//! Parsing fails closed: an unknown field, an unknown requirement or
//! identity type, a duplicated key, a missing or ambiguous key source, or an
//! empty requirement list refuses the whole policy, with a message naming the
//! place. A policy that loads may still contain requirements this verifier
//! cannot check (Fulcio, PKI, Rekor); those reject every image they apply to.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::reference::DockerRef;

/// Largest policy file we parse.
pub const POLICY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {origin} is too large ({size} bytes, limit {POLICY_LIMIT})")]
    TooLarge { origin: String, size: usize },
    #[error("policy {origin} is invalid: {reason}")]
    Invalid { origin: String, reason: String },
}

/// Transports whose sections we accept (and ignore unless `docker`); any
/// other name refuses the policy, as containers/image does.
const KNOWN_TRANSPORTS: &[&str] = &[
    "docker",
    "atomic",
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "sif",
    "tarball",
    "ostree",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default: Vec<Requirement>,
    /// transport → scope → requirements (`""` is the transport default).
    pub transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// One policy requirement.
// Parsed once per policy and never moved in bulk: variant size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Requirement {
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        signed_identity: Option<IdentityRule>,
    },
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        key_datas: Option<Vec<String>>,
        #[serde(default)]
        fulcio: Option<Fulcio>,
        #[serde(default)]
        pki: Option<Pki>,
        #[serde(default)]
        rekor_public_key_path: Option<String>,
        #[serde(default)]
        rekor_public_key_paths: Option<Vec<String>>,
        #[serde(default)]
        rekor_public_key_data: Option<String>,
        #[serde(default)]
        rekor_public_key_datas: Option<Vec<String>>,
        #[serde(default)]
        signed_identity: Option<IdentityRule>,
    },
}

/// Keyless (Fulcio certificate) sigstore trust: parsed so policies load, never satisfied here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fulcio {
    #[serde(default)]
    pub ca_path: Option<String>,
    #[serde(default)]
    pub ca_data: Option<String>,
    #[serde(default)]
    pub oidc_issuer: Option<String>,
    #[serde(default)]
    pub subject_email: Option<String>,
}

/// X.509 PKI sigstore trust: parsed so policies load, never satisfied here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pki {
    #[serde(default)]
    pub ca_roots_path: Option<String>,
    #[serde(default)]
    pub ca_roots_data: Option<String>,
    #[serde(default)]
    pub ca_intermediates_path: Option<String>,
    #[serde(default)]
    pub ca_intermediates_data: Option<String>,
    #[serde(default)]
    pub subject_email: Option<String>,
    #[serde(default)]
    pub subject_hostname: Option<String>,
}

/// `signedIdentity`: which identity a signature must claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum IdentityRule {
    #[serde(rename = "matchExact")]
    MatchExact {},
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact {},
    #[serde(rename = "matchRepository")]
    MatchRepository {},
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename = "remapIdentity", rename_all = "camelCase")]
    RemapIdentity { prefix: String, signed_prefix: String },
}

impl Default for IdentityRule {
    fn default() -> Self {
        IdentityRule::MatchRepoDigestOrExact {}
    }
}

impl Requirement {
    /// A short name for messages: `signedBy`, `reject`, …
    pub fn kind(&self) -> &'static str {
        match self {
            Requirement::InsecureAcceptAnything {} => "insecureAcceptAnything",
            Requirement::Reject {} => "reject",
            Requirement::SignedBy { .. } => "signedBy",
            Requirement::SigstoreSigned { .. } => "sigstoreSigned",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Requirement::InsecureAcceptAnything {} | Requirement::Reject {} => Ok(()),
            Requirement::SignedBy { key_type, key_path, key_paths, key_data, signed_identity } => {
                if key_type != "GPGKeys" {
                    return Err(format!("signedBy keyType {key_type:?} is not supported (only \"GPGKeys\")"));
                }
                exactly_one(
                    "signedBy",
                    &[
                        ("keyPath", key_path.is_some()),
                        ("keyPaths", key_paths.is_some()),
                        ("keyData", key_data.is_some()),
                    ],
                )?;
                non_empty_list("signedBy keyPaths", key_paths)?;
                signed_identity.as_ref().map_or(Ok(()), IdentityRule::validate)
            }
            Requirement::SigstoreSigned {
                key_path,
                key_paths,
                key_data,
                key_datas,
                fulcio,
                pki,
                rekor_public_key_path,
                rekor_public_key_paths,
                rekor_public_key_data,
                rekor_public_key_datas,
                signed_identity,
            } => {
                exactly_one(
                    "sigstoreSigned",
                    &[
                        ("keyPath", key_path.is_some()),
                        ("keyPaths", key_paths.is_some()),
                        ("keyData", key_data.is_some()),
                        ("keyDatas", key_datas.is_some()),
                        ("fulcio", fulcio.is_some()),
                        ("pki", pki.is_some()),
                    ],
                )?;
                non_empty_list("sigstoreSigned keyPaths", key_paths)?;
                non_empty_list("sigstoreSigned keyDatas", key_datas)?;
                let rekor = [
                    rekor_public_key_path.is_some(),
                    rekor_public_key_paths.is_some(),
                    rekor_public_key_data.is_some(),
                    rekor_public_key_datas.is_some(),
                ];
                if rekor.iter().filter(|b| **b).count() > 1 {
                    return Err("sigstoreSigned: at most one of rekorPublicKeyPath, rekorPublicKeyPaths, \
                                rekorPublicKeyData and rekorPublicKeyDatas may be set"
                        .into());
                }
                if let Some(f) = fulcio {
                    if f.ca_path.is_some() == f.ca_data.is_some() {
                        return Err("sigstoreSigned fulcio: exactly one of caPath and caData must be set".into());
                    }
                    if f.oidc_issuer.is_none() || f.subject_email.is_none() {
                        return Err("sigstoreSigned fulcio: oidcIssuer and subjectEmail are required".into());
                    }
                    if !rekor.iter().any(|b| *b) {
                        return Err("sigstoreSigned fulcio requires a Rekor public key".into());
                    }
                }
                signed_identity.as_ref().map_or(Ok(()), IdentityRule::validate)
            }
        }
    }
}

impl IdentityRule {
    fn validate(&self) -> Result<(), String> {
        match self {
            IdentityRule::MatchExact {}
            | IdentityRule::MatchRepoDigestOrExact {}
            | IdentityRule::MatchRepository {} => Ok(()),
            IdentityRule::ExactReference { docker_reference } => {
                let r = DockerRef::parse(docker_reference).map_err(|e| format!("exactReference: {e}"))?;
                if r.is_name_only() {
                    return Err(format!("exactReference {docker_reference:?} must carry a tag or a digest"));
                }
                Ok(())
            }
            IdentityRule::ExactRepository { docker_repository } => {
                DockerRef::parse(docker_repository).map(|_| ()).map_err(|e| format!("exactRepository: {e}"))
            }
            IdentityRule::RemapIdentity { prefix, signed_prefix } => {
                validate_remap_prefix("prefix", prefix)?;
                validate_remap_prefix("signedPrefix", signed_prefix)
            }
        }
    }
}

/// A remapIdentity prefix is `host[:port]` or a fully expanded repository
/// name or namespace (no tag, no digest, no wildcard).
fn validate_remap_prefix(field: &str, value: &str) -> Result<(), String> {
    let bad =
        || format!("remapIdentity {field} {value:?} must be host[:port] or a fully expanded repository namespace");
    if value.is_empty() || value.contains('*') || value.contains('@') || value.ends_with('/') {
        return Err(bad());
    }
    if !value.contains('/') {
        return valid_host_port(value).then_some(()).ok_or_else(bad);
    }
    let r = DockerRef::parse(value).map_err(|_| bad())?;
    if !r.is_name_only() || r.name() != value {
        return Err(bad());
    }
    Ok(())
}

fn valid_host_port(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'))
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn exactly_one(what: &str, fields: &[(&str, bool)]) -> Result<(), String> {
    let set: Vec<&str> = fields.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    if set.len() == 1 {
        return Ok(());
    }
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    Err(if set.is_empty() {
        format!("{what}: one of {} is required", names.join(", "))
    } else {
        format!("{what}: only one of {} may be set (found {})", names.join(", "), set.join(" and "))
    })
}

fn non_empty_list(what: &str, list: &Option<Vec<String>>) -> Result<(), String> {
    match list {
        Some(l) if l.is_empty() => Err(format!("{what} is empty")),
        _ => Ok(()),
    }
}

/// A docker scope: `""`, `*.domain`, a host, a namespace, a repository or a
/// full reference. A `*` anywhere but a leading `*.` would never match, so it
/// is refused as a mistake.
fn validate_docker_scope(scope: &str) -> Result<(), String> {
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') || domain.contains('/') {
            return Err(format!("wildcard scope {scope:?} must look like *.example.com"));
        }
        return Ok(());
    }
    if scope.contains('*') {
        return Err(format!("scope {scope:?}: wildcards are only allowed as a leading \"*.\""));
    }
    if scope.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("scope {scope:?} contains control characters"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Vec<Requirement>>,
    #[serde(default)]
    transports: UniqueMap<UniqueMap<Vec<Requirement>>>,
}

/// A JSON object whose duplicated keys are an error (serde keeps the last one).
struct UniqueMap<V>(BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicated key {k:?}")));
                    }
                    let v = map.next_value()?;
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

impl Policy {
    /// The built-in policy when none is given: accept anything (see README).
    pub fn accept_anything() -> Self {
        Policy { default: vec![Requirement::InsecureAcceptAnything {}], transports: BTreeMap::new() }
    }

    /// Parses and validates a policy; `origin` names it in errors (a path or URI).
    pub fn from_json(origin: &str, bytes: &[u8]) -> Result<Self, PolicyError> {
        if bytes.len() > POLICY_LIMIT {
            return Err(PolicyError::TooLarge { origin: origin.to_owned(), size: bytes.len() });
        }
        let invalid = |reason: String| PolicyError::Invalid { origin: origin.to_owned(), reason };
        let raw: RawPolicy = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let default = raw.default.ok_or_else(|| invalid("the \"default\" requirement list is required".into()))?;
        check_list("default", &default).map_err(invalid)?;
        let mut transports = BTreeMap::new();
        for (transport, scopes) in raw.transports.0 {
            if !KNOWN_TRANSPORTS.contains(&transport.as_str()) {
                return Err(invalid(format!("unknown transport {transport:?}")));
            }
            let mut out = BTreeMap::new();
            for (scope, reqs) in scopes.0 {
                if transport == "docker" || transport == "atomic" {
                    validate_docker_scope(&scope).map_err(|e| invalid(format!("transports.{transport}: {e}")))?;
                }
                check_list(&format!("transports.{transport}.{scope:?}"), &reqs).map_err(invalid)?;
                out.insert(scope, reqs);
            }
            transports.insert(transport, out);
        }
        Ok(Policy { default, transports })
    }

    /// The requirements that apply to `image` (a docker reference) and the
    /// scope they came from: the most specific docker scope, then the docker
    /// transport default, then the global default.
    pub fn requirements_for(&self, image: &DockerRef) -> (String, &[Requirement]) {
        if let Some(scopes) = self.transports.get("docker") {
            for candidate in scope_candidates(image) {
                if let Some(reqs) = scopes.get(&candidate) {
                    return (format!("docker scope {candidate:?}"), reqs);
                }
            }
            if let Some(reqs) = scopes.get("") {
                return ("docker transport default".into(), reqs);
            }
        }
        ("global default".into(), &self.default)
    }
}

fn check_list(place: &str, reqs: &[Requirement]) -> Result<(), String> {
    if reqs.is_empty() {
        return Err(format!(
            "{place}: the requirement list is empty (use [{{\"type\":\"reject\"}}] or insecureAcceptAnything)"
        ));
    }
    for (i, r) in reqs.iter().enumerate() {
        r.validate().map_err(|e| format!("{place}[{i}]: {e}"))?;
    }
    Ok(())
}

/// Scopes to look up for an image, most specific first: the full reference,
/// the repository, each parent namespace, the host, then `*.` wildcards of
/// the host's parent domains (port stripped).
pub fn scope_candidates(image: &DockerRef) -> Vec<String> {
    let mut out = vec![image.to_string()];
    let mut name = image.name();
    loop {
        out.push(name.to_owned());
        match name.rfind('/') {
            Some(i) => name = &name[..i],
            None => break,
        }
    }
    let mut host = name.split(':').next().unwrap_or(name);
    while let Some(i) = host.find('.') {
        host = &host[i + 1..];
        out.push(format!("*.{host}"));
    }
    out
}
