//! Guards the confidential data hub API (package `api`) against drift from
//! guest-components' protos/confidential-data-hub/api.proto: messages are
//! encoded by hand with the field numbers written down from that file, decoded
//! with our generated types and re-encoded byte for byte; service and method
//! names (the ttrpc paths a kata agent calls) are read from the descriptor.

use protobuf::Message;
use protos::cdh::{
    GetResourceRequest, GetResourceResponse, ImagePullRequest, ImagePullResponse, SecureMountRequest,
    UnsealSecretInput, UnsealSecretOutput,
};

/// Length-delimited protobuf fields, by hand.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn varint(mut self, mut v: u64) -> Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn bytes(self, field: u32, b: &[u8]) -> Self {
        let mut s = self.varint(u64::from(field) << 3 | 2).varint(b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }
    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
}

fn decode<M: Message>(raw: &Raw) -> M {
    let m = M::parse_from_bytes(&raw.0).expect("hand-encoded message must decode");
    assert_eq!(m.write_to_bytes().unwrap(), raw.0, "{}: re-encoding differs (unknown or misnumbered field)", M::NAME);
    m
}

#[test]
fn image_pull_messages_keep_guest_components_numbers() {
    // ImagePullRequest: image_url=1 bundle_path=2
    let req: ImagePullRequest = decode(&Raw::default().string(1, "reg.example/app:1").string(2, "/run/b"));
    assert_eq!((req.image_url.as_str(), req.bundle_path.as_str()), ("reg.example/app:1", "/run/b"));
    // ImagePullResponse: manifest_digest=1
    let resp: ImagePullResponse = decode(&Raw::default().string(1, "sha256:00"));
    assert_eq!(resp.manifest_digest, "sha256:00");
}

#[test]
fn resource_and_secret_messages_keep_guest_components_numbers() {
    // GetResourceRequest: ResourcePath=1 ; GetResourceResponse: Resource=1
    let req: GetResourceRequest = decode(&Raw::default().string(1, "kbs:///default/key/1"));
    assert_eq!(req.ResourcePath, "kbs:///default/key/1");
    let resp: GetResourceResponse = decode(&Raw::default().bytes(1, b"\x00\x01"));
    assert_eq!(resp.Resource, b"\x00\x01");
    // UnsealSecretInput: secret=1 ; UnsealSecretOutput: plaintext=1
    let input: UnsealSecretInput = decode(&Raw::default().bytes(1, b"sealed.a.b.c"));
    assert_eq!(input.secret, b"sealed.a.b.c");
    let out: UnsealSecretOutput = decode(&Raw::default().bytes(1, b"plain"));
    assert_eq!(out.plaintext, b"plain");
}

#[test]
fn secure_mount_request_keeps_guest_components_numbers() {
    // SecureMountRequest: volume_type=1 options=2 (map entry key=1 value=2) flags=3 mount_point=4
    let entry = Raw::default().string(1, "deviceId").string(2, "/dev/vdb");
    let raw = Raw::default().string(1, "BlockDevice").bytes(2, &entry.0).string(3, "ro").string(4, "/mnt/secure");
    let req = SecureMountRequest::parse_from_bytes(&raw.0).unwrap();
    assert_eq!(req.volume_type, "BlockDevice");
    assert_eq!(req.options.get("deviceId").map(String::as_str), Some("/dev/vdb"));
    assert_eq!(req.flags, ["ro"]);
    assert_eq!(req.mount_point, "/mnt/secure");
}

#[test]
fn services_and_methods_are_the_ttrpc_paths_kata_calls() {
    let file = protos::cdh::file_descriptor();
    assert_eq!(file.proto().package(), "api");
    let mut paths: Vec<String> = file
        .proto()
        .service
        .iter()
        .flat_map(|s| s.method.iter().map(move |m| format!("/api.{}/{}", s.name(), m.name())))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api.GetResourceService/GetResource",
            "/api.ImagePullService/PullImage",
            "/api.SealedSecretService/UnsealSecret",
            "/api.SecureMountService/SecureMount",
        ]
    );
    for (service, method, input, output) in [
        ("ImagePullService", "PullImage", ".api.ImagePullRequest", ".api.ImagePullResponse"),
        ("GetResourceService", "GetResource", ".api.GetResourceRequest", ".api.GetResourceResponse"),
        ("SealedSecretService", "UnsealSecret", ".api.UnsealSecretInput", ".api.UnsealSecretOutput"),
        ("SecureMountService", "SecureMount", ".api.SecureMountRequest", ".api.SecureMountResponse"),
    ] {
        let s = file.proto().service.iter().find(|s| s.name() == service).unwrap();
        let m = s.method.iter().find(|m| m.name() == method).unwrap();
        assert_eq!((m.input_type(), m.output_type()), (input, output), "{service}/{method}");
    }
}
