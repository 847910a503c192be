//! The container lifecycle a kata shim drives, against the agent inside the
//! VM: Check, Version, CreateSandbox, CreateContainer (a busybox rootfs the
//! image ships), StartContainer, ReadStdout until EOF, WaitProcess,
//! DestroySandbox; after which the VM must power itself off. Used by the
//! end-to-end test (which asserts on the outcome) and by `make demo` (which
//! prints it).

use std::time::Duration;

use anyhow::{bail, Context};
use cvm_agent::ctl::{self};
use serde_json::{json, Value};

use crate::vm::Vm;

/// The busybox rootfs `rootfs/build.sh` puts into the image.
pub const BUSYBOX_ROOTFS: &str = "/usr/share/cvm/busybox";
pub const CONTAINER_ID: &str = "hello";
/// Containers of a pod share the sandbox's UTS namespace (kata semantics),
/// so the container sees this hostname, not its spec's.
pub const SANDBOX_HOSTNAME: &str = "cvm-e2e";
/// What the container prints, and the exit code it ends with.
pub const GREETING: &str = "hello from a container in the confidential VM";
pub const EXIT_CODE: i64 = 7;
/// What the container's device check prints: its spec denies every device but
/// /dev/null (rw), which the guest's cgroup v2 enforces with an eBPF program.
pub const DEVICE_CHECK: &str = "devices: null=rw zero=denied";

/// Largest stdout the scenario accepts (the container prints a few lines).
const STDOUT_LIMIT: usize = 64 * 1024;

/// What the guest answered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub version: Value,
    pub stdout: String,
    pub exit_code: i64,
    pub boot: Duration,
    pub lifecycle: Duration,
    pub power_off: Duration,
}

