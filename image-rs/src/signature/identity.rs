//! `signedIdentity`: does the identity a signature claims fit the image being
//! pulled? The manifest digest is checked separately (against the bytes we
//! verified); this is only about names, tags and digests in references.

use super::policy::IdentityRule;
use super::reference::{name_has_prefix, DockerRef};

/// Why a signature's claimed identity was not accepted.
pub fn check_identity(rule: &IdentityRule, image: &DockerRef, signed: &DockerRef) -> Result<(), String> {
    let ok = match rule {
        IdentityRule::MatchExact {} => {
            !image.is_name_only() && !signed.is_name_only() && image.to_string() == signed.to_string()
        }
        IdentityRule::MatchRepoDigestOrExact {} => repo_digest_or_exact(image, signed),
        IdentityRule::MatchRepository {} => image.name() == signed.name(),
        IdentityRule::ExactReference { docker_reference } => match DockerRef::parse(docker_reference) {
            Ok(want) => !signed.is_name_only() && signed.to_string() == want.to_string(),
            Err(_) => false,
        },
        IdentityRule::ExactRepository { docker_repository } => match DockerRef::parse(docker_repository) {
            Ok(want) => signed.name() == want.name(),
            Err(_) => false,
        },
        IdentityRule::RemapIdentity { prefix, signed_prefix } => {
            let remapped = if name_has_prefix(image.name(), prefix) {
                let name = format!("{signed_prefix}{}", &image.name()[prefix.len()..]);
                // The remapped name must itself be a valid reference.
                match DockerRef::parse(&name) {
                    Ok(r) if r.name() == name => image.with_name(name),
                    _ => {
                        return Err(format!(
                            "remapping {} with {prefix:?} → {signed_prefix:?} gives an invalid name",
                            image.name()
                        ))
                    }
                }
            } else {
                image.clone()
            };
            repo_digest_or_exact(&remapped, signed)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("signature claims identity {signed}, which {} does not accept for {image}", describe(rule)))
    }
}

/// Tagged image: the claim must be exactly the same reference. Digest image:
/// any claim in the same repository (the digest itself is checked against
/// the manifest).
fn repo_digest_or_exact(image: &DockerRef, signed: &DockerRef) -> bool {
    if signed.is_name_only() {
        return false;
    }
    if image.tag().is_some() {
        image.to_string() == signed.to_string()
    } else if image.digest().is_some() {
        image.name() == signed.name()
    } else {
        false
    }
}

fn describe(rule: &IdentityRule) -> String {
    match rule {
        IdentityRule::MatchExact {} => "signedIdentity matchExact".into(),
        IdentityRule::MatchRepoDigestOrExact {} => "signedIdentity matchRepoDigestOrExact".into(),
        IdentityRule::MatchRepository {} => "signedIdentity matchRepository".into(),
        IdentityRule::ExactReference { docker_reference } => {
            format!("signedIdentity exactReference {docker_reference:?}")
        }
        IdentityRule::ExactRepository { docker_repository } => {
            format!("signedIdentity exactRepository {docker_repository:?}")
        }
        IdentityRule::RemapIdentity { prefix, signed_prefix } => {
            format!("signedIdentity remapIdentity {prefix:?} → {signed_prefix:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> DockerRef {
        DockerRef::parse(s).unwrap()
    }
    fn ok(rule: &IdentityRule, image: &str, signed: &str) -> bool {
        check_identity(rule, &r(image), &r(signed)).is_ok()
    }
    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn match_exact_needs_the_same_tag_or_digest() {
        let rule = IdentityRule::MatchExact {};
        assert!(ok(&rule, "h/ns/app:1", "h/ns/app:1"));
        assert!(!ok(&rule, "h/ns/app:1", "h/ns/app:2"));
        assert!(!ok(&rule, "h/ns/app:1", "h/ns/app"));
        assert!(!ok(&rule, &format!("h/ns/app@{D}"), "h/ns/app:1"));
        assert!(ok(&rule, &format!("h/ns/app@{D}"), &format!("h/ns/app@{D}")));
    }

    #[test]
    fn match_repo_digest_or_exact_is_exact_for_tags_and_repository_for_digests() {
        let rule = IdentityRule::MatchRepoDigestOrExact {};
        assert!(ok(&rule, "h/app:1", "h/app:1"));
        assert!(!ok(&rule, "h/app:1", "h/app:2"));
        assert!(!ok(&rule, "h/app:1", "h/app"), "a repository-only claim does not sign a tag");
        assert!(ok(&rule, &format!("h/app@{D}"), "h/app:any"));
        assert!(!ok(&rule, &format!("h/app@{D}"), "h/other:any"));
        assert!(!ok(&rule, "busybox:latest", "docker.io/library/busybox:1"));
        assert!(!ok(&rule, "busybox", "docker.io/library/busybox:latest"), "a name-only image identity never matches");
    }

    #[test]
    fn match_repository_ignores_tags() {
        let rule = IdentityRule::MatchRepository {};
        assert!(ok(&rule, "h/app:latest", "h/app:1.2"));
        assert!(ok(&rule, "h/app:latest", "h/app"));
        assert!(!ok(&rule, "h/app:latest", "h/app2:latest"));
        assert!(!ok(&rule, "h/app:latest", "other/app:latest"));
    }

    #[test]
    fn exact_reference_and_exact_repository_ignore_the_image_name() {
        let rule = IdentityRule::ExactReference { docker_reference: "vendor.example/app:2".into() };
        assert!(ok(&rule, "mirror:5000/app:x", "vendor.example/app:2"));
        assert!(!ok(&rule, "mirror:5000/app:x", "vendor.example/app:3"));
        assert!(!ok(&rule, "mirror:5000/app:x", "vendor.example/app"));
        let rule = IdentityRule::ExactRepository { docker_repository: "vendor.example/app".into() };
        assert!(ok(&rule, "mirror:5000/app:x", "vendor.example/app:2"));
        assert!(ok(&rule, "mirror:5000/app:x", "vendor.example/app"));
        assert!(!ok(&rule, "mirror:5000/app:x", "vendor.example/other:2"));
        let rule = IdentityRule::ExactRepository { docker_repository: "busybox".into() };
        assert!(ok(&rule, "x/y:1", "docker.io/library/busybox:1"), "normalized");
    }

    #[test]
    fn remap_identity_rewrites_the_prefix_then_matches_repo_digest_or_exact() {
        let rule = IdentityRule::RemapIdentity {
            prefix: "private-mirror:5000/vendor-mirror".into(),
            signed_prefix: "vendor.example.com".into(),
        };
        assert!(ok(
            &rule,
            "private-mirror:5000/vendor-mirror/producta/image1:latest",
            "vendor.example.com/producta/image1:latest"
        ));
        assert!(!ok(
            &rule,
            "private-mirror:5000/vendor-mirror/producta/image1:latest",
            "vendor.example.com/producta/image1:v2"
        ));
        assert!(ok(&rule, &format!("private-mirror:5000/vendor-mirror/p/i@{D}"), "vendor.example.com/p/i:any"));
        // Outside the prefix: no remapping, plain matchRepoDigestOrExact.
        assert!(ok(&rule, "other:5000/p/i:1", "other:5000/p/i:1"));
        assert!(!ok(&rule, "private-mirror:5000/vendor-mirrorx/p:1", "vendor.example.comx/p:1"));
        let err =
            check_identity(&rule, &r("private-mirror:5000/vendor-mirror/a:1"), &r("evil.example/a:1")).unwrap_err();
        assert!(err.contains("evil.example/a:1") && err.contains("remapIdentity"), "{err}");
    }
}
