//! The CoCo demo's guest side: the pod kata's shim would start (see `shim`)
//! on a VM booted with the demo host's initdata (see `coco`): network, the
//! pause container, the app pulled, decrypted and verified in the guest,
//! its stdout; then the same image signed by a stranger's key, which must be
//! refused at CreateContainer with the policy's reason; then teardown and
//! the VM's own power-off. Used by `make demo` and the CoCo end-to-end test,
//! and, with [`Extra`] images, by `cvm-vm bench-pod`.

use std::time::Duration;

use anyhow::Context as _;

use crate::coco::{CocoHost, SECRET_FILE, SECRET_LINE};
use crate::shim::{Pod, Shim};
use crate::vm::Vm;

/// CreateContainer pulls under TCG: generous.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub app_stdout: String,
    pub app_exit: i32,
    /// The status CreateContainer of the stranger-signed image answered.
    pub forged_refusal: String,
    pub steps: Vec<String>,
    pub power_off: Duration,
    /// VM uptime (since QEMU's launch) when the app's StartContainer returned.
    pub app_started: Duration,
    /// VM uptime when the app's line had been read from its stdout.
    pub app_first_line: Duration,
    /// CreateContainer (with its guest pull) of each [`Extra`] container, in order.
    pub extra_creates: Vec<Duration>,
    /// `cvm_agent_resident_bytes` from GetMetrics once every container is
    /// removed, before DestroySandbox.
    pub agent_rss_idle: Option<u64>,
}

/// Containers run after the demo's, each created (guest pull), started,
/// waited for and removed, one after the other.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// `(name, image)`: the same image twice measures a cold then a warm pull.
    pub containers: Vec<(String, String)>,
}

/// Runs the pod on a booted VM whose agent answered Check. `say` gets each
/// step as it completes.
pub async fn run(vm: &mut Vm, host: &CocoHost, mac: &str, say: impl FnMut(&str)) -> anyhow::Result<Outcome> {
    run_with(vm, host, mac, &Extra::default(), say).await
}

/// [`run`], then the `extra` containers before the teardown.
pub async fn run_with(
    vm: &mut Vm,
    host: &CocoHost,
    mac: &str,
    extra: &Extra,
    mut say: impl FnMut(&str),
) -> anyhow::Result<Outcome> {
    let client = vm.agent_target().connect(Duration::from_secs(10)).await.context("connecting to the agent")?;
    let mut shim = Shim::new(client, CALL_TIMEOUT);
    let mut out = Outcome::default();
    let mut shown = 0;
    let mut flush = |shim: &Shim, say: &mut dyn FnMut(&str)| {
        for line in &shim.report()[shown..] {
            say(line);
        }
        shown = shim.steps.len();
    };
    let pod = Pod::new("coco-demo", mac);

    let result: anyhow::Result<()> = async {
        shim.check().await?;
        shim.setup_network(&pod, Vec::new()).await?;
        shim.create_sandbox(&pod).await?;
        flush(&shim, &mut say);
        let pause = pod.pause_container();
        shim.create_container(&pause, &pod.hostname, PULL_TIMEOUT).await.context("CreateContainer (pause)")?;
        shim.start_container(&pause).await?;
        flush(&shim, &mut say);

        // containerd fills Args from the image config (its Cmd), as here.
        let cmd = format!("cat {SECRET_FILE}");
        let args = ["/bin/sh", "-c", cmd.as_str()];
        let app = pod.app_container("app", &host.image(), &args);
        shim.create_container(&app, &pod.hostname, PULL_TIMEOUT).await.context("CreateContainer (app)")?;
        flush(&shim, &mut say);
        shim.start_container(&app).await?;
        out.app_started = vm.uptime();
        out.app_stdout = shim.read_stdout(&app, SECRET_LINE, Duration::from_secs(60)).await?;
        out.app_first_line = vm.uptime();
        out.app_exit = shim.wait_process(&app).await?;
        flush(&shim, &mut say);

        let forged = pod.app_container("forged", &host.forged_image(), &args);
        out.forged_refusal = shim.create_container_refused(&forged, &pod.hostname, PULL_TIMEOUT).await?;
        flush(&shim, &mut say);

        shim.remove_container(&app).await?;

        for (name, image) in &extra.containers {
            let c = pod.app_container(name, image, &["/bin/sh", "-c", "exit 0"]);
            shim.create_container(&c, &pod.hostname, PULL_TIMEOUT)
                .await
                .with_context(|| format!("CreateContainer ({name}: {image})"))?;
            out.extra_creates.push(shim.steps.last().map(|s| s.took).unwrap_or_default());
            shim.start_container(&c).await?;
            shim.wait_process(&c).await?;
            shim.remove_container(&c).await?;
            flush(&shim, &mut say);
        }

        shim.kill_and_wait(&pause).await?;
        shim.remove_container(&pause).await?;
        let metrics = shim.get_metrics().await?;
        out.agent_rss_idle = prometheus_value(&metrics, "cvm_agent_resident_bytes");
        flush(&shim, &mut say);
        Ok(())
    }
    .await;
    // Whatever happened, end the pod as kata's shim does.
    let destroyed = shim.destroy_sandbox().await;
    flush(&shim, &mut say);
    out.steps = shim.report();
    result?;
    drop(shim);
    out.power_off = vm.wait_power_off(Duration::from_secs(60))?;
    say(&format!(
        "{:<16} {:>7.2} s  the VM powered itself off{}",
        "power-off",
        out.power_off.as_secs_f64(),
        if destroyed { "" } else { " (DestroySandbox reply lost to the power-off)" }
    ));
    Ok(out)
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn prometheus_value(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        if n == name {
            v.trim().parse::<f64>().ok().map(|v| v as u64)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_value_reads_the_named_unlabelled_sample() {
        let text = "# HELP cvm_agent_resident_bytes x\n# TYPE cvm_agent_resident_bytes gauge\n\
                    cvm_agent_resident_bytes 12582912\ncvm_agent_threads 4\n";
        assert_eq!(super::prometheus_value(text, "cvm_agent_resident_bytes"), Some(12_582_912));
        assert_eq!(super::prometheus_value(text, "cvm_agent_threads"), Some(4));
        assert_eq!(super::prometheus_value(text, "cvm_agent"), None);
    }
}
