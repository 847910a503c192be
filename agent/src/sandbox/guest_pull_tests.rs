use std::path::PathBuf;
use std::sync::Mutex;

use super::*;

/// Records each PullImage and answers as told; on success writes what the
/// data hub writes into a bundle (rootfs/ and config.json).
struct Recorder {
    calls: Mutex<Vec<(String, String)>>,
    answer: Result<String, PullError>,
    config: &'static str,
}

impl Recorder {
    fn ok(config: &'static str) -> Recorder {
        Recorder { calls: Mutex::default(), answer: Ok("sha256:aa".into()), config }
    }
    fn refusing(code: ttrpc::Code, message: &str) -> Recorder {
        Recorder { calls: Mutex::default(), answer: Err(PullError { code, message: message.into() }), config: "" }
    }
}

#[async_trait::async_trait]
impl ImagePuller for Recorder {
    async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<String, PullError> {
        self.calls.lock().unwrap().push((image_url.into(), bundle_path.into()));
        if self.answer.is_ok() {
            std::fs::create_dir_all(Path::new(bundle_path).join("rootfs/bin")).unwrap();
            std::fs::write(Path::new(bundle_path).join("config.json"), self.config).unwrap();
        }
        self.answer.clone()
    }
}

const IMAGE_CONFIG: &str = r#"{"ociVersion":"1.0.2","process":{"args":["/app/run","--serve"],"env":["PATH=/bin","MODE=image"],"cwd":"/data","user":{"uid":1000,"gid":1000}},"root":{"path":"rootfs"}}"#;

fn kata_storage(base: &Path, cid: &str, source: &str, metadata: &str) -> protos::agent::Storage {
    protos::agent::Storage {
        driver: DRIVER.into(),
        driver_options: vec![format!("{DRIVER}={metadata}")],
        source: source.into(),
        fstype: "overlay".into(),
        mount_point: format!("{}/{cid}/rootfs", base.display()),
        ..Default::default()
    }
}

const APP_META: &str =
    r#"{"metadata":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"r/app:1"}}"#;
const SANDBOX_META: &str = r#"{"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn kata_s_driver_options_are_read_and_the_first_entry_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = kata_storage(dir.path(), "c1", "r/app:1", APP_META);
    s.driver_options.insert(0, "unrelated=1".into());
    s.driver_options.push(format!("{DRIVER}={SANDBOX_META}"));
    let m = parse_metadata(&s).unwrap();
    assert_eq!(m.get("io.kubernetes.cri.image-name").map(String::as_str), Some("r/app:1"));
    assert!(!is_sandbox(&m));
    s.driver_options = vec![format!("{DRIVER}={{}}")];
    assert!(parse_metadata(&s).unwrap().is_empty(), "kata's empty ImagePullVolume");
    s.driver_options = vec![format!("{DRIVER}={{\"metadata\":{{}},\"future\":1}}")];
    assert!(parse_metadata(&s).is_ok(), "unknown keys are ignored as kata's serde does");
}

#[test]
fn hostile_driver_options_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("{{\"metadata\":{{\"a\":\"{}\"}}}}", "x".repeat(OPTION_MAX));
    let many = format!(
        "{{\"metadata\":{{{}}}}}",
        (0..=METADATA_MAX_ENTRIES).map(|i| format!("\"k{i}\":\"v\"")).collect::<Vec<_>>().join(",")
    );
    for (opts, want) in [
        (vec![], "has no image_guest_pull=<json> entry"),
        (vec!["image_guest_pull".to_string()], "has no image_guest_pull=<json> entry"),
        (vec![format!("{DRIVER}=")], "not kata's ImagePullVolume JSON"),
        (vec![format!("{DRIVER}=[1,2]")], "not kata's ImagePullVolume JSON"),
        (vec![format!("{DRIVER}={{\"metadata\":{{\"a\":1}}}}")], "not kata's ImagePullVolume JSON"),
        (vec![format!("{DRIVER}={{\"metadata\":\"sandbox\"}}")], "not kata's ImagePullVolume JSON"),
        (vec![format!("{DRIVER}={{\"metadata\":{{}}}} trailing")], "not kata's ImagePullVolume JSON"),
        (vec![format!("{DRIVER}={big}")], "bytes (at most"),
        (vec![format!("{DRIVER}={many}")], "metadata entries"),
    ] {
        let mut s = kata_storage(dir.path(), "c1", "r/app:1", "{}");
        s.driver_options = opts;
        let e = parse_metadata(&s).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("driver_options") && e.to_string().contains(want), "{want}: {e}");
    }
}

