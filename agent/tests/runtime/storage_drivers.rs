//! The `ephemeral` and `local` storages kata's shim sends, through the real
//! agent: the sandbox's shm tmpfs (size, mode, mount flags) gone after
//! DestroySandbox, and a local directory with `mode=` and `fsgid=`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use protos::agent::{CreateSandboxRequest, DestroySandboxRequest, Storage, VolumeStatsRequest};
use protos::csi::volume_usage::Unit;

use crate::harness::{self, prerequisites, Rt};

/// The mountinfo line of the mount at `mp`, if any.
fn mountinfo_line(mp: &Path) -> Option<String> {
    let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mp = mp.to_str().unwrap();
    all.lines().find(|l| l.split(' ').nth(4) == Some(mp)).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kata_shm_ephemeral_storage_is_a_sized_tmpfs_until_destroy_sandbox() {
    if !prerequisites() {
        return;
    }
    let mut rt = Rt::start().await;
    let base = rt.storage_base();
    let shm = base.join("sandbox/shm");
    let local = base.join("shared/containers/sb/rootfs/local/cache");
    let size: u64 = 64 << 20;
    // Exactly what kata_agent.go builds for a sandbox with shm_size.
    let shm_storage = Storage {
        driver: "ephemeral".into(),
        source: "shm".into(),
        fstype: "tmpfs".into(),
        options: ["noexec", "nosuid", "nodev", "mode=1777", &format!("size={size}")].map(String::from).to_vec(),
        mount_point: shm.display().to_string(),
        ..Default::default()
    };
    // handleLocalStorage: localDirOptions plus fsgid for an fsGroup.
    let local_storage = Storage {
        driver: "local".into(),
        source: "local".into(),
        fstype: "local".into(),
        options: vec!["mode=0777".into(), "fsgid=2000".into()],
        mount_point: local.display().to_string(),
        ..Default::default()
    };
    let req = CreateSandboxRequest {
        sandbox_id: "sb".into(),
        storages: vec![shm_storage, local_storage],
        ..Default::default()
    };
    rt.client.create_sandbox(harness::ctx(), &req).await.unwrap();

    let line = mountinfo_line(&shm).unwrap_or_else(|| panic!("{} is not a mount point", shm.display()));
    let (per_mount, fs) = line.split_once(" - ").unwrap();
    let mount_opts = per_mount.split(' ').nth(5).unwrap();
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(mount_opts.split(',').any(|o| o == flag), "{flag} missing: {line}");
    }
    assert!(fs.starts_with("tmpfs shm "), "{line}");
    // SAFETY: statvfs fills the zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(shm.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, size, "tmpfs size");
    assert_eq!(std::fs::metadata(&shm).unwrap().mode() & 0o7777, 0o1777);

    let meta = std::fs::metadata(&local).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o2777, "mode=0777 plus set-gid for fsgid");
    assert_eq!(meta.gid(), 2000);

    // GetVolumeStats on the shm volume: bytes and inodes of that tmpfs.
    std::fs::write(shm.join("seg"), vec![7u8; 1 << 20]).unwrap();
    let stats = rt
        .client
        .get_volume_stats(
            harness::ctx(),
            &VolumeStatsRequest { volume_guest_path: shm.display().to_string(), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(stats.usage[0].unit, Unit::BYTES.into());
    assert_eq!((stats.usage[0].total, stats.usage[0].used), (size, 1 << 20));
    assert_eq!(stats.usage[1].unit, Unit::INODES.into());
    assert_eq!(stats.usage[1].used, 2, "root and seg");
    let outside = VolumeStatsRequest { volume_guest_path: "/proc".into(), ..Default::default() };
    let e = rt.client.get_volume_stats(harness::ctx(), &outside).await.unwrap_err();
    assert!(format!("{e:?}").contains("INVALID_ARGUMENT"), "{e:?}");

    rt.client.destroy_sandbox(harness::ctx(), &DestroySandboxRequest::new()).await.unwrap();
    rt.agent.wait_exit(std::time::Duration::from_secs(20));
    assert!(mountinfo_line(&shm).is_none(), "shm tmpfs still mounted after DestroySandbox");
    assert!(!shm.join("seg").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ephemeral_storages_are_refused_and_nothing_stays_mounted() {
    if !prerequisites() {
        return;
    }
    let rt = Rt::start().await;
    let base = rt.storage_base();
    let outside = rt.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(base.join("sandbox")).unwrap();
    std::os::unix::fs::symlink(&outside, base.join("sandbox/link")).unwrap();
    for (mp, fstype, opts, needle) in [
        (base.join("sandbox/link/shm"), "tmpfs", vec!["size=1m"], "symlink"),
        (base.join("sandbox/shm"), "tmpfs", vec!["size=1m", "huge=always"], "huge=always"),
        (base.join("sandbox/shm"), "ext4", vec![], "ext4"),
        (outside.join("shm"), "tmpfs", vec![], "not under the storage base"),
    ] {
        let req = CreateSandboxRequest {
            sandbox_id: "sb".into(),
            storages: vec![Storage {
                driver: "ephemeral".into(),
                source: "shm".into(),
                fstype: fstype.into(),
                options: opts.into_iter().map(String::from).collect(),
                mount_point: mp.display().to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = format!("{:?}", rt.client.create_sandbox(harness::ctx(), &req).await.unwrap_err());
        assert!(e.contains("INVALID_ARGUMENT") && e.contains(needle), "{}: {e}", mp.display());
        assert!(mountinfo_line(&mp).is_none(), "{} mounted", mp.display());
    }
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "created through the symlink");
}
