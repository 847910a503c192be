//! The CoCo demo's guest side: the pod kata's shim would start (see `shim`)
//! on a VM booted with the demo host's initdata (see `coco`): network, the
//! pause container, the app pulled, decrypted and verified in the guest,
//! its stdout; then the same image signed by a stranger's key, which must be
//! refused at CreateContainer with the policy's reason; then teardown and
//! the VM's own power-off. Used by `make demo` and the CoCo end-to-end test.

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
}

/// Runs the pod on a booted VM whose agent answered Check. `say` gets each
/// step as it completes.
pub async fn run(vm: &mut Vm, host: &CocoHost, mac: &str, mut say: impl FnMut(&str)) -> anyhow::Result<Outcome> {
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
        out.app_stdout = shim.read_stdout(&app, SECRET_LINE, Duration::from_secs(60)).await?;
        out.app_exit = shim.wait_process(&app).await?;
        flush(&shim, &mut say);

        let forged = pod.app_container("forged", &host.forged_image(), &args);
        out.forged_refusal = shim.create_container_refused(&forged, &pod.hostname, PULL_TIMEOUT).await?;
        flush(&shim, &mut say);

        shim.remove_container(&app).await?;
        shim.kill_and_wait(&pause).await?;
        shim.remove_container(&pause).await?;
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