#[test]
fn both_cri_container_type_keys_mark_the_sandbox() {
    for key in CONTAINER_TYPE_KEYS {
        assert!(is_sandbox(&HashMap::from([(key.to_string(), "sandbox".to_string())])));
        assert!(!is_sandbox(&HashMap::from([(key.to_string(), "Sandbox".to_string())])));
    }
    assert!(!is_sandbox(&HashMap::from([("container-type".to_string(), "sandbox".to_string())])));
}

#[test]
fn a_container_image_is_pulled_into_kata_s_bundle_and_undone_whole() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("run");
    let puller = Recorder::ok(IMAGE_CONFIG);
    let counters = PullCounters::default();
    let driver =
        GuestPull { base: &base, puller: &puller, pause_bundle: Path::new("/nonexistent"), counters: &counters };
    let (prepared, process) = run(driver.prepare("c1", &kata_storage(&base, "c1", "r/app:1", APP_META))).unwrap();
    let bundle = base.join("c1");
    assert_eq!(*puller.calls.lock().unwrap(), [("r/app:1".to_string(), bundle.display().to_string())]);
    let ImageProcess::Image(p) = process else { panic!("not an image process") };
    assert_eq!((p.args.as_slice(), p.cwd.as_str()), (["/app/run".to_string(), "--serve".into()].as_slice(), "/data"));
    assert_eq!(counters.pulls("ok"), 1);
    assert!(matches!(&prepared, Prepared::GuestPull { bundle: b } if *b == bundle));
    super::super::storage::undo(prepared);
    assert!(!bundle.exists(), "undo left {:?}", std::fs::read_dir(&base).unwrap().collect::<Vec<_>>());
}

#[test]
fn mount_points_other_than_the_container_s_rootfs_are_refused_before_pulling() {
    let dir = tempfile::tempdir().unwrap();
    let puller = Recorder::ok(IMAGE_CONFIG);
    let counters = PullCounters::default();
    let driver = GuestPull { base: dir.path(), puller: &puller, pause_bundle: Path::new("/x"), counters: &counters };
    for mp in ["c2/rootfs", "c1", "c1/rootfs/x", "c1/other", "shared/c1/rootfs"] {
        let mut s = kata_storage(dir.path(), "c1", "r/app:1", APP_META);
        s.mount_point = format!("{}/{mp}", dir.path().display());
        let e = run(driver.prepare("c1", &s)).unwrap_err().to_string();
        assert!(e.contains("mount_point") && e.contains(&s.mount_point), "{mp}: {e}");
    }
    let mut s = kata_storage(dir.path(), "c1", "r/app:1", APP_META);
    s.mount_point = "/etc/c1/rootfs".into();
    assert!(run(driver.prepare("c1", &s)).unwrap_err().to_string().contains("not under the storage base"));
    assert!(puller.calls.lock().unwrap().is_empty());
}

#[test]
fn hostile_sources_are_refused_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let puller = Recorder::ok(IMAGE_CONFIG);
    let counters = PullCounters::default();
    let driver = GuestPull { base: dir.path(), puller: &puller, pause_bundle: Path::new("/x"), counters: &counters };
    let long = "r/".to_string() + &"a".repeat(SOURCE_MAX);
    for src in ["", "r/app:1 --insecure", "r/app\n:1", "r/app\0", long.as_str()] {
        let e = run(driver.prepare("c1", &kata_storage(dir.path(), "c1", src, APP_META))).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument(_)) && e.to_string().contains("source"), "{src:?}: {e}");
    }
    assert!(puller.calls.lock().unwrap().is_empty());
}

