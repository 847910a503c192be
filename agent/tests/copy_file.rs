//! CopyFile through the real agent over ttrpc, with the requests kata's Go
//! shim sends (virtcontainers' `kataAgent.copyFile`, walked in
//! `fsShare.ShareFile` order): a kubelet configmap volume, then its update.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Agent;
use protos::agent::CopyFileRequest;
use protos::agent_ttrpc::AgentServiceClient;

/// The shim's chunk size (grpcMaxDataSize).
const CHUNK: usize = 1 << 20;
/// Go's os.ModeDir | 0750 (virtcontainers' DirMode), as the shim sends it.
const GO_DIR_MODE: u32 = 0x8000_0000 | 0o750;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

/// What `kataAgent.copyFile(src, dst)` sends: lstat's mode and owner, the
/// whole file in 1 MiB chunks (one request for an empty file), a symlink's
/// target as data, nothing for a directory.
async fn copy_like_the_shim(client: &AgentServiceClient, src: &Path, dst: &Path) -> ttrpc::Result<usize> {
    let meta = std::fs::symlink_metadata(src).unwrap();
    let mut req = CopyFileRequest {
        path: dst.display().to_string(),
        dir_mode: GO_DIR_MODE,
        file_mode: meta.mode(),
        uid: meta.uid() as i32,
        gid: meta.gid() as i32,
        ..Default::default()
    };
    let data = if meta.file_type().is_symlink() {
        req.data = std::fs::read_link(src).unwrap().into_os_string().into_encoded_bytes();
        Vec::new()
    } else if meta.is_file() {
        std::fs::read(src).unwrap()
    } else {
        Vec::new()
    };
    req.file_size = data.len() as i64;
    if data.is_empty() {
        client.copy_file(ctx(), &req).await?;
        return Ok(1);
    }
    let mut sent = 0;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        req.offset = (i * CHUNK) as i64;
        req.data = chunk.to_vec();
        client.copy_file(ctx(), &req).await?;
        sent += 1;
    }
    Ok(sent)
}

/// `filepath.WalkDir` order: the root, then entries in lexical order.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    if std::fs::symlink_metadata(root).unwrap().is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for n in names {
            out.extend(walk(&n));
        }
    }
    out
}

/// A kubelet AtomicWriter volume: `..<ts>/` with the payload, `..data` ->
/// `..<ts>`, and each key -> `..data/<key>`.
fn kubelet_volume(dir: &Path, ts: &str, payload: &[(&str, &[u8])]) {
    let ts_dir = dir.join(ts);
    std::fs::create_dir_all(&ts_dir).unwrap();
    for (k, v) in payload {
        std::fs::write(ts_dir.join(k), v).unwrap();
        std::fs::set_permissions(ts_dir.join(k), std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = dir.join(k);
        if std::fs::symlink_metadata(&key).is_err() {
            symlink(format!("..data/{k}"), key).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    symlink(ts, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn a_configmap_and_its_update_as_the_go_shim_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("kata");
    let agent = Agent::start_with(dir.path(), |cmd| {
        cmd.arg("--server-addr")
            .arg(format!("unix://{}", dir.path().join("agent.sock").display()))
            .env("CVM_AGENT_STORAGE_BASE", &base);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = AgentServiceClient::new(ttrpc::r#async::Client::connect(&agent.addr()).await.unwrap());
        // Host side: /var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~configmap/cfg
        let src = dir.path().join("host/volumes/kubernetes.io~configmap/cfg");
        std::fs::create_dir_all(&src).unwrap();
        let big: Vec<u8> = (0..(2 * CHUNK + 12345) as u32).map(|i| (i % 253) as u8).collect();
        kubelet_volume(&src, "..2026_12_07_01_00_00.1", &[("app.conf", b"level=info\n"), ("blob", &big)]);

        // Guest side: shared/containers/<cid>-<rand>-cfg, as shareFileName builds it.
        let dst = base.join("shared/containers/c1-0123456789abcdef-cfg");
        let mut requests = 0;
        for p in walk(&src) {
            let rel = p.strip_prefix(&src).unwrap();
            let target = if rel.as_os_str().is_empty() { dst.clone() } else { dst.join(rel) };
            requests += copy_like_the_shim(&client, &p, &target).await.unwrap();
        }
        assert_eq!(requests, 1 + 1 + 1 + 3 + 1 + 1 + 1, "dir, ts dir, app.conf, blob in 3 chunks, ..data, 2 keys");
        assert_eq!(std::fs::read_link(dst.join("..data")).unwrap(), Path::new("..2026_12_07_01_00_00.1"));
        assert_eq!(std::fs::read_link(dst.join("app.conf")).unwrap(), Path::new("..data/app.conf"));
        assert_eq!(std::fs::read(dst.join("app.conf")).unwrap(), b"level=info\n");
        assert_eq!(std::fs::read(dst.join("blob")).unwrap(), big);
        let conf = std::fs::metadata(dst.join("app.conf")).unwrap();
        assert_eq!(conf.permissions().mode() & 0o7777, 0o644);
        let host_owner = std::fs::metadata(src.join("..data/app.conf")).unwrap();
        assert_eq!((conf.uid(), conf.gid()), (host_owner.uid(), host_owner.gid()));
        assert!(std::fs::symlink_metadata(dst.join("..2026_12_07_01_00_00.1")).unwrap().is_dir());

        // The update: a new timestamped directory, its files, then `..data`
        // is replaced (the shim's copyUpdatedFiles).
        let new_ts = "..2026_12_07_02_00_00.2";
        kubelet_volume(&src, new_ts, &[("app.conf", b"level=debug\n"), ("blob", b"small now")]);
        for p in walk(&src.join(new_ts)) {
            copy_like_the_shim(&client, &p, &dst.join(p.strip_prefix(&src).unwrap())).await.unwrap();
        }
        copy_like_the_shim(&client, &src.join("..data"), &dst.join("..data")).await.unwrap();
        assert_eq!(std::fs::read_link(dst.join("..data")).unwrap(), Path::new(new_ts));
        assert_eq!(std::fs::read(dst.join("app.conf")).unwrap(), b"level=debug\n");
        assert_eq!(std::fs::read(dst.join("blob")).unwrap(), b"small now");
        let leftovers: Vec<String> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".cvm-copy"))
            .collect();
        assert!(leftovers.is_empty(), "temporary entries left: {leftovers:?}");

        // A hostile path gets INVALID_ARGUMENT naming the cause, and nothing.
        let evil = CopyFileRequest {
            path: format!("{}/../../../escaped", dst.display()),
            file_mode: libc::S_IFREG | 0o644,
            file_size: 1,
            data: b"x".to_vec(),
            ..Default::default()
        };
        let e = client.copy_file(ctx(), &evil).await.unwrap_err();
        let msg = format!("{e:?}");
        assert!(msg.contains("INVALID_ARGUMENT") && msg.contains("'..'"), "{msg}");
        assert!(!dir.path().join("escaped").exists());
    });
}
