//! Fuzz target bodies (the `fuzz/` crate's targets call these; the unit test
//! below replays every committed input under `fuzz/regressions/<target>/`).
//! Thin wrappers over the agent's own parsers and planners: nothing here is
//! used by the agent, and nothing here may make a real syscall that changes
//! the host (mounts go to a recording fake of `mount::Kernel`).

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use protobuf::Message;

use crate::mount::kernel::Kernel;
use crate::policy::{AgentPolicy, PolicyEngine, PolicyOrigin};

const CONFIDENTIAL_POLICY: &str = include_str!("../policy/confidential.rego");

/// The confidential policy, loaded once, and the rules it fixes whatever the
/// input (`default X := true|false` and no other rule named X).
struct Policy {
    policy: AgentPolicy,
    fixed: Vec<(String, bool)>,
}

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let engine = PolicyEngine::new(PolicyOrigin::Inline("confidential.rego"), CONFIDENTIAL_POLICY)
            .expect("the confidential policy loads");
        let mut fixed = Vec::new();
        for line in CONFIDENTIAL_POLICY.lines() {
            let Some(rest) = line.strip_prefix("default ") else { continue };
            let Some((name, value)) = rest.split_once(" := ") else { continue };
            let heads = CONFIDENTIAL_POLICY.lines().filter(|l| l.starts_with(&format!("{name} "))).count();
            if heads == 0 && name.ends_with("Request") {
                fixed.push((name.to_owned(), value.trim() == "true"));
            }
        }
        Policy { policy: AgentPolicy::new(engine), fixed }
    })
}

/// Target `agent_request`: a ttrpc frame (10-byte header, then a `Request`)
/// dispatched on its method over every AgentService RPC, decoded, and checked
/// by the confidential policy. The decision is allow, deny or error, never a
/// panic, and rules the policy fixes give their fixed answer.
pub fn agent_request(data: &[u8]) {
    if data.len() < ttrpc::proto::MESSAGE_HEADER_LENGTH {
        return;
    }
    let header = ttrpc::proto::MessageHeader::from(&data[..ttrpc::proto::MESSAGE_HEADER_LENGTH]);
    if header.type_ != ttrpc::proto::MESSAGE_TYPE_REQUEST || header.length as usize > ttrpc::proto::MESSAGE_LENGTH_MAX {
        return;
    }
    let body = &data[ttrpc::proto::MESSAGE_HEADER_LENGTH..];
    let body = &body[..body.len().min(header.length as usize)];
    let Ok(req) = ttrpc::Request::parse_from_bytes(body) else { return };
    if req.service != "grpc.AgentService" {
        return;
    }
    macro_rules! dispatch {
        ($($name:ident $snake:ident $req:path => $resp:path;)*) => {
            match req.method.as_str() {
                $(stringify!($name) => {
                    let Ok(r) = <$req>::parse_from_bytes(&req.payload) else { return };
                    decide::<$req>(stringify!($name), &r);
                })*
                _ => {}
            }
        };
    }
    protos::with_agent_rpcs!(dispatch);
}

fn decide<R: protobuf::MessageFull + serde::Serialize>(method: &'static str, req: &R) {
    let p = policy();
    // The input is what the policy sees; it must always serialize (CopyFile
    // with a non-UTF-8 symlink target is the one documented refusal).
    if let Err(e) = crate::policy::input::of(req) {
        assert_eq!(crate::policy::input::endpoint::<R>(), "CopyFileRequest", "{method}: input refused: {e}");
    }
    let verdict = p.policy.check(method, req);
    let code = match &verdict {
        Ok(()) => None,
        Err(ttrpc::Error::RpcStatus(s)) => Some(s.code()),
        Err(other) => panic!("{method}: policy answered a non-status error {other:?}"),
    };
    assert!(
        matches!(code, None | Some(ttrpc::Code::PERMISSION_DENIED) | Some(ttrpc::Code::INTERNAL)),
        "{method}: unexpected status {code:?}"
    );
    let rule = crate::policy::input::endpoint::<R>();
    if let Some((_, allowed)) = p.fixed.iter().find(|(name, _)| *name == rule) {
        assert_eq!(verdict.is_ok(), *allowed, "{method}: the policy fixes {rule} to {allowed}");
    }
}