#[test]
fn a_refused_pull_keeps_the_hub_s_code_and_message_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let counters = PullCounters::default();
    for (code, want) in [
        (ttrpc::Code::PERMISSION_DENIED, "PermissionDenied"),
        (ttrpc::Code::UNAVAILABLE, "Unavailable"),
        (ttrpc::Code::NOT_FOUND, "NotFound"),
        (ttrpc::Code::DEADLINE_EXCEEDED, "DeadlineExceeded"),
        (ttrpc::Code::DATA_LOSS, "Internal"),
    ] {
        let puller = Recorder::refusing(code, "signature policy: image r/app:1 rejected");
        let driver =
            GuestPull { base: dir.path(), puller: &puller, pause_bundle: Path::new("/x"), counters: &counters };
        let e = run(driver.prepare("c1", &kata_storage(dir.path(), "c1", "r/app:1", APP_META))).unwrap_err();
        assert!(format!("{e:?}").starts_with(want), "{code:?} -> {e:?}");
        let text = e.to_string();
        assert!(text.contains("r/app:1") && text.contains("c1") && text.contains("signature policy"), "{text}");
        assert!(!dir.path().join("c1").exists());
    }
    assert_eq!(counters.pulls("permission_denied"), 1);
    assert_eq!(counters.pulls("internal"), 1);
}

#[test]
fn a_bundle_config_that_is_not_a_runtime_config_fails_and_is_undone() {
    for config in ["not json", "{\"process\":{\"args\":\"/bin/sh\"}}", "{\"root\":{}}"] {
        let dir = tempfile::tempdir().unwrap();
        let puller = Recorder::ok(config);
        let counters = PullCounters::default();
        let driver =
            GuestPull { base: dir.path(), puller: &puller, pause_bundle: Path::new("/x"), counters: &counters };
        let e = run(driver.prepare("c1", &kata_storage(dir.path(), "c1", "r/app:1", APP_META))).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{config}: {e}");
        assert!(!dir.path().join("c1").exists(), "{config}");
    }
}

fn pause_bundle(dir: &Path, config: &str) -> PathBuf {
    let b = dir.join("pause_bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), config).unwrap();
    std::fs::write(b.join("rootfs/pause"), b"\x7fELF pause").unwrap();
    b
}

#[test]
fn the_sandbox_container_gets_the_pause_bundle_not_a_pull() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bundle = pause_bundle(
        dir.path(),
        r#"{"process":{"args":["/pause"],"env":["PATH=/"],"cwd":"/","user":{"uid":65535,"gid":65535}}}"#,
    );
    let base = dir.path().join("run");
    let puller = Recorder::ok(IMAGE_CONFIG);
    let counters = PullCounters::default();
    let driver = GuestPull { base: &base, puller: &puller, pause_bundle: &bundle, counters: &counters };
    let (prepared, process) = run(driver.prepare("sb", &kata_storage(&base, "sb", "pause", SANDBOX_META))).unwrap();
    assert!(puller.calls.lock().unwrap().is_empty());
    let copied = base.join("sb/rootfs/pause");
    assert_eq!(std::fs::read(&copied).unwrap(), b"\x7fELF pause");
    assert_eq!(copied.metadata().unwrap().permissions().mode() & 0o777, 0o755);
    let ImageProcess::Pause(p) = &process else { panic!("not the pause process") };
    assert_eq!(p.user.as_ref().map(|u| u.uid), Some(65535));
    // kata replaces the process only when the OCI annotations also say sandbox.
    let mut spec = protos::oci::Spec::default();
    spec.Process.mut_or_insert_default().Args = vec!["/host".into()];
    apply(&mut spec, &process);
    assert_eq!(spec.Process.Args, ["/host"]);
    spec.Annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    apply(&mut spec, &process);
    assert_eq!((spec.Process.Args.as_slice(), spec.Process.User.UID), (["/pause".to_string()].as_slice(), 65535));
    super::super::storage::undo(prepared);
    assert!(!base.join("sb").exists());
}

