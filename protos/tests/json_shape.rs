//! The JSON form of the generated messages is kata's (protocols crate with
//! serde): proto field names, enums as integers, `null` for an absent
//! sub-message, omitted fields defaulted. Agent policies and request bodies
//! written for kata depend on it.

use protos::agent::{CreateContainerRequest, ExecProcessRequest};
use protos::health::{health_check_response::ServingStatus, HealthCheckResponse};
use serde_json::json;

#[test]
fn enums_are_integers() {
    let mut resp = HealthCheckResponse::new();
    resp.set_status(ServingStatus::SERVING);
    assert_eq!(serde_json::to_value(&resp).unwrap(), json!({"status": 1}));
    let back: HealthCheckResponse = serde_json::from_value(json!({"status": 2})).unwrap();
    assert_eq!(back.status(), ServingStatus::NOT_SERVING);
}

#[test]
fn absent_sub_message_is_null_and_fields_keep_proto_names() {
    let mut req = CreateContainerRequest::new();
    req.container_id = "c1".into();
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(v["container_id"], "c1");
    assert_eq!(v["OCI"], serde_json::Value::Null);
    assert_eq!(v["string_user"], serde_json::Value::Null);
    assert!(v.get("special_fields").is_none(), "internal fields must not leak: {v}");
}

#[test]
fn partial_bodies_default_the_rest_and_nest() {
    let req: CreateContainerRequest =
        serde_json::from_value(json!({"container_id": "c1", "OCI": {"Process": {"Args": ["sh"], "User": {"UID": 7}}}}))
            .unwrap();
    let p = req.OCI.Process.as_ref().unwrap();
    assert_eq!(p.Args, ["sh"]);
    assert_eq!(p.User.UID, 7);
    assert!(req.OCI.Root.is_none());
    assert!(req.storages.is_empty());
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let err = serde_json::from_value::<ExecProcessRequest>(json!({"containerid": "c1"})).unwrap_err().to_string();
    assert!(err.contains("containerid"), "{err}");
}

#[test]
fn json_round_trip_preserves_the_message() {
    let req: CreateContainerRequest = serde_json::from_value(json!({
        "container_id": "c1",
        "storages": [{"driver": "local", "source": "/src", "mount_point": "/dst", "fs_group": {"group_id": 5, "group_change_policy": 1}}],
        "OCI": {"Version": "1.0.2", "Annotations": {"a": "b"}, "Linux": {"Seccomp": {"DefaultAction": "SCMP_ACT_ERRNO",
            "Syscalls": [{"Names": ["mkdir"], "Action": "SCMP_ACT_ERRNO", "ErrnoRet": {"Errnoret": 1}}]}}}
    }))
    .unwrap();
    let again: CreateContainerRequest = serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
    assert_eq!(again, req);
    assert_eq!(req.storages[0].fs_group.group_id, 5);
    let sys = &req.OCI.Linux.Seccomp.Syscalls[0];
    assert_eq!(sys.errnoret(), 1);
}
