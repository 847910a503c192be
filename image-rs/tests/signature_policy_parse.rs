//! containers-policy.json parsing and scope lookup, without a registry: the
//! documentation's examples load, anything unknown or ambiguous refuses the
//! policy, and the most specific scope wins.

use image_rs::signature::{DockerRef, IdentityRule, Policy, Requirement};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/policy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn load(json: &str) -> Result<Policy, String> {
    Policy::from_json("test.json", json.as_bytes()).map_err(|e| e.to_string())
}

fn scope_of(p: &Policy, image: &str) -> (String, Vec<&'static str>) {
    let (scope, reqs) = p.requirements_for(&DockerRef::parse(image).unwrap());
    (scope, reqs.iter().map(Requirement::kind).collect())
}

#[test]
fn documentation_examples_parse() {
    for name in ["locked-down.json", "locked-down-sigstore-fulcio.json", "insecure-accept-anything.json"] {
        let p = Policy::from_json(name, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.default.is_empty());
    }
    let p = Policy::from_json("x", &fixture("locked-down.json")).unwrap();
    let atomic = &p.transports["atomic"];
    assert_eq!(atomic["hostname:5000/vendor/product"].len(), 2);
    match &atomic["private-mirror:5000/vendor-mirror"][0] {
        Requirement::SignedBy { signed_identity: Some(IdentityRule::RemapIdentity { signed_prefix, .. }), .. } => {
            assert_eq!(signed_prefix, "vendor.example.com")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn most_specific_docker_scope_wins() {
    let p = Policy::from_json("x", &fixture("locked-down.json")).unwrap();
    assert_eq!(scope_of(&p, "busybox:latest").1, ["insecureAcceptAnything"]);
    assert_eq!(scope_of(&p, "docker.io/library/busybox:latest").0, "docker scope \"docker.io/library/busybox\"");
    assert_eq!(scope_of(&p, "docker.io/openshift/origin:v3").0, "docker scope \"docker.io/openshift\"");
    assert_eq!(
        scope_of(&p, "a.b.temporary-project.example.com/x:1").0,
        "docker scope \"*.temporary-project.example.com\""
    );
    assert_eq!(scope_of(&p, "temporary-project.example.com/x:1").1, ["reject"], "the wildcard needs a subdomain");
    assert_eq!(scope_of(&p, "docker.io/library/alpine:3").0, "global default");
    assert_eq!(scope_of(&p, "hostname:5000/myns/sigstore-signed-with-full-references:1").1, ["sigstoreSigned"]);

    let p = load(
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "":[{"type":"insecureAcceptAnything"}],
            "reg.example:5000":[{"type":"reject"}],
            "reg.example:5000/ns":[{"type":"insecureAcceptAnything"}],
            "reg.example:5000/ns/app":[{"type":"reject"}],
            "reg.example:5000/ns/app:good":[{"type":"insecureAcceptAnything"}],
            "*.example":[{"type":"reject"}]}}}"#,
    )
    .unwrap();
    assert_eq!(scope_of(&p, "reg.example:5000/ns/app:good").0, "docker scope \"reg.example:5000/ns/app:good\"");
    assert_eq!(scope_of(&p, "reg.example:5000/ns/app:bad").0, "docker scope \"reg.example:5000/ns/app\"");
    assert_eq!(scope_of(&p, "reg.example:5000/ns/other:1").0, "docker scope \"reg.example:5000/ns\"");
    assert_eq!(scope_of(&p, "reg.example:5000/top:1").0, "docker scope \"reg.example:5000\"");
    assert_eq!(scope_of(&p, "other.example/x:1").0, "docker scope \"*.example\"", "port stripped, wildcard matched");
    assert_eq!(scope_of(&p, "quay.io/x:1").0, "docker transport default");
    let d = format!("sha256:{}", "3".repeat(64));
    assert_eq!(scope_of(&p, &format!("reg.example:5000/ns/app@{d}")).0, "docker scope \"reg.example:5000/ns/app\"");
}