/// CreateContainer body: the shipped busybox rootfs, read-only, in new pid,
/// mount, uts and ipc namespaces, with device rules; a shell that prints,
/// tries two devices, and exits 7.
pub fn create_container_request() -> Value {
    json!({
        "container_id": CONTAINER_ID,
        "exec_id": CONTAINER_ID,
        "OCI": {
            "Version": "1.0.2",
            "Process": {
                "Terminal": false,
                "User": {"UID": 0, "GID": 0},
                "Args": ["/bin/sh", "-c", format!(
                    "echo {GREETING}; echo hostname=$(hostname); \
                     printf 'devices:'; echo x >/dev/null && printf ' null=rw'; \
                     test -c /dev/zero && {{ head -c1 /dev/zero >/dev/null 2>&1 && echo ' zero=rw' || echo ' zero=denied'; }}; \
                     exit {EXIT_CODE}"
                )],
                "Env": ["PATH=/bin", "HOME=/root"],
                "Cwd": "/"
            },
            "Root": {"Path": BUSYBOX_ROOTFS, "Readonly": true},
            "Hostname": CONTAINER_ID,
            // `type_`: the generated serde name today; kata's JSON says `type`
            // (reported to the protos owner).
            "Mounts": [
                {"destination": "/proc", "source": "proc", "type_": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "source": "tmpfs", "type_": "tmpfs", "options": ["nosuid", "mode=755"]},
                {"destination": "/tmp", "source": "tmpfs", "type_": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "Linux": {
                "Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "uts"}, {"Type": "ipc"}],
                "Resources": {"Devices": [
                    {"Allow": false, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"},
                    {"Allow": true, "Type": "c", "Major": 1, "Minor": 3, "Access": "rw"}
                ]}
            }
        }
    })
}

/// Runs the whole lifecycle on a booted VM. `say` gets one line per step.
pub async fn run(vm: &mut Vm, boot: Duration, mut say: impl FnMut(&str)) -> anyhow::Result<Outcome> {
    let mut out = Outcome { boot, ..Default::default() };
    let client = vm.agent_target().connect(Duration::from_secs(10)).await.context("connecting to the agent")?;
    let call = |method: &'static str, body: Value, timeout: Duration| {
        let client = &client;
        async move {
            let text = ctl::call_on(client, method, &body.to_string(), timeout)
                .await
                .with_context(|| format!("{method} failed"))?;
            serde_json::from_str::<Value>(&text).with_context(|| format!("{method}: reply is not JSON"))
        }
    };
    let t = Duration::from_secs(30);
    let started = std::time::Instant::now();

    call("Check", json!({}), t).await?;
    say("Check: SERVING");
    out.version = call("Version", json!({}), t).await?;
    say(&format!("Version: {}", out.version));
    call("CreateSandbox", json!({"sandbox_id": "e2e", "hostname": SANDBOX_HOSTNAME}), t).await?;
    say("CreateSandbox: ok");
    call("CreateContainer", create_container_request(), t).await?;
    say(&format!("CreateContainer {CONTAINER_ID}: busybox rootfs {BUSYBOX_ROOTFS}"));
    call("StartContainer", json!({"container_id": CONTAINER_ID}), t).await?;
    say("StartContainer: ok");

    let mut stdout = Vec::new();
    loop {
        let body = json!({"container_id": CONTAINER_ID, "exec_id": CONTAINER_ID, "len": 4096});
        // EOF is an error status in kata's protocol: the stream is finished.
        let Ok(reply) = call("ReadStdout", body, t).await else { break };
        let chunk = bytes_field(&reply, "data")?;
        if chunk.is_empty() {
            break;
        }
        stdout.extend_from_slice(&chunk);
        if stdout.len() > STDOUT_LIMIT {
            bail!("container stdout exceeds {STDOUT_LIMIT} bytes");
        }
    }
    out.stdout = String::from_utf8_lossy(&stdout).into_owned();
    say(&format!("ReadStdout: {:?}", out.stdout));
    let waited = call("WaitProcess", json!({"container_id": CONTAINER_ID, "exec_id": CONTAINER_ID}), t).await?;
    out.exit_code = waited.get("status").and_then(Value::as_i64).unwrap_or(0);
    say(&format!("WaitProcess: exit status {}", out.exit_code));

    // The VM may power off before the reply reaches us; both are fine, the
    // power-off below is what is checked.
    match call("DestroySandbox", json!({}), Duration::from_secs(10)).await {
        Ok(_) => say("DestroySandbox: ok"),
        Err(err) => say(&format!("DestroySandbox: no reply ({err:#}); checking that the VM powers off")),
    }
    out.lifecycle = started.elapsed();
    drop(client);
    out.power_off = vm.wait_power_off(Duration::from_secs(30))?;
    say(&format!("VM powered off by itself {:.1} s after DestroySandbox", out.power_off.as_secs_f64()));
    Ok(out)
}

/// A protobuf `bytes` field in kata's JSON shape: an array of numbers (serde's
/// default for `Vec<u8>`); a string is taken as is.
fn bytes_field(reply: &Value, name: &str) -> anyhow::Result<Vec<u8>> {
    match reply.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().filter(|b| *b <= 255).map(|b| b as u8).context("byte out of range"))
            .collect(),
        Some(other) => bail!("field {name} has an unexpected shape: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_container_request_is_accepted_by_the_client() {
        // The ctl dispatch decodes kata's JSON shape strictly (unknown fields are
        // refused), so this pins the body against the generated messages.
        let body = create_container_request().to_string();
        let req: protos_check::Req = serde_json::from_str(&body).unwrap();
        assert_eq!(req.container_id, CONTAINER_ID);
    }

    mod protos_check {
        pub type Req = protos::agent::CreateContainerRequest;
    }

    /// The image ships agent/policy/confidential.rego as its default policy:
    /// the scenario's requests must pass it (and, as a control, a request the
    /// policy must refuse does not).
    #[test]
    fn the_scenario_passes_the_images_default_policy() {
        use cvm_agent::policy::{AgentPolicy, PolicyEngine};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agent/policy/confidential.rego");
        let policy = AgentPolicy::new(PolicyEngine::from_file(&path).unwrap());
        let sandbox: protos::agent::CreateSandboxRequest =
            serde_json::from_value(json!({"sandbox_id": "e2e", "hostname": SANDBOX_HOSTNAME})).unwrap();
        policy.check("CreateSandbox", &sandbox).unwrap();
        let create: protos_check::Req = serde_json::from_value(create_container_request()).unwrap();
        policy.check("CreateContainer", &create).unwrap();
        let read: protos::agent::ReadStreamRequest =
            serde_json::from_value(json!({"container_id": CONTAINER_ID, "exec_id": CONTAINER_ID, "len": 4096}))
                .unwrap();
        policy.check("ReadStdout", &read).unwrap();
        let exec: protos::agent::ExecProcessRequest =
            serde_json::from_value(json!({"container_id": CONTAINER_ID, "exec_id": "sh"})).unwrap();
        assert!(policy.check("ExecProcess", &exec).is_err());
    }

    #[test]
    fn bytes_field_shapes() {
        assert_eq!(bytes_field(&json!({"data": [104, 105]}), "data").unwrap(), b"hi");
        assert!(bytes_field(&json!({"data": [300]}), "data").is_err());
        assert!(bytes_field(&json!({}), "data").unwrap().is_empty());
    }
}
