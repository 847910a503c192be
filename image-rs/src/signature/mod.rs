//! Image signature policy: decides, from the verified manifest and before any
//! layer is fetched, whether an image may be used. Runs on every pull, cache
//! hit or not.
//!
//! - `policy`: containers-policy.json(5), strict loader, scope lookup;
//! - `identity`: `signedIdentity` rules; `reference`: docker references;
//! - `registries_d`: containers-registries.d(5) (lookaside, attachments);
//! - `simple`: OpenPGP simple signing (rpgp); `cosign`: cosign key signatures;
//! - `payload`: the signed JSON both share; `keys`: key files, `kbs:///`
//!   URIs through the [`KeySource`], inline key data.
//!
//! It never accepts an image because something could not be checked: every
//! requirement of the matching scope must pass, and a requirement that cannot
//! be evaluated rejects. Rejections name the scope, the requirement and why.

pub mod cosign;
pub mod identity;
pub mod keys;
pub mod payload;
pub mod policy;
pub mod reference;
pub mod registries_d;
pub mod simple;

use std::path::Path;
use std::sync::Arc;

use oci_spec::distribution::Reference;

use crate::digest::Digest;
use crate::keysource::KeySource;
use crate::registry::{Registry, ResolvedImage};
use payload::{parse_payload, COSIGN_TYPE, SIMPLE_SIGNING_TYPE};
pub use policy::{IdentityRule, Policy, PolicyError, Requirement};
pub use reference::DockerRef;
pub use registries_d::{RegistriesD, RegistriesDError};

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signature policy rejected {image} ({scope}, requirement #{index} {kind}): {reason}")]
    Rejected { image: String, scope: String, index: usize, kind: &'static str, reason: String },
    #[error("cannot load the signature policy {origin}: {reason}")]
    Load { origin: String, reason: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    RegistriesD(#[from] RegistriesDError),
}

/// Why an image was accepted (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub scope: String,
    /// One line per requirement: what satisfied it.
    pub evidence: Vec<String>,
}

/// The signature policy with everything needed to evaluate it.
pub struct ImageVerifier {
    policy: Policy,
    origin: String,
    registries_d: RegistriesD,
    keys: Arc<dyn KeySource>,
    builtin: bool,
}

impl ImageVerifier {
    pub fn new(policy: Policy, origin: &str, registries_d: RegistriesD, keys: Arc<dyn KeySource>) -> Self {
        ImageVerifier { policy, origin: origin.to_owned(), registries_d, keys, builtin: false }
    }

    /// The built-in policy used when none is given: accept anything, with a
    /// warning on every pull (see README: unsigned images must keep working
    /// with the plain `image-pull REF BUNDLE_DIR` contract).
    pub fn builtin_accept_anything(registries_d: RegistriesD, keys: Arc<dyn KeySource>) -> Self {
        ImageVerifier { builtin: true, ..Self::new(Policy::accept_anything(), "(built-in)", registries_d, keys) }
    }

    /// Loads a policy from a file or a `kbs:///` URI, and an optional registries.d directory.
    pub async fn load(
        policy: &str,
        registries_d: Option<&Path>,
        keys: Arc<dyn KeySource>,
    ) -> Result<Self, SignatureError> {
        let bytes = keys::read_named(policy, keys.as_ref())
            .await
            .map_err(|reason| SignatureError::Load { origin: policy.to_owned(), reason })?;
        let parsed = Policy::from_json(policy, &bytes)?;
        let rd = match registries_d {
            Some(dir) => RegistriesD::load_dir(dir)?,
            None => RegistriesD::default(),
        };
        Ok(Self::new(parsed, policy, rd, keys))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Evaluates the policy for `reference` resolved to `resolved`. The
    /// signed digest is the top-level manifest's (the index when the tag
    /// named one), as signers sign what the reference points to.
    pub async fn verify(
        &self,
        registry: &Registry,
        reference: &Reference,
        resolved: &ResolvedImage,
    ) -> Result<Acceptance, SignatureError> {
        let image = DockerRef::from_pull_reference(reference);
        let digest = resolved.index_digest.clone().unwrap_or_else(|| resolved.manifest_digest.clone());
        let (scope, reqs) = self.policy.requirements_for(&image);
        if self.builtin {
            tracing::warn!(image = %image, "no signature policy given (--policy): accepting the image without signature verification");
        }
        let mut eval = Evaluation {
            verifier: self,
            registry,
            resolved,
            image: &image,
            digest: &digest,
            simple: None,
            cosign: None,
        };
        let mut evidence = Vec::with_capacity(reqs.len());
        for (index, req) in reqs.iter().enumerate() {
            match eval.requirement(req).await {
                Ok(e) => evidence.push(format!("{}: {e}", req.kind())),
                Err(reason) => {
                    let err = SignatureError::Rejected {
                        image: image.to_string(),
                        scope: scope.clone(),
                        index,
                        kind: req.kind(),
                        reason,
                    };
                    tracing::warn!(error = %err, policy = %self.origin, "image rejected");
                    return Err(err);
                }
            }
        }
        tracing::info!(image = %image, digest = %digest, scope = %scope, evidence = ?evidence, "signature policy accepted the image");
        Ok(Acceptance { scope, evidence })
    }
}

/// One evaluation: signatures are fetched at most once, when a requirement needs them.
struct Evaluation<'a> {
    verifier: &'a ImageVerifier,
    registry: &'a Registry,
    resolved: &'a ResolvedImage,
    image: &'a DockerRef,
    digest: &'a Digest,
    simple: Option<Vec<(String, Vec<u8>)>>,
    cosign: Option<Vec<cosign::CosignSignature>>,
}

impl Evaluation<'_> {
    async fn requirement(&mut self, req: &Requirement) -> Result<String, String> {
        match req {
            Requirement::InsecureAcceptAnything {} => Ok("accepted without verification".into()),
            Requirement::Reject {} => Err("this scope rejects every image".into()),
            Requirement::SignedBy { key_path, key_paths, key_data, signed_identity, .. } => {
                let paths: Vec<&str> = key_path.iter().chain(key_paths.iter().flatten()).map(String::as_str).collect();
                let blobs =
                    keys::load_all(&paths, &key_data.as_deref().into_iter().collect::<Vec<_>>(), self.keys()).await?;
                let keyring = simple::Keyring::parse(&blobs)?;
                let rule = signed_identity.clone().unwrap_or_default();
                self.load_simple_signatures().await?;
                let sigs = self.simple.as_deref().unwrap_or_default();
                let mut reasons = Vec::new();
                for (origin, bytes) in sigs {
                    let checked = keyring.verify(bytes).and_then(|(payload, fpr)| {
                        let claim = parse_payload(&payload, SIMPLE_SIGNING_TYPE)?;
                        self.check_claim(&rule, &claim)?;
                        Ok(fpr)
                    });
                    match checked {
                        Ok(fpr) => return Ok(format!("{origin} signed by key {fpr}")),
                        Err(e) => reasons.push(format!("{origin}: {e}")),
                    }
                }
                Err(reasons.join("; "))
            }
            Requirement::SigstoreSigned {
                key_path,
                key_paths,
                key_data,
                key_datas,
                fulcio,
                pki,
                signed_identity,
                ..
            } => {
                if fulcio.is_some() || pki.is_some() {
                    return Err("keyless (fulcio/pki) sigstore verification is not supported by this verifier".into());
                }
                if req_has_rekor(req) {
                    return Err("Rekor transparency-log verification is not supported by this verifier".into());
                }
                let paths: Vec<&str> = key_path.iter().chain(key_paths.iter().flatten()).map(String::as_str).collect();
                let datas: Vec<&str> = key_data.iter().chain(key_datas.iter().flatten()).map(String::as_str).collect();
                let keys = cosign::parse_public_keys(&keys::load_all(&paths, &datas, self.keys()).await?)?;
                let rule = signed_identity.clone().unwrap_or_default();
                self.load_cosign_signatures().await?;
                let sigs = self.cosign.as_deref().unwrap_or_default();
                let mut reasons = Vec::new();
                for sig in sigs {
                    let checked = sig.verify(&keys).and_then(|key| {
                        let claim = parse_payload(&sig.payload, COSIGN_TYPE)?;
                        self.check_claim(&rule, &claim)?;
                        Ok(key)
                    });
                    match checked {
                        Ok(key) => return Ok(format!("cosign signature {} verified with {key}", sig.origin)),
                        Err(e) => reasons.push(format!("{}: {e}", sig.origin)),
                    }
                }
                Err(reasons.join("; "))
            }
        }
    }

    fn keys(&self) -> &dyn KeySource {
        self.verifier.keys.as_ref()
    }

    fn check_claim(&self, rule: &IdentityRule, claim: &payload::SignedClaim) -> Result<(), String> {
        if claim.manifest_digest != *self.digest {
            return Err(format!(
                "signature is for manifest {}, not this image's {} (signature made for another image)",
                claim.manifest_digest, self.digest
            ));
        }
        identity::check_identity(rule, self.image, &claim.identity)
    }

    async fn load_simple_signatures(&mut self) -> Result<(), String> {
        if self.simple.is_none() {
            let base = self.verifier.registries_d.lookaside_for(self.image).ok_or_else(|| {
                format!(
                    "no lookaside is configured for {} in registries.d (--registries-d), so its signatures cannot be found",
                    self.image.name()
                )
            })?;
            let store = simple::Lookaside::new()?;
            let found = store
                .fetch_all(|n| registries_d::signature_url(&base, self.image, self.digest, n))
                .await?
                .into_iter()
                .map(|(u, b)| (u.to_string(), b))
                .collect::<Vec<_>>();
            if found.is_empty() {
                let first = registries_d::signature_url(&base, self.image, self.digest, 1)?;
                return Err(format!("image is not signed: no signature at {first}"));
            }
            self.simple = Some(found);
        }
        Ok(())
    }

    async fn load_cosign_signatures(&mut self) -> Result<(), String> {
        if self.cosign.is_none() {
            if self.verifier.registries_d.use_sigstore_attachments(self.image) == Some(false) {
                return Err(format!("use-sigstore-attachments is disabled for {} in registries.d", self.image.name()));
            }
            let found = cosign::fetch_signatures(self.registry, &self.resolved.source, self.digest).await?;
            if found.is_empty() {
                return Err(format!(
                    "image is not signed: no cosign signature ({} in {}/{})",
                    cosign::signature_tag(self.digest),
                    self.resolved.source.registry,
                    self.resolved.source.repository
                ));
            }
            self.cosign = Some(found);
        }
        Ok(())
    }
}

fn req_has_rekor(req: &Requirement) -> bool {
    matches!(
        req,
        Requirement::SigstoreSigned { rekor_public_key_path, rekor_public_key_paths, rekor_public_key_data, rekor_public_key_datas, .. }
            if rekor_public_key_path.is_some() || rekor_public_key_paths.is_some() || rekor_public_key_data.is_some() || rekor_public_key_datas.is_some()
    )
}