#[test]
fn a_missing_or_hostile_pause_bundle_is_a_named_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("run");
    let puller = Recorder::ok(IMAGE_CONFIG);
    let counters = PullCounters::default();
    let s = kata_storage(&base, "sb", "pause", SANDBOX_META);
    let missing = dir.path().join("nothing");
    let driver = GuestPull { base: &base, puller: &puller, pause_bundle: &missing, counters: &counters };
    let e = run(driver.prepare("sb", &s)).unwrap_err();
    assert!(matches!(e, RuntimeError::FailedPrecondition(_)) && e.to_string().contains("nothing"), "{e}");
    for (config, want) in [
        (r#"{"process":{"args":["../../etc/shadow"]}}"#, "not a clean absolute path"),
        (r#"{"process":{"args":["/a/../pause"]}}"#, "not a clean absolute path"),
        (r#"{"process":{"args":[]}}"#, "no process.args"),
        (r#"{"process":{"args":["/missing"]}}"#, "missing"),
    ] {
        let b = pause_bundle(&dir.path().join("p"), config);
        let driver = GuestPull { base: &base, puller: &puller, pause_bundle: &b, counters: &counters };
        let e = run(driver.prepare("sb", &s)).unwrap_err().to_string();
        assert!(e.contains(want), "{config}: {e}");
        assert!(!base.join("sb").exists(), "{config}");
    }
}

fn process(args: &[&str], env: &[&str], cwd: &str) -> protos::oci::Process {
    protos::oci::Process {
        Args: args.iter().map(|s| s.to_string()).collect(),
        Env: env.iter().map(|s| s.to_string()).collect(),
        Cwd: cwd.into(),
        ..Default::default()
    }
}

fn image(args: &[&str], env: &[&str], cwd: &str) -> BundleProcess {
    BundleProcess {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|s| s.to_string()).collect(),
        cwd: cwd.into(),
        user: None,
    }
}

#[test]
fn the_image_fills_only_what_the_host_left_empty() {
    let img = image(&["/app/run", "-x"], &["PATH=/img", "MODE=image", "FOO=from-image", "NOEQUALS", "=x"], "/data");
    let mut empty = process(&[], &["MODE=host", "FOOBAR=1"], "/");
    merge(&mut empty, &img);
    assert_eq!(empty.Args, ["/app/run", "-x"]);
    assert_eq!(empty.Cwd, "/data");
    // By exact name: the host's MODE stays; FOO is not hidden by FOOBAR (kata's old substring test would).
    assert_eq!(empty.Env, ["MODE=host", "FOOBAR=1", "PATH=/img", "FOO=from-image"]);
    let mut host = process(&["/bin/sh"], &[], "/work");
    merge(&mut host, &img);
    assert_eq!((host.Args.as_slice(), host.Cwd.as_str()), (["/bin/sh".to_string()].as_slice(), "/work"));
    let mut blank = process(&[], &[], "");
    merge(&mut blank, &image(&[], &["A=1", "A=2"], ""));
    assert_eq!((blank.Args.len(), blank.Cwd.as_str(), blank.Env.as_slice()), (0, "", ["A=1".to_string()].as_slice()));
}

#[test]
fn image_guest_pull_is_refused_in_create_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = kata_storage(dir.path(), "sb", "pause", SANDBOX_META);
    let e = super::super::storage::prepare(dir.path(), &s).unwrap_err().to_string();
    assert!(e.contains("only a CreateContainer"), "{e}");
}
