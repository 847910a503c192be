//! `cvm-vm bench-pod`: the CoCo pod's start under QEMU, measured. Each run
//! boots a fresh VM with the demo's initdata and runs the demo pod
//! ([`coco_pod::run_with`]) with two extra containers of one ~100 MiB image
//! (several layers of random bytes, so the compressed size is the real one),
//! encrypted for the KBS-held key and cosign-signed like the demo's image:
//! the first CreateContainer pulls it cold, the second finds its layers in
//! the data hub's store. The same image is also pulled on this host by the
//! `image-pull` CLI (same registry, same decryption and signature policy,
//! keys from a directory instead of the KBS) as the native reference.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::coco::{self, CocoHost, HOST_FROM_GUEST, POLICY_PATH};
use crate::coco_pod::{self, Extra};
use crate::{Vm, VmSpec};

/// The big image's repository on the demo registry.
pub const BIG_REPO: &str = "coco/big";

/// The pushed big image.
#[derive(Debug, Clone)]
pub struct BigImage {
    /// As the guest names it (10.0.2.2:PORT/coco/big:1).
    pub reference: String,
    pub layers: usize,
    /// Sum of the (encrypted, gzip) layer blobs the registry serves.
    pub compressed_bytes: u64,
    /// File content bytes in its big layers.
    pub content_bytes: u64,
}

/// Builds the big image on top of the demo's busybox image: `layers` layers
/// of 4 files of random bytes each, `mib_per_layer` MiB per layer; then
/// encrypts, pushes and signs it as the demo image is.
pub fn build_big_image(
    host: &CocoHost,
    image_pull: &Path,
    layers: usize,
    mib_per_layer: usize,
) -> anyhow::Result<BigImage> {
    let plain = host.plain_layout();
    let bundle = host.dir.path().join("bundle-big");
    let from = format!("{}:t", plain.display());
    let to = format!("{}:big", plain.display());
    coco::run(Command::new("umoci").args(["unpack", "--rootless", "--image", &from]).arg(&bundle))?;
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let file_bytes = (mib_per_layer << 20) / 4;
    for layer in 0..layers {
        let dir = bundle.join(format!("rootfs/big/layer{layer}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..4 {
            let mut out = std::fs::File::create(dir.join(format!("blob{f}.bin")))?;
            std::io::copy(&mut std::io::Read::take(&mut urandom, file_bytes as u64), &mut out)?;
        }
        coco::run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &to]).arg(&bundle))?;
    }
    let reference = host.publish_signed(image_pull, &plain, "big", BIG_REPO)?;
    let out = coco::run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(host.dir.path().join("ca"))
            .arg(format!("docker://127.0.0.1:{}/{BIG_REPO}:1", host.registry_port)),
    )?;
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).context("the big image's manifest")?;
    let compressed_bytes = manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .filter_map(|l| l["size"].as_u64())
        .sum();
    Ok(BigImage { reference, layers, compressed_bytes, content_bytes: (layers * 4 * file_bytes) as u64 })
}

/// One cold pull of `reference` (as the guest names it) by the host's
/// `image-pull` into a fresh store on tmpfs (/dev/shm, as the guest's store
/// is): 10.0.2.2:PORT remapped to 127.0.0.1:PORT by a registries.conf entry,
/// so the signature's identity and the policy's scope are the guest's.
pub fn host_pull(host: &CocoHost, image_pull: &Path, reference: &str) -> anyhow::Result<Duration> {
    let work = tempfile::Builder::new().prefix("cvm-bench-pod.").tempdir_in("/dev/shm")?;
    let w = work.path();
    let keys = w.join("keys");
    host.write_key_source_dir(&keys)?;
    let port = host.registry_port;
    let conf = w.join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nprefix = \"{HOST_FROM_GUEST}:{port}\"\nlocation = \"127.0.0.1:{port}\"\n"),
    )?;
    let bundle = w.join("bundle");
    let started = Instant::now();
    let result = coco::run(
        Command::new(image_pull)
            .arg("--work-dir")
            .arg(w.join("store"))
            .arg("--ca-file")
            .arg(host.dir.path().join("registry.crt"))
            .arg("--registry-config")
            .arg(&conf)
            .args(["--policy", &format!("kbs:///{POLICY_PATH}")])
            .arg("--key-source-dir")
            .arg(&keys)
            .arg(reference)
            .arg(&bundle),
    );
    let took = started.elapsed();
    // `--rootfs auto` may have mounted an overlay there.
    let _ = Command::new("umount").arg(bundle.join("rootfs")).stderr(std::process::Stdio::null()).status();
    result.context("image-pull on the host")?;
    Ok(took)
}

