//! The CoCo path end to end in the VM, driven as kata's Go shim drives it
//! (`vm_harness::shim`): initdata on a virtio-blk disk, the network RPCs,
//! CreateSandbox with the ephemeral shm, CopyFile, and containers.
//!
//! - `kata_shaped_pod_with_initdata_network_and_copied_files`: the pod's
//!   shape on the image's busybox rootfs (no guest pull): the initdata
//!   policy is the one in force, the container reaches the host at 10.0.2.2
//!   after UpdateInterface/UpdateRoutes, sees the copied hosts file and the
//!   sandbox shm.
//! - `coco_pod_pulls_decrypts_and_verifies_in_the_guest`: `make demo`'s flow
//!   with asserts: the image pulled by the data hub in the guest (key from the
//!   KBS after attestation, cosign signature policy from the KBS), and the
//!   stranger-signed copy refused at CreateContainer naming the policy.
//!
//! Needs qemu-system-x86_64, vhost-device-vsock and the built image (and,
//! for the second, docker-registry, skopeo, umoci, openssl, busybox and the
//! release image-pull); skips with the reason when one is missing, except
//! with CI=true. VMs run one at a time.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use vm_harness::shim::{Pod, Shim};
use vm_harness::{coco, coco_pod, default_image_dir, initdata, Vm, VmSpec};

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const MAC: &str = "52:54:00:c0:c0:01";

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(test: &str, why: &str) {
    assert!(!ci(), "{test}: CI=true and {why}");
    eprintln!("SKIPPED {test}: {why}");
}

fn spec_or_skip(test: &str) -> Option<VmSpec> {
    let mut spec = VmSpec::from_image_dir(&default_image_dir());
    match spec.check_host() {
        Ok(()) => Some(spec),
        Err(err) => {
            skip(test, &err.to_string());
            None
        }
    }
}

fn confidential_rego() -> String {
    std::fs::read_to_string(vm_harness::workspace_root().join("agent/policy/confidential.rego")).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One HTTP answer on 127.0.0.1 (the guest's 10.0.2.2), in a thread.
fn one_shot_http(body: &'static str) -> (u16, std::thread::JoinHandle<bool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    return true;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    });
    (port, handle)
}

#[test]
fn kata_shaped_pod_with_initdata_network_and_copied_files() {
    let test = "kata_shaped_pod_with_initdata_network_and_copied_files";
    let Some(mut spec) = spec_or_skip(test) else { return };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The initdata policy: the image's default plus a line of its own, so its
    // digest differs from the default's.
    let rego = format!("{}\n# from initdata ({test})\n", confidential_rego());
    let mut doc = initdata::Document::new("sha384");
    doc.policy_rego = Some(rego.clone());
    spec.initdata = Some(doc.render().into_bytes());
    spec.mac = MAC.into();
    // No guest components here: this test is about the agent's own side.
    spec.extra_cmdline.push("agent.guest_components_procs=none".into());
    let (port, served) = one_shot_http("hello from the host\n");

    let mut vm = Vm::launch(&spec, false).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async {
        vm.wait_agent_ready(READY_TIMEOUT).await?;
        let client = vm.agent_target().connect(Duration::from_secs(10)).await?;
        let mut shim = Shim::new(client, Duration::from_secs(60));
        let pod = Pod::new("kata-shape", MAC);
        shim.check().await?;
        shim.setup_network(&pod, Vec::new()).await?;
        shim.create_sandbox(&pod).await?;
        let script = format!(
            // nc, not wget: the static busybox's wget looks up the service name
            // through NSS, which a static glibc cannot load (SIGSEGV).
            "cat /etc/hosts; echo hostname=$(cat /etc/hostname); /bin/busybox grep ' /dev/shm ' /proc/mounts; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc {} {port}",
            vm_harness::shim::GATEWAY
        );
        let app = pod.app_container("app", "busybox", &["/bin/sh", "-c", &script]);
        let req = app.create_request_on_shipped_rootfs(&pod.hostname, vm_harness::scenario::BUSYBOX_ROOTFS);
        shim.create_container_with(&app, req, Duration::from_secs(60)).await?;
        shim.start_container(&app).await?;
        let stdout = shim.read_stdout(&app, "hello from the host", Duration::from_secs(60)).await?;
        let status = shim.wait_process(&app).await?;
        shim.remove_container(&app).await?;
        shim.destroy_sandbox().await;
        for line in shim.report() {
            eprintln!("  {line}");
        }
        anyhow::Ok((stdout, status, pod))
    });
    let console = vm.console();
    let (stdout, status, pod) = result.unwrap_or_else(|e| panic!("{e:#}\n--- console ---\n{console}"));
    assert!(stdout.contains(&format!("10.0.2.15\t{}", pod.hostname)), "copied hosts file not seen:\n{stdout}");
    assert!(stdout.contains(&format!("hostname={}", pod.hostname)), "{stdout}");
    assert!(stdout.contains("/dev/shm tmpfs") && stdout.contains("size=65536k"), "sandbox shm not mounted:\n{stdout}");
    assert!(stdout.contains("hello from the host"), "the host at 10.0.2.2 was not reached:\n{stdout}");
    assert_eq!(status, 0, "{stdout}");
    assert!(served.join().unwrap(), "the host's HTTP server saw no request");
    vm.wait_power_off(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console();
    // The agent logs the policy in force: the initdata one, by its digest.
    assert!(console.contains("initdata policy.rego"), "the initdata policy is not in force:\n{console}");
    assert!(console.contains(&sha256_hex(rego.as_bytes())), "policy digest not logged:\n{console}");
}

#[test]
fn coco_pod_pulls_decrypts_and_verifies_in_the_guest() {
    let test = "coco_pod_pulls_decrypts_and_verifies_in_the_guest";
    let Some(mut spec) = spec_or_skip(test) else { return };
    for tool in coco::TOOLS {
        if !vm_harness::qemu::on_path(tool) {
            return skip(test, &format!("{tool} not installed"));
        }
    }
    let image_pull = vm_harness::workspace_root().join("target/x86_64-unknown-linux-gnu/release/image-pull");
    if !image_pull.exists() {
        return skip(test, "no release image-pull: run `make release`");
    }
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let host = coco::CocoHost::start(&image_pull).unwrap();
    spec.initdata = Some(host.initdata(&confidential_rego()).render().into_bytes());
    spec.extra_cmdline.push(coco::GUEST_COMPONENTS_PROCS.into());
    spec.mac = MAC.into();
    let mut vm = Vm::launch(&spec, false).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let out = rt.block_on(async {
        vm.wait_agent_ready(READY_TIMEOUT).await?;
        coco_pod::run(&mut vm, &host, MAC, |l| eprintln!("  {l}")).await
    });
    let console = vm.console();
    let out = out.unwrap_or_else(|e| panic!("{e:#}\n--- console ---\n{console}"));
    assert_eq!(out.app_stdout, format!("{}\n", coco::SECRET_LINE));
    assert_eq!(out.app_exit, 0);
    let r = &out.forged_refusal;
    assert!(r.contains("signature") || r.contains("policy"), "refusal does not name the policy: {r}");
    assert!(console.contains("reboot: Power down"), "{console}");
    // GetMetrics once every container is gone: the agent's own RSS (what
    // `cvm-vm bench-pod` reports) is there and plausible for PID 1.
    let rss = out.agent_rss_idle.expect("GetMetrics without cvm_agent_resident_bytes");
    assert!((1 << 20..256 << 20).contains(&rss), "agent RSS {rss} bytes");
    assert!(out.app_started <= out.app_first_line, "{:?} > {:?}", out.app_started, out.app_first_line);
}