#[test]
fn refuses_unknown_or_ambiguous_policies_with_a_clear_message() {
    let cases = [
        (r#"{}"#, "\"default\" requirement list is required"),
        (r#"{"default":[]}"#, "requirement list is empty"),
        (r#"{"default":[{"type":"acceptEverything"}]}"#, "unknown variant `acceptEverything`"),
        (r#"{"default":[{"type":"reject","extra":1}]}"#, "unknown field `extra`"),
        (r#"{"default":[{"type":"reject"}],"defaults":[]}"#, "unknown field `defaults`"),
        (r#"{"default":[{"type":"reject"}],"transports":{"ftp":{}}}"#, "unknown transport \"ftp\""),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#, "one of keyPath, keyPaths, keyData is required"),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/a","keyData":"eA=="}]}"#,
            "only one of keyPath, keyPaths, keyData may be set (found keyPath and keyData)",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"X509Certificates","keyPath":"/a"}]}"#,
            "keyType \"X509Certificates\"",
        ),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":[]}]}"#, "keyPaths is empty"),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/a","signedIdentity":{"type":"matchEverything"}}]}"#,
            "unknown variant `matchEverything`",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/a","signedIdentity":{"type":"exactReference","dockerReference":"h/app"}}]}"#,
            "must carry a tag or a digest",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/a","signedIdentity":{"type":"remapIdentity","prefix":"*.x","signedPrefix":"y"}}]}"#,
            "remapIdentity prefix",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/a","signedIdentity":{"type":"matchExact","extra":1}}]}"#,
            "unknown field `extra`",
        ),
        (r#"{"default":[{"type":"sigstoreSigned"}]}"#, "sigstoreSigned: one of keyPath"),
        (r#"{"default":[{"type":"sigstoreSigned","keyPath":"/a","fulcio":{}}]}"#, "only one of"),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"a*b.example":[{"type":"reject"}]}}}"#, "wildcards"),
        (
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"h":[{"type":"reject"}],"h":[{"type":"reject"}]}}}"#,
            "duplicated key \"h\"",
        ),
        (r#"{"default":[{"type":"reject"}],"default":[{"type":"reject"}]}"#, "duplicate field `default`"),
        ("{\"default\":[{\"type\":\"reject\"}]", "EOF"),
        ("\u{0}\u{1}garbage", "expected value"),
        ("null", "invalid type"),
    ];
    for (json, want) in cases {
        let err = load(json).expect_err(json);
        assert!(err.contains(want), "{json}\n  error: {err}\n  wanted: {want}");
        assert!(err.starts_with("policy test.json is invalid"), "{err}");
    }
    let huge = format!(r#"{{"default":[{{"type":"reject"}}],"x":"{}"}}"#, "a".repeat(2 << 20));
    assert!(load(&huge).unwrap_err().contains("too large"));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(load(&deep).is_err(), "deep nesting is an error, not a stack overflow");
}

#[test]
fn every_identity_form_parses() {
    let p = load(
        r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"eA==","signedIdentity":{"type":"matchExact"}},
        {"type":"signedBy","keyType":"GPGKeys","keyPaths":["/a","/b"],"signedIdentity":{"type":"matchRepoDigestOrExact"}},
        {"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/gpg/1","signedIdentity":{"type":"matchRepository"}},
        {"type":"sigstoreSigned","keyData":"eA==","signedIdentity":{"type":"exactReference","dockerReference":"h/app:1"}},
        {"type":"sigstoreSigned","keyPaths":["/a"],"signedIdentity":{"type":"exactRepository","dockerRepository":"h/app"}},
        {"type":"sigstoreSigned","keyPath":"/a","signedIdentity":{"type":"remapIdentity","prefix":"m:5000/v","signedPrefix":"vendor.example"}}]}"#,
    )
    .unwrap();
    assert_eq!(p.default.len(), 6);
}
