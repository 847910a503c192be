//! Guards the kata wire contract against renumbering.
//!
//! Requests are encoded here by hand, with field numbers written down from
//! kata-containers' agent.proto / oci.proto (not taken from our generated
//! code), then decoded with the generated types. A renumbered or retyped field
//! decodes as empty or lands in unknown fields, and the assertions fail.
//! Each case also re-encodes the decoded message and expects the same bytes,
//! so nothing was silently kept as an unknown field.

use protobuf::Message;
use protos::agent::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, ReadStreamRequest, WaitProcessResponse,
};

/// A hand-rolled protobuf writer: tags, varints, length-delimited fields.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn varint(mut self, mut v: u64) -> Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn key(self, field: u32, wire_type: u8) -> Self {
        self.varint(u64::from(field) << 3 | u64::from(wire_type))
    }
    fn uint(self, field: u32, v: u64) -> Self {
        self.key(field, 0).varint(v)
    }
    fn boolean(self, field: u32, v: bool) -> Self {
        self.uint(field, u64::from(v))
    }
    fn int32(self, field: u32, v: i32) -> Self {
        // proto int32: negative values are sign-extended to 64 bits.
        self.uint(field, i64::from(v) as u64)
    }
    fn bytes(self, field: u32, b: &[u8]) -> Self {
        let mut s = self.key(field, 2).varint(b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }
    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u32, m: Raw) -> Self {
        self.bytes(field, &m.0)
    }
    fn packed(self, field: u32, values: &[u64]) -> Self {
        let body = values.iter().fold(Raw::default(), |r, v| r.varint(*v));
        self.bytes(field, &body.0)
    }
}

fn decode<M: Message>(raw: &Raw) -> M {
    let m = M::parse_from_bytes(&raw.0).expect("hand-encoded message must decode");
    assert_eq!(m.write_to_bytes().unwrap(), raw.0, "{}: re-encoding differs (unknown or misnumbered field)", M::NAME);
    m
}