/// What one VM boot measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub agent_ready: Duration,
    pub app_started: Duration,
    pub app_first_line: Duration,
    pub cold: Duration,
    pub warm: Duration,
    pub agent_rss_idle: u64,
}

/// Boots a VM from `spec` (the demo's initdata attached) and runs the demo
/// pod with the big image twice.
pub async fn one_run(spec: &VmSpec, host: &CocoHost, big: &BigImage, ready: Duration) -> anyhow::Result<Run> {
    let mut vm = Vm::launch(spec, false)?;
    let agent_ready = vm.wait_agent_ready(ready).await?;
    let extra = Extra {
        containers: vec![("big-cold".into(), big.reference.clone()), ("big-warm".into(), big.reference.clone())],
    };
    let out = match coco_pod::run_with(&mut vm, host, &spec.mac, &extra, |_| {}).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("--- guest console ---\n{}", vm.console().trim_end());
            return Err(e);
        }
    };
    anyhow::ensure!(out.app_stdout.contains(coco::SECRET_LINE), "the app printed {:?}", out.app_stdout);
    let [cold, warm] = out.extra_creates[..] else {
        anyhow::bail!("expected two big-image CreateContainer timings, got {:?}", out.extra_creates);
    };
    Ok(Run {
        agent_ready,
        app_started: out.app_started,
        app_first_line: out.app_first_line,
        cold,
        warm,
        agent_rss_idle: out.agent_rss_idle.context("GetMetrics has no cvm_agent_resident_bytes")?,
    })
}

/// Median of `v` (the upper one of an even count).
pub fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The result table (markdown) and the ratios, one `key value` line each
/// after it for scripts.
pub fn report(runs: &[Run], host: &[Duration], big: &BigImage) -> String {
    let col = |f: fn(&Run) -> Duration| runs.iter().map(f).collect::<Vec<_>>();
    let row = |name: &str, v: &[Duration]| {
        let each: Vec<String> = v.iter().map(|d| secs(*d)).collect();
        format!("| {name} | {} | {} |\n", secs(median(v)), each.join(" / "))
    };
    let (ready, started, line) = (col(|r| r.agent_ready), col(|r| r.app_started), col(|r| r.app_first_line));
    let (cold, warm) = (col(|r| r.cold), col(|r| r.warm));
    let rss: Vec<u64> = runs.iter().map(|r| r.agent_rss_idle).collect();
    let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
    let mut t = String::from("| Measure | Median s | Each run s |\n|---|--:|--:|\n");
    t += &row("QEMU start → agent ready (Check)", &ready);
    t += &row("QEMU start → app StartContainer returned", &started);
    t += &row("QEMU start → app's first stdout line", &line);
    t += &row(&format!("CreateContainer, {} MiB image, cold pull", mib(big.compressed_bytes)), &cold);
    t += &row("CreateContainer, same image, warm (layers in the store)", &warm);
    t += &row("host `image-pull` CLI, same image, cold", host);
    let each: Vec<String> = rss.iter().map(|b| mib(*b)).collect();
    t += &format!("| agent RSS idle after the pod (MiB) | {} | {} |\n", mib(median(&rss)), each.join(" / "));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    t += &format!(
        "\nratio_warm_cold {:.3}\nratio_guest_host {:.2}\nguest_cold_mib_s {:.1}\nhost_mib_s {:.1}\n",
        ratio(median(&warm), median(&cold)),
        ratio(median(&cold), median(host)),
        big.compressed_bytes as f64 / f64::from(1 << 20) / median(&cold).as_secs_f64(),
        big.compressed_bytes as f64 / f64::from(1 << 20) / median(host).as_secs_f64(),
    );
    t
}
