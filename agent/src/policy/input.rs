//! The policy input of a request, in the JSON shape kata's agent gives its
//! policy: the whole message with every field present at its default, proto
//! field names verbatim, enums as integers, unset messages as `null` (the
//! serde shape `protos` derives). Policies written for kata (genpolicy) compare
//! fields such as `sandbox_pidns` and `storages[].shared` and need them there.
//!
//! CopyFile is the one exception, as in kata: the policy sees a converted view
//! (`file_type`, `symlink_target`) and never the file data.

use protobuf::MessageFull;
use serde::Serialize;

use protos::agent::CopyFileRequest;

/// The request's rule name: its message name, as kata names policy rules
/// (`data.agent_policy.CreateContainerRequest`).
pub fn endpoint<R: MessageFull>() -> String {
    R::descriptor().name().to_owned()
}

/// `S_IFMT` of a CopyFile `file_mode`, named as kata's policy view names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FileType {
    Unknown,
    Regular,
    Directory,
    Symlink,
}

impl FileType {
    pub fn of_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::Regular,
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Unknown,
        }
    }
}

/// What the policy sees of a CopyFileRequest (kata's `PolicyCopyFileRequest`).
#[derive(Debug, Serialize)]
struct CopyFileView<'a> {
    path: &'a str,
    file_type: FileType,
    symlink_target: Option<&'a str>,
    file_size: i64,
    file_mode: u32,
    dir_mode: u32,
    uid: i32,
    gid: i32,
    offset: i64,
}

/// The policy input of `req`. Fails only for a symlink CopyFile whose target
/// is not UTF-8 (kata refuses those too).
pub fn of<R: MessageFull + Serialize>(req: &R) -> Result<serde_json::Value, String> {
    if let Some(copy) = (req as &dyn std::any::Any).downcast_ref::<CopyFileRequest>() {
        return copy_file_view(copy);
    }
    serde_json::to_value(req).map_err(|e| e.to_string())
}

fn copy_file_view(req: &CopyFileRequest) -> Result<serde_json::Value, String> {
    let file_type = FileType::of_mode(req.file_mode);
    let symlink_target = match file_type {
        FileType::Symlink => {
            Some(std::str::from_utf8(&req.data).map_err(|_| "the symlink target is not UTF-8".to_owned())?)
        }
        _ => None,
    };
    let view = CopyFileView {
        path: &req.path,
        file_type,
        symlink_target,
        file_size: req.file_size,
        file_mode: req.file_mode,
        dir_mode: req.dir_mode,
        uid: req.uid,
        gid: req.gid,
        offset: req.offset,
    };
    serde_json::to_value(view).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protos::agent::{CreateContainerRequest, CreateSandboxRequest, Storage};

    #[test]
    fn every_field_is_present_with_kata_names_and_unset_messages_are_null() {
        let req = CreateSandboxRequest {
            storages: vec![Storage { driver: "ephemeral".into(), ..Default::default() }],
            ..Default::default()
        };
        let v = of(&req).unwrap();
        assert_eq!(v["sandbox_pidns"], serde_json::json!(false));
        assert_eq!(v["storages"][0]["shared"], serde_json::json!(false));
        assert_eq!(v["storages"][0]["driver"], "ephemeral");
        assert!(v["storages"][0]["options"].as_array().unwrap().is_empty());
        let c = of(&CreateContainerRequest::default()).unwrap();
        assert!(c["OCI"].is_null(), "unset message must be null: {c}");
        assert_eq!(c["container_id"], "");
        assert_eq!(endpoint::<CreateContainerRequest>(), "CreateContainerRequest");
    }

    #[test]
    fn copy_file_is_seen_as_kata_converts_it_without_its_data() {
        let link = CopyFileRequest {
            path: "/run/kata-containers/shared/containers/c/hosts".into(),
            file_mode: libc::S_IFLNK | 0o777,
            data: b"..data/hosts".to_vec(),
            ..Default::default()
        };
        let v = of(&link).unwrap();
        assert_eq!(v["file_type"], "Symlink");
        assert_eq!(v["symlink_target"], "..data/hosts");
        assert!(v.get("data").is_none());
        let file = CopyFileRequest { file_mode: libc::S_IFREG | 0o644, data: vec![0xff; 8], ..Default::default() };
        let v = of(&file).unwrap();
        assert_eq!(v["file_type"], "Regular");
        assert!(v["symlink_target"].is_null() && v.get("data").is_none());
        assert_eq!(
            of(&CopyFileRequest { file_mode: libc::S_IFSOCK, ..Default::default() }).unwrap()["file_type"],
            "Unknown"
        );
        let bad = CopyFileRequest { file_mode: libc::S_IFLNK, data: vec![0xff, 0xfe], ..Default::default() };
        assert!(of(&bad).unwrap_err().contains("UTF-8"));
    }
}
