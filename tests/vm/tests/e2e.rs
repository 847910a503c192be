//! End to end: the guest image from `make rootfs` boots under QEMU with the
//! agent as PID 1, and the host drives it over hybrid vsock as a kata shim
//! does. Needs qemu-system-x86_64, vhost-device-vsock and the built image;
//! skips with the reason when one is missing, except with CI=true, where a
//! missing piece is a failure.
//!
//! VMs run one at a time (2 cores under TCG): the tests share a lock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use vm_harness::{default_image_dir, scenario, Vm, VmSpec};

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Guest vsock port for `agent.log_vport`.
const LOG_PORT: u32 = 1025;

/// Generous: TCG on a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn spec_or_skip(test: &str) -> Option<VmSpec> {
    let mut spec = VmSpec::from_image_dir(&default_image_dir());
    match spec.check_host() {
        Ok(()) => Some(spec),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => panic!("{test}: CI=true and {err}"),
        Err(err) => {
            eprintln!("SKIPPED {test}: {err}");
            None
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn boots_as_pid1_and_answers_over_hybrid_vsock() {
    let Some(mut spec) = spec_or_skip("boots_as_pid1_and_answers_over_hybrid_vsock") else { return };
    spec.extra_cmdline.push(format!("agent.log_vport={LOG_PORT}"));
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::launch(&spec, false).unwrap();
    runtime().block_on(async {
        let boot = vm.wait_agent_ready(READY_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
        eprintln!("QEMU start -> agent ready: {:.2} s ({:?})", boot.as_secs_f64(), spec.accel);
        let client = vm.agent_target().connect(Duration::from_secs(5)).await.unwrap();
        let version = cvm_agent::ctl::call_on(&client, "Version", "{}", Duration::from_secs(10)).await.unwrap();
        assert!(version.contains("agent_version"), "{version}");
        // agent.log_vport: attach to the log port, make the agent log, read the line.
        let mut logs = cvm_agent::transport::hybrid_vsock_connect(&vm.vsock_socket, LOG_PORT, Duration::from_secs(5))
            .await
            .expect("log vsock port");
        let body = r#"{"sandbox_id":"logs","hostname":"log-port-check"}"#;
        cvm_agent::ctl::call_on(&client, "CreateSandbox", body, Duration::from_secs(30)).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&text).contains("log-port-check") {
                let n = logs.read(&mut buf).await.expect("reading the log port");
                assert!(n > 0, "log port closed");
                text.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(seen.is_ok(), "the CreateSandbox log line never reached the log port");
        // Unknown guest ports are refused by the multiplexer, not hung.
        let other = vm.agent_target();
        let refused = cvm_agent::ctl::Target { hybrid_vsock_port: Some(4242), ..other };
        assert!(refused.connect(Duration::from_secs(5)).await.is_err(), "nothing listens on guest port 4242");
    });
    let console = vm.console();
    assert!(console.contains("init: boot done"), "init did not finish its boot steps:\n{console}");
    assert!(console.contains("agent ready"), "{console}");
    assert!(!console.contains("ERROR"), "errors on the console:\n{console}");

    // Dropping the VM (as a failing test would) leaves no process behind.
    let (pids, work) = (vm.pids(), vm.work_dir().to_owned());
    drop(vm);
    for pid in pids {
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(-(pid as libc::pid_t), 0) } == 0;
        assert!(!alive, "process group {pid} survived the VM's drop");
    }
    assert!(!work.exists(), "work directory {} left behind", work.display());
}

#[test]
fn a_fatal_agent_error_powers_the_vm_off_instead_of_exiting() {
    let Some(mut spec) = spec_or_skip("a_fatal_agent_error_powers_the_vm_off_instead_of_exiting") else { return };
    // A listen address the agent refuses: it logs why and PID 1 powers off
    // (an exiting init would panic the kernel instead).
    spec.extra_cmdline.push("agent.server_addr=tcp://0.0.0.0:1024".into());
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::launch(&spec, false).unwrap();
    vm.wait_power_off(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console();
    assert!(console.contains("agent.server_addr") && console.contains("tcp://0.0.0.0:1024"), "{console}");
    assert!(console.contains("powering off"), "{console}");
}

#[test]
fn busybox_container_lifecycle_then_the_vm_powers_itself_off() {
    let Some(spec) = spec_or_skip("busybox_container_lifecycle_then_the_vm_powers_itself_off") else { return };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::launch(&spec, false).unwrap();
    let outcome = runtime().block_on(async {
        let boot = vm.wait_agent_ready(READY_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
        scenario::run(&mut vm, boot, |line| eprintln!("{line}")).await
    });
    let console = vm.console();
    let outcome = outcome.unwrap_or_else(|e| panic!("{e:#}\n--- console ---\n{console}"));
    assert_eq!(
        outcome.stdout,
        format!("{}\nhostname={}\n{}\n", scenario::GREETING, scenario::SANDBOX_HOSTNAME, scenario::DEVICE_CHECK),
        "container stdout"
    );
    assert_eq!(outcome.exit_code, scenario::EXIT_CODE);
    assert!(console.contains("reboot: Power down"), "{console}");
}