#[test]
fn create_container_request_with_nested_oci_spec() {
    // oci.User: UID=1 GID=2 AdditionalGids=3 (packed) Username=4
    let user = Raw::default().uint(1, 1000).uint(2, 1001).packed(3, &[10, 20]).string(4, "app");
    // oci.Process: Terminal=1 User=3 Args=4 Env=5 Cwd=6 NoNewPrivileges=9 OOMScoreAdj=11
    let process = Raw::default()
        .boolean(1, true)
        .msg(3, user)
        .string(4, "/bin/sh")
        .string(4, "-c")
        .string(4, "echo hi")
        .string(5, "PATH=/bin")
        .string(6, "/work")
        .boolean(9, true)
        .uint(11, (-500i64) as u64);
    // oci.Root: Path=1 Readonly=2
    let root = Raw::default().string(1, "/run/kata-containers/c1/rootfs").boolean(2, true);
    // oci.Mount: destination=1 source=2 type=3 options=4
    let mount =
        Raw::default().string(1, "/proc").string(2, "proc").string(3, "proc").string(4, "nosuid").string(4, "noexec");
    // oci.LinuxNamespace: Type=1 Path=2 ; oci.Linux: Namespaces=6
    let ns_pid = Raw::default().string(1, "pid");
    let ns_net = Raw::default().string(1, "network").string(2, "/var/run/netns/cni-1");
    let linux = Raw::default().msg(6, ns_pid).msg(6, ns_net);
    // map<string,string> Annotations = 7: entries with key=1 value=2
    let annotation = Raw::default().string(1, "io.kubernetes.cri.container-type").string(2, "container");
    // oci.Spec: Version=1 Process=2 Root=3 Hostname=4 Mounts=5 Annotations=7 Linux=8
    let spec = Raw::default()
        .string(1, "1.0.2")
        .msg(2, process)
        .msg(3, root)
        .string(4, "pod-host")
        .msg(5, mount)
        .msg(7, annotation)
        .msg(8, linux);
    // agent.Storage: driver=1 driver_options=2 source=3 fstype=4 options=5 mount_point=6
    let storage = Raw::default()
        .string(1, "image_guest_pull")
        .string(2, "image_guest_pull={}")
        .string(3, "registry.example/app:1")
        .string(4, "overlay")
        .string(5, "ro")
        .string(6, "/run/kata-containers/c1/rootfs");
    // agent.CreateContainerRequest: container_id=1 exec_id=2 storages=5 OCI=6
    // sandbox_pidns=7 stdin_port=9 stdout_port=10 stderr_port=11
    let raw = Raw::default()
        .string(1, "c1")
        .string(2, "e1")
        .msg(5, storage)
        .msg(6, spec)
        .boolean(7, true)
        .uint(9, 1025)
        .uint(10, 1026)
        .uint(11, 1027);

    let req: CreateContainerRequest = decode(&raw);
    assert_eq!((req.container_id.as_str(), req.exec_id.as_str()), ("c1", "e1"));
    assert!(req.sandbox_pidns);
    assert_eq!((req.stdin_port, req.stdout_port, req.stderr_port), (1025, 1026, 1027));
    let st = &req.storages[0];
    assert_eq!(st.driver, "image_guest_pull");
    assert_eq!(st.driver_options, ["image_guest_pull={}"]);
    assert_eq!(st.source, "registry.example/app:1");
    assert_eq!(st.fstype, "overlay");
    assert_eq!(st.options, ["ro"]);
    assert_eq!(st.mount_point, "/run/kata-containers/c1/rootfs");

    let spec = req.OCI.as_ref().expect("OCI decoded");
    assert_eq!(spec.Version, "1.0.2");
    assert_eq!(spec.Hostname, "pod-host");
    assert_eq!(spec.Annotations.get("io.kubernetes.cri.container-type").map(String::as_str), Some("container"));
    let p = spec.Process.as_ref().expect("Process decoded");
    assert!(p.Terminal && p.NoNewPrivileges);
    assert_eq!(p.Args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(p.Env, ["PATH=/bin"]);
    assert_eq!(p.Cwd, "/work");
    assert_eq!(p.OOMScoreAdj, -500);
    let u = p.User.as_ref().expect("User decoded");
    assert_eq!((u.UID, u.GID, u.AdditionalGids.as_slice(), u.Username.as_str()), (1000, 1001, &[10, 20][..], "app"));
    let root = spec.Root.as_ref().expect("Root decoded");
    assert_eq!(root.Path, "/run/kata-containers/c1/rootfs");
    assert!(root.Readonly);
    let m = &spec.Mounts[0];
    assert_eq!((m.destination.as_str(), m.source.as_str(), m.type_.as_str()), ("/proc", "proc", "proc"));
    assert_eq!(m.options, ["nosuid", "noexec"]);
    let ns = &spec.Linux.as_ref().expect("Linux decoded").Namespaces;
    assert_eq!((ns[0].Type.as_str(), ns[0].Path.as_str()), ("pid", ""));
    assert_eq!((ns[1].Type.as_str(), ns[1].Path.as_str()), ("network", "/var/run/netns/cni-1"));
}

#[test]
fn exec_process_request() {
    // agent.StringUser: uid=1 gid=2 additionalGids=3
    let string_user = Raw::default().string(1, "1000").string(2, "1000").string(3, "wheel");
    let process = Raw::default().string(4, "/bin/ls").string(6, "/");
    // agent.ExecProcessRequest: container_id=1 exec_id=2 string_user=3 process=4
    // stdin_port=5 stdout_port=6 stderr_port=7
    let raw = Raw::default()
        .string(1, "c1")
        .string(2, "exec-7")
        .msg(3, string_user)
        .msg(4, process)
        .uint(5, 7)
        .uint(6, 8)
        .uint(7, 9);
    let req: ExecProcessRequest = decode(&raw);
    assert_eq!((req.container_id.as_str(), req.exec_id.as_str()), ("c1", "exec-7"));
    let su = req.string_user.as_ref().expect("string_user decoded");
    assert_eq!(
        (su.uid.as_str(), su.gid.as_str(), su.additionalGids.as_slice()),
        ("1000", "1000", &["wheel".to_owned()][..])
    );
    let p = req.process.as_ref().expect("process decoded");
    assert_eq!((p.Args.as_slice(), p.Cwd.as_str()), (&["/bin/ls".to_owned()][..], "/"));
    assert_eq!((req.stdin_port, req.stdout_port, req.stderr_port), (7, 8, 9));
}

#[test]
fn read_stream_request() {
    // agent.ReadStreamRequest: container_id=1 exec_id=2 len=3
    let raw = Raw::default().string(1, "c1").string(2, "e1").uint(3, 65536);
    let req: ReadStreamRequest = decode(&raw);
    assert_eq!((req.container_id.as_str(), req.exec_id.as_str(), req.len), ("c1", "e1", 65536));
}

#[test]
fn wait_process_response_in_both_directions() {
    // agent.WaitProcessResponse: status=1 (int32)
    let raw = Raw::default().int32(1, 137);
    let resp: WaitProcessResponse = decode(&raw);
    assert_eq!(resp.status, 137);
    let mut ours = WaitProcessResponse::new();
    ours.status = 3;
    assert_eq!(ours.write_to_bytes().unwrap(), [0x08, 0x03]);
    // A negative status is a sign-extended 10-byte varint on the wire.
    let neg: WaitProcessResponse = decode(&Raw::default().int32(1, -1));
    assert_eq!(neg.status, -1);
}

#[test]
fn create_sandbox_request() {
    // agent.KernelModule: name=1 parameters=2
    let module = Raw::default().string(1, "vsock").string(2, "a=1");
    let storage = Raw::default().string(1, "ephemeral").string(3, "shm").string(4, "tmpfs").string(6, "/dev/shm");
    // agent.CreateSandboxRequest: hostname=1 dns=2 storages=3 sandbox_pidns=4
    // sandbox_id=5 guest_hook_path=6 kernel_modules=7
    let raw = Raw::default()
        .string(1, "pod-a")
        .string(2, "nameserver 10.0.0.10")
        .string(2, "search svc.cluster.local")
        .msg(3, storage)
        .boolean(4, true)
        .string(5, "sandbox-1234")
        .string(6, "/usr/share/oci/hooks")
        .msg(7, module);
    let req: CreateSandboxRequest = decode(&raw);
    assert_eq!(req.hostname, "pod-a");
    assert_eq!(req.dns, ["nameserver 10.0.0.10", "search svc.cluster.local"]);
    assert_eq!(
        (req.storages[0].driver.as_str(), req.storages[0].fstype.as_str(), req.storages[0].mount_point.as_str()),
        ("ephemeral", "tmpfs", "/dev/shm")
    );
    assert!(req.sandbox_pidns);
    assert_eq!(req.sandbox_id, "sandbox-1234");
    assert_eq!(req.guest_hook_path, "/usr/share/oci/hooks");
    assert_eq!(
        (req.kernel_modules[0].name.as_str(), req.kernel_modules[0].parameters.as_slice()),
        ("vsock", &["a=1".to_owned()][..])
    );
}

#[test]
fn packages_and_type_names_match_kata() {
    use protobuf::MessageFull;
    assert_eq!(CreateContainerRequest::descriptor().full_name(), "grpc.CreateContainerRequest");
    assert_eq!(protos::oci::Spec::descriptor().full_name(), "grpc.Spec");
    assert_eq!(protos::types::Interface::descriptor().full_name(), "types.Interface");
    assert_eq!(protos::health::CheckRequest::descriptor().full_name(), "grpc.CheckRequest");
    assert_eq!(protos::empty::Empty::descriptor().full_name(), "google.protobuf.Empty");
}

/// guest-components' attestation-agent.proto (package attestation_agent):
/// message, enum and field names and numbers, and the service's method names.
#[test]
fn attestation_agent_matches_guest_components() {
    use protobuf::{Enum, EnumFull, MessageFull};
    use protos::attestation_agent::*;

    // GetEvidenceRequest / GetAdditionalEvidenceRequest: RuntimeData=1; GetEvidenceResponse: Evidence=1
    let req: GetEvidenceRequest = decode(&Raw::default().bytes(1, b"rd"));
    assert_eq!(req.RuntimeData, b"rd");
    let req: GetAdditionalEvidenceRequest = decode(&Raw::default().bytes(1, b"device-nonce"));
    assert_eq!(req.RuntimeData, b"device-nonce");
    let resp: GetEvidenceResponse = decode(&Raw::default().bytes(1, b"{}"));
    assert_eq!(resp.Evidence, b"{}");
    // GetTokenRequest: TokenType=1; GetTokenResponse: Token=1
    let req: GetTokenRequest = decode(&Raw::default().string(1, "kbs"));
    assert_eq!(req.TokenType, "kbs");
    let resp: GetTokenResponse = decode(&Raw::default().bytes(1, b"a.b.c"));
    assert_eq!(resp.Token, b"a.b.c");
    // ExtendRuntimeMeasurementRequest: Domain=1 Operation=2 Content=3 RegisterIndex=4 (optional uint64)
    let req: ExtendRuntimeMeasurementRequest = decode(
        &Raw::default()
            .string(1, "github.com/confidential-containers")
            .string(2, "PullImage")
            .string(3, "x")
            .uint(4, 17),
    );
    assert_eq!(
        (req.Domain.as_str(), req.Operation.as_str(), req.Content.as_str(), req.RegisterIndex),
        ("github.com/confidential-containers", "PullImage", "x", Some(17))
    );
    // An explicit RegisterIndex 0 is kept (proto3 optional), not read as "unset".
    let req: ExtendRuntimeMeasurementRequest = decode(&Raw::default().uint(4, 0));
    assert_eq!(req.RegisterIndex, Some(0));
    // ExtendRuntimeMeasurementResponse: Result=1, enum RuntimeMeasurementResult {OK=0, NOT_SUPPORTED=1, NOT_ENABLED=2}
    for (value, expected) in [(1, RuntimeMeasurementResult::NOT_SUPPORTED), (2, RuntimeMeasurementResult::NOT_ENABLED)]
    {
        let resp: ExtendRuntimeMeasurementResponse = decode(&Raw::default().uint(1, value));
        assert_eq!(resp.Result.enum_value(), Ok(expected));
    }
    assert_eq!(RuntimeMeasurementResult::OK.value(), 0);
    assert!(ExtendRuntimeMeasurementResponse::default().write_to_bytes().unwrap().is_empty(), "OK is the default");
    assert_eq!(RuntimeMeasurementResult::enum_descriptor().full_name(), "attestation_agent.RuntimeMeasurementResult");
    // BindInitDataRequest: Digest=1; BindInitDataResponse: empty
    let req: BindInitDataRequest = decode(&Raw::default().bytes(1, &[0xab; 48]));
    assert_eq!(req.Digest, [0xab; 48]);
    assert!(BindInitDataResponse::default().write_to_bytes().unwrap().is_empty());
    // GetTeeTypeResponse: tee=1; GetAdditionalTeesResponse: additional_tees=1 (repeated string)
    let resp: GetTeeTypeResponse = decode(&Raw::default().string(1, "tdx"));
    assert_eq!(resp.tee, "tdx");
    let resp: GetAdditionalTeesResponse = decode(&Raw::default().string(1, "nvidia").string(1, "sample-device"));
    assert_eq!(resp.additional_tees, ["nvidia", "sample-device"]);

    for (descriptor, name) in [
        (GetAdditionalEvidenceRequest::descriptor(), "GetAdditionalEvidenceRequest"),
        (BindInitDataRequest::descriptor(), "BindInitDataRequest"),
        (BindInitDataResponse::descriptor(), "BindInitDataResponse"),
        (GetAdditionalTeesRequest::descriptor(), "GetAdditionalTeesRequest"),
        (GetAdditionalTeesResponse::descriptor(), "GetAdditionalTeesResponse"),
        (ExtendRuntimeMeasurementResponse::descriptor(), "ExtendRuntimeMeasurementResponse"),
    ] {
        assert_eq!(descriptor.full_name(), format!("attestation_agent.{name}"));
    }

    // Method names as ttrpc routes them (/attestation_agent.AttestationAgentService/<Name>).
    struct Unimplemented;
    impl protos::attestation_agent_ttrpc::AttestationAgentService for Unimplemented {}
    let services =
        protos::attestation_agent_ttrpc::create_attestation_agent_service(std::sync::Arc::new(Unimplemented));
    let service = &services["attestation_agent.AttestationAgentService"];
    let mut methods: Vec<&str> = service.methods.keys().map(String::as_str).collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        [
            "BindInitData",
            "ExtendRuntimeMeasurement",
            "GetAdditionalEvidence",
            "GetAdditionalTees",
            "GetEvidence",
            "GetResource",
            "GetTeeType",
            "GetToken",
        ]
    );
}