/// Target `flow_frames`: the frame tracker of `flow.rs` reports the same
/// headers and frame ends whether the stream arrives whole or split. The
/// first byte gives the number of cuts, the next bytes their positions.
pub fn flow_frames(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let cuts = usize::from(n % 16);
    if rest.len() < cuts * 2 {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(cuts * 2);
    let mut points: Vec<usize> =
        cut_bytes.chunks(2).map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for p in points {
        chunks.push(&stream[at..p]);
        at = p;
    }
    chunks.push(&stream[at..]);
    let whole = crate::flow::frame_events(&[stream]);
    let split = crate::flow::frame_events(&chunks);
    assert_eq!(
        whole,
        split,
        "split at {chunks_len:?}",
        chunks_len = chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    // Every end follows its own header; headers and ends alternate.
    let (events, at_boundary) = whole;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.0, i % 2 == 1, "event {i} out of order: {events:?}");
        if e.0 {
            assert_eq!((e.1, e.2, e.3), (events[i - 1].1, events[i - 1].2, events[i - 1].3));
        }
    }
    // Bytes accounted for: the stream ends at a boundary exactly when the
    // complete frames cover it.
    let framed: usize = events.iter().filter(|e| e.0).map(|e| 10 + e.1 as usize).sum();
    assert_eq!(at_boundary, framed == stream.len(), "framed {framed} of {} bytes", stream.len());
}

