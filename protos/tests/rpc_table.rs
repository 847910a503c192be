//! The RPC table (`with_agent_rpcs!` / `with_health_rpcs!`) and the generated
//! services must describe the same methods, in kata's order, with the same
//! request and response types.

use protobuf::MessageFull;

/// grpc.AgentService methods in kata's order, written down from kata's agent.proto.
const KATA_AGENT_METHODS: [&str; 42] = [
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "GetDiagnosticData",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "MemAgentMemcgSet",
    "MemAgentCompactSet",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "AddSwapPath",
    "GetVolumeStats",
    "ResizeVolume",
    "SetPolicy",
];

/// (method, request full name, response full name) from a descriptor.
fn described(file: protobuf::reflect::FileDescriptor, service: &str) -> Vec<(String, String, String)> {
    let svc = file.services().find(|s| s.proto().name() == service).unwrap_or_else(|| panic!("no service {service}"));
    svc.methods()
        .map(|m| {
            (m.proto().name().to_owned(), m.input_type().full_name().to_owned(), m.output_type().full_name().to_owned())
        })
        .collect()
}

macro_rules! tabled {
    ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
        vec![$((
            stringify!($name).to_owned(),
            <$req as MessageFull>::descriptor().full_name().to_owned(),
            <$resp as MessageFull>::descriptor().full_name().to_owned(),
        )),*]
    };
}

#[test]
fn agent_table_matches_descriptor_and_kata_order() {
    let from_descriptor = described(protos::agent::file_descriptor().clone(), "AgentService");
    let from_table: Vec<_> = protos::with_agent_rpcs!(tabled);
    assert_eq!(from_table, from_descriptor);
    let names: Vec<_> = from_descriptor.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, KATA_AGENT_METHODS);
    assert_eq!(protos::agent::file_descriptor().package(), "grpc");
}

#[test]
fn health_table_matches_descriptor() {
    let from_descriptor = described(protos::health::file_descriptor().clone(), "Health");
    let from_table: Vec<_> = protos::with_health_rpcs!(tabled);
    assert_eq!(from_table, from_descriptor);
    assert_eq!(
        from_descriptor,
        [
            ("Check".into(), "grpc.CheckRequest".into(), "grpc.HealthCheckResponse".into()),
            ("Version".into(), "grpc.CheckRequest".into(), "grpc.VersionCheckResponse".into()),
        ]
    );
}