/// A `mount::Kernel` that records the paths it is asked to touch.
#[derive(Default)]
struct RecordingKernel {
    touched: RefCell<Vec<(&'static str, PathBuf)>>,
}

impl Kernel for RecordingKernel {
    fn mount(
        &self,
        _src: Option<&Path>,
        dest: &Path,
        _fstype: Option<&str>,
        _flags: libc::c_ulong,
        _data: Option<&str>,
    ) -> io::Result<()> {
        self.touched.borrow_mut().push(("mount", dest.to_owned()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.touched.borrow_mut().push(("pivot_root", new_root.to_owned()));
        Ok(())
    }
    fn mknod(&self, path: &Path, _mode: libc::mode_t, _dev: libc::dev_t) -> io::Result<()> {
        self.touched.borrow_mut().push(("mknod", path.to_owned()));
        Ok(())
    }
    fn chown(&self, path: &Path, _uid: u32, _gid: u32) -> io::Result<()> {
        self.touched.borrow_mut().push(("chown", path.to_owned()));
        Ok(())
    }
}

/// A scratch directory of this process and thread, emptied for each input.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(
        format!("cvm-fuzz-{name}-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Target `oci_plan`: an OCI spec (protobuf, or kata's JSON when the first
/// byte is odd) through the pure planning code of CreateContainer. Every path
/// the rootfs setup touches lies under the rootfs, and nothing else is
/// created beside it.
pub fn oci_plan(data: &[u8]) {
    let Some((&form, body)) = data.split_first() else { return };
    let spec = if form & 1 == 1 {
        match serde_json::from_slice::<protos::oci::Spec>(body) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        match protos::oci::Spec::parse_from_bytes(body) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    let shared = crate::container::create::SharedNamespaces {
        uts: Some("/proc/1/ns/uts".into()),
        ipc: None,
        pid: (form & 2 == 2).then(|| "/proc/1/ns/pid".into()),
    };
    if let Ok(plan) = crate::container::create::plan_namespaces(&spec, &shared) {
        assert!(plan.iter().filter(|n| n.kind == crate::namespaces::NsKind::Mount).count() == 1);
        assert!(plan.iter().all(|n| n.kind != crate::namespaces::NsKind::Mount || n.path.is_none()));
        for (i, a) in plan.iter().enumerate() {
            assert!(plan[i + 1..].iter().all(|b| b.kind != a.kind), "namespace {:?} planned twice", a.kind);
        }
        if let Some(l) = spec.Linux.as_ref() {
            if crate::container::sysctl::check(l.Sysctl.keys(), &plan).is_ok() {
                for name in l.Sysctl.keys() {
                    let kind = crate::container::sysctl::namespace_of(name).expect("checked");
                    assert!(plan.iter().any(|n| n.kind == kind), "sysctl {name} allowed in a shared namespace");
                }
            }
        }
    }
    if let Some(caps) = spec.Process.as_ref().and_then(|p| p.Capabilities.as_ref()) {
        if let Ok(c) = crate::capabilities::ProcessCaps::from_spec(caps) {
            assert!(c.bounding.0 >> crate::capabilities::NAMES.len() == 0);
        }
        // An exec never gets more than its init.
        if let Ok(Some(b)) = crate::capabilities::bound_exec(Some(caps), Some(&protos::oci::LinuxCapabilities::new())) {
            assert!(b.Bounding.is_empty() && b.Effective.is_empty() && b.Permitted.is_empty());
        }
    }
    if let Some(l) = spec.Linux.as_ref() {
        if let Some(r) = l.Resources.as_ref() {
            if let Ok(rules) = crate::cgroups::devices::parse(&r.Devices) {
                check_device_program(&crate::cgroups::devices::program(&rules));
            }
        }
        if let Some(s) = l.Seccomp.as_ref() {
            let _ = crate::seccomp::compile(s);
        }
    }

    let dir = scratch("oci-plan");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).expect("rootfs");
    let k = RecordingKernel::default();
    let _ = crate::mount::setup_rootfs(&spec, &rootfs, &k);
    let _ = crate::mount::finalize_rootfs(&spec, &rootfs, &k);
    for (i, (op, path)) in k.touched.borrow().iter().enumerate() {
        // The first mount sets the propagation of "/" itself.
        if i == 0 && *op == "mount" && path == Path::new("/") {
            continue;
        }
        assert!(path.starts_with(&rootfs), "{op} of {} outside the rootfs {}", path.display(), rootfs.display());
    }
    let beside: Vec<_> =
        std::fs::read_dir(&dir).expect("scratch").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("rootfs")], "created outside the rootfs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every jump of a device program lands inside it, and it ends with EXIT.
fn check_device_program(p: &[crate::cgroups::devices::Insn]) {
    const EXIT: u8 = 0x95;
    assert_eq!(p.last().map(|i| i.code), Some(EXIT), "program does not end with EXIT");
    for (pc, insn) in p.iter().enumerate() {
        if insn.code & 0x07 == 0x05 && insn.code != EXIT {
            let target = pc as i64 + 1 + i64::from(insn.off);
            assert!((0..p.len() as i64).contains(&target), "jump at {pc} to {target} of {}", p.len());
        }
    }
}

/// Target `initdata` (agent part): kata's initdata device image, then the
/// document. A parsed document's digest has its algorithm's length and is
/// over the document bytes.
pub fn initdata(data: &[u8]) {
    let dir = scratch("initdata");
    let dev = dir.join("dev");
    std::fs::write(&dev, data).expect("scratch write");
    let doc = crate::initdata::read_device(&dev);
    let _ = std::fs::remove_dir_all(&dir);
    for raw in [doc.ok(), Some(data.to_vec())].into_iter().flatten() {
        assert!(raw.len() as u64 <= crate::initdata::MAX_DOCUMENT);
        if let Ok(d) = crate::initdata::Initdata::parse(raw.clone()) {
            let want = match d.algorithm.as_str() {
                "sha256" => 32,
                "sha384" => 48,
                "sha512" => 64,
                other => panic!("algorithm {other:?} accepted"),
            };
            assert_eq!(d.digest.len(), want);
            assert_eq!(d.raw, raw);
        }
    }
}

/// Target `configs` (agent part): `agent.*` kernel parameters and the
/// `agent.config_file` TOML, resolved as at start-up.
pub fn configs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let params = crate::config::KernelParams::parse(&text);
    // Every `agent.` word is either understood or kept aside, never lost.
    let agent_words = text.split_ascii_whitespace().filter(|w| w.starts_with("agent.")).count();
    assert!(params.ignored.len() <= agent_words);
    let _ = params.init_params();
    let _ = params.plan_options(true);
    let _ = crate::config::AgentConfig::resolve(&params, None, &Default::default());
    // The same text as a config file, which replaces the parameters (kata's rule).
    if let Ok(file) = crate::config::LoadedFile::parse(&text) {
        // A key is warned about once: as kata's-but-ignored or as unknown.
        assert!(file.ignored.iter().all(|k| !file.unknown.contains(k)));
        let replaced = params.replaced_by_file("/etc/agent.toml".into(), file.config);
        assert!(replaced.ignored.is_empty());
        let _ = replaced.init_params();
        let _ = crate::config::AgentConfig::resolve(&replaced, None, &Default::default());
    }
}

#[cfg(test)]
mod tests {
    /// A target's name and body.
    type Target = (&'static str, fn(&[u8]));

    /// Replays the committed inputs of this crate's targets.
    #[test]
    fn fuzz_regressions_replay() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
        let targets: [Target; 5] = [
            ("agent_request", super::agent_request),
            ("flow_frames", super::flow_frames),
            ("oci_plan", super::oci_plan),
            ("initdata", super::initdata),
            ("configs", super::configs),
        ];
        for (name, body) in targets {
            let Ok(dir) = std::fs::read_dir(base.join(name)) else { continue };
            for entry in dir {
                let path = entry.unwrap().path();
                eprintln!("replaying {}", path.display());
                body(&std::fs::read(&path).unwrap());
            }
        }
    }
}
