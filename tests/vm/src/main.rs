//! `cvm-vm`: boots the guest image under QEMU and drives the agent over hybrid
//! vsock. `make vm` runs `cvm-vm boot`, `make demo` runs `cvm-vm demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vm_harness::{default_image_dir, scenario, Accel, Confidential, Vm, VmSpec};

#[derive(Debug, Parser)]
#[command(name = "cvm-vm", version, about = "Boot the confidential VM guest image under QEMU and drive its agent")]
struct Args {
    /// Directory with `vmlinux` and `initramfs` (default: target/rootfs, or CVM_IMAGE_DIR).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Kernel to boot instead of DIR/vmlinux (e.g. /boot/vmlinuz-* to compare).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initramfs to boot instead of DIR/initramfs.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Start an Intel TDX guest (needs a TDX host, KVM, a QEMU with tdx-guest and TDVF).
    #[arg(long, conflicts_with = "snp")]
    tdx: bool,
    /// Start an AMD SEV-SNP guest (needs an SNP host, KVM, a QEMU with sev-snp-guest and OVMF).
    #[arg(long)]
    snp: bool,
    /// Firmware for --tdx/--snp (default: the distribution's OVMF.inteltdx.fd / OVMF.amdsev.fd).
    #[arg(long, value_name = "FILE")]
    firmware: Option<PathBuf>,
    /// Force the accelerator (default: KVM when usable, else TCG).
    #[arg(long, value_parser = ["kvm", "tcg"])]
    accel: Option<String>,
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Extra kernel parameter (repeatable), e.g. --append agent.log=debug.
    #[arg(long = "append", value_name = "PARAM")]
    append: Vec<String>,
    /// An initdata TOML document (`version`, `algorithm`, `[data]` with
    /// aa.toml, cdh.toml, policy.rego), attached as kata's runtime does: the
    /// disk image written by `prepareInitdataImage`'s layout, raw virtio-blk.
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// MAC address of the guest's NIC (eth0), as a shim's UpdateInterface names it.
    #[arg(long, default_value = vm_harness::qemu::DEFAULT_MAC, value_name = "MAC")]
    mac: String,
    /// Seconds to wait for the agent to answer Check.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot, wait for the agent, print the boot time, and stay up (console on
    /// stdout) until the guest powers off or Ctrl-C.
    Boot,
    /// Boot and run a busybox container through the agent API, then destroy
    /// the sandbox and check that the VM powers itself off.
    Demo,
    /// The CoCo demo: a TLS registry, the test KBS and an encrypted, signed
    /// image on this host; the VM boots with initdata (KBS, its certificate,
    /// the image signature policy, agent/policy/confidential.rego); the pod
    /// kata's shim starts runs the image pulled in the guest; a copy signed
    /// by another key is refused.
    CocoDemo,
    /// Only the CoCo demo's host side: write its initdata to FILE, print the
    /// image references, keep the registry and the KBS up until Ctrl-C
    /// (then: cvm-vm --initdata FILE boot).
    CocoHost {
        #[arg(long, value_name = "FILE")]
        write_initdata: PathBuf,
    },
    /// Boot N times and print QEMU start -> agent ready for each.
    BootTime {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// The CoCo pod's start measured over N boots (each with the demo's
    /// initdata): QEMU start -> the app's StartContainer and its first
    /// line; CreateContainer of a ~100 MiB encrypted, signed image cold and
    /// warm; the agent's idle RSS; the host's image-pull as the reference.
    BenchPod {
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Layers of the big image and MiB of random bytes in each.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 25)]
        mib_per_layer: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = args.image_dir.clone().unwrap_or_else(default_image_dir);
    let mut spec = VmSpec::from_image_dir(&dir);
    if let Some(k) = &args.kernel {
        spec.kernel = k.clone();
    }
    if let Some(i) = &args.initrd {
        spec.initrd = i.clone();
    }
    let (accel, why) = match args.accel.as_deref() {
        Some("kvm") => (Accel::Kvm, "--accel kvm".to_owned()),
        Some("tcg") => (Accel::Tcg, "--accel tcg".to_owned()),
        _ => Accel::detect(),
    };
    spec.accel = accel;
    spec.confidential = if args.tdx {
        Confidential::Tdx
    } else if args.snp {
        Confidential::Snp
    } else {
        Confidential::None
    };
    spec.firmware = args.firmware.clone();
    spec.memory_mib = args.memory;
    spec.cpus = args.cpus;
    spec.extra_cmdline = args.append.clone();
    spec.mac = args.mac.clone();
    if let Some(path) = &args.initdata {
        match std::fs::read(path) {
            Ok(doc) => spec.initdata = Some(doc),
            Err(err) => {
                eprintln!("cvm-vm: --initdata {}: {err}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Err(err) = spec.check_host() {
        eprintln!("cvm-vm: {err}");
        return ExitCode::from(2);
    }
    println!(
        "cvm-vm: accel {} ({why}), {} MiB, {} vCPU, image {}",
        accel.name(),
        spec.memory_mib,
        spec.cpus,
        dir.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let ready = Duration::from_secs(args.ready_timeout);
    let result = rt.block_on(async {
        match args.command {
            Cmd::Boot => boot(&spec, ready).await,
            Cmd::Demo => demo(&spec, ready).await,
            Cmd::CocoDemo => coco_demo(&spec, ready).await,
            Cmd::CocoHost { write_initdata } => coco_host(&write_initdata).await,
            Cmd::BootTime { runs } => boot_time(&spec, ready, runs).await,
            Cmd::BenchPod { runs, layers, mib_per_layer } => bench_pod(&spec, ready, runs, layers, mib_per_layer).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cvm-vm: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn boot(spec: &VmSpec, ready: Duration) -> anyhow::Result<()> {
    let mut vm = Vm::launch(spec, true)?;
    let t = vm.wait_agent_ready(ready).await?;
    println!("\ncvm-vm: agent ready {:.2} s after QEMU start", t.as_secs_f64());
    // On a line of its own for scripts (one write: the console echo may have
    // left a partial line), the socket a shim connects to.
    print!("\nhybrid-vsock: {}\n", vm.vsock_socket.display());
    println!(
        "cvm-vm: try: cvm-agent-ctl --addr unix://{} --hybrid-vsock 1024 version   (Ctrl-C stops the VM)",
        vm.vsock_socket.display()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { println!("cvm-vm: stopping the VM"); return Ok(()); }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(t) = vm.wait_power_off(Duration::ZERO) {
                    println!("cvm-vm: the guest powered off ({:.1} s)", t.as_secs_f64());
                    return Ok(());
                }
            }
        }
    }
}

async fn demo(spec: &VmSpec, ready: Duration) -> anyhow::Result<()> {
    let mut vm = Vm::launch(spec, false)?;
    let boot = vm.wait_agent_ready(ready).await?;
    println!(
        "cvm-vm: agent ready {:.2} s after QEMU start (hybrid vsock {})",
        boot.as_secs_f64(),
        vm.vsock_socket.display()
    );
    let out = scenario::run(&mut vm, boot, |line| println!("  {line}")).await;
    println!("--- guest console ---\n{}", vm.console().trim_end());
    let out = out?;
    anyhow::ensure!(out.stdout.contains(scenario::GREETING), "container output is missing the greeting");
    anyhow::ensure!(
        out.stdout.contains(scenario::DEVICE_CHECK),
        "the container's device rules were not enforced (expected {:?})",
        scenario::DEVICE_CHECK
    );
    anyhow::ensure!(
        out.exit_code == scenario::EXIT_CODE,
        "exit code {} instead of {}",
        out.exit_code,
        scenario::EXIT_CODE
    );
    println!(
        "cvm-vm: demo passed: boot {:.2} s, container lifecycle {:.2} s, power-off {:.2} s",
        out.boot.as_secs_f64(),
        out.lifecycle.as_secs_f64(),
        out.power_off.as_secs_f64()
    );
    Ok(())
}

fn confidential_policy() -> anyhow::Result<String> {
    let path = vm_harness::workspace_root().join("agent/policy/confidential.rego");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn host_image_pull() -> PathBuf {
    vm_harness::workspace_root().join("target/x86_64-unknown-linux-gnu/release/image-pull")
}

fn start_coco_host() -> anyhow::Result<vm_harness::coco::CocoHost> {
    println!("cvm-vm: preparing the host side (registry, KBS, encrypted signed image)");
    let host = vm_harness::coco::CocoHost::start(&host_image_pull())?;
    for (what, took) in &host.timings {
        println!("  {:<60} {:>6.2} s", what, took.as_secs_f64());
    }
    println!("  image {}  (stranger-signed copy: {})", host.image(), host.forged_image());
    println!("  KBS {}", host.kbs_url());
    Ok(host)
}

async fn coco_host(write_initdata: &std::path::Path) -> anyhow::Result<()> {
    let host = start_coco_host()?;
    std::fs::write(write_initdata, host.initdata(&confidential_policy()?).render())?;
    println!("cvm-vm: initdata written to {} (Ctrl-C stops the registry and the KBS)", write_initdata.display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `spec` with the demo host's initdata and the guest components launched.
fn coco_spec(spec: &VmSpec, host: &vm_harness::coco::CocoHost) -> anyhow::Result<VmSpec> {
    let mut spec = spec.clone();
    spec.initdata = Some(host.initdata(&confidential_policy()?).render().into_bytes());
    // The attestation-agent and the data hub, launched by the agent (kata's
    // parameter; `api-server-rest` would add the REST server we do not ship).
    spec.extra_cmdline.push(vm_harness::coco::GUEST_COMPONENTS_PROCS.into());
    Ok(spec)
}

async fn coco_demo(spec: &VmSpec, ready: Duration) -> anyhow::Result<()> {
    let host = start_coco_host()?;
    let spec = coco_spec(spec, &host)?;
    let mut vm = Vm::launch(&spec, false)?;
    let boot = vm.wait_agent_ready(ready).await?;
    println!("cvm-vm: agent ready {:.2} s after QEMU start (initdata attached)", boot.as_secs_f64());
    let out = vm_harness::coco_pod::run(&mut vm, &host, &spec.mac, |line| println!("  {line}")).await;
    let console = vm.console();
    let out = match out {
        Ok(o) => o,
        Err(err) => {
            println!("--- guest console ---\n{}", console.trim_end());
            return Err(err);
        }
    };
    anyhow::ensure!(
        out.app_stdout.contains(vm_harness::coco::SECRET_LINE),
        "the app did not print the decrypted layer's line: {:?}",
        out.app_stdout
    );
    println!("cvm-vm: the app printed: {}", out.app_stdout.trim_end());
    println!("cvm-vm: the stranger-signed image was refused: {}", out.forged_refusal);
    println!(
        "cvm-vm: CoCo demo passed (boot {:.2} s, power-off {:.2} s)",
        boot.as_secs_f64(),
        out.power_off.as_secs_f64()
    );
    Ok(())
}

async fn boot_time(spec: &VmSpec, ready: Duration, runs: u32) -> anyhow::Result<()> {
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let mut vm = Vm::launch(spec, false)?;
        let t = vm.wait_agent_ready(ready).await?;
        let c = vm.qemu_cpu_time().unwrap_or_default();
        println!("boot {i}: QEMU start -> agent ready {:.2} s (QEMU CPU {:.2} s)", t.as_secs_f64(), c.as_secs_f64());
        times.push(t);
        cpu.push(c);
    }
    times.sort();
    cpu.sort();
    let mid = times.len() / 2;
    println!(
        "boot time ({}): median {:.2} s, min {:.2} s, max {:.2} s over {runs} runs; QEMU CPU median {:.2} s",
        spec.accel.name(),
        times[mid].as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        cpu[mid].as_secs_f64()
    );
    Ok(())
}

async fn bench_pod(spec: &VmSpec, ready: Duration, runs: u32, layers: usize, mib: usize) -> anyhow::Result<()> {
    use vm_harness::bench_pod as b;
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let host = start_coco_host()?;
    let spec = coco_spec(spec, &host)?;
    let t = std::time::Instant::now();
    let big = b::build_big_image(&host, &host_image_pull(), layers, mib)?;
    println!(
        "  big image {}: the demo's 2 layers + {} of random bytes ({} MiB), {:.1} MiB of layer blobs (gzip, encrypted) ({:.1} s to build, encrypt, push, sign)",
        big.reference,
        big.layers,
        big.content_bytes >> 20,
        big.compressed_bytes as f64 / f64::from(1 << 20),
        t.elapsed().as_secs_f64()
    );
    let mut host_pulls = Vec::new();
    let mut results = Vec::new();
    for i in 1..=runs {
        let r = b::one_run(&spec, &host, &big, ready).await.with_context(|| format!("run {i}"))?;
        println!(
            "run {i}: agent ready {:.2} s, app started {:.2} s, first line {:.2} s, big cold {:.2} s, warm {:.2} s, agent RSS idle {} KiB",
            r.agent_ready.as_secs_f64(),
            r.app_started.as_secs_f64(),
            r.app_first_line.as_secs_f64(),
            r.cold.as_secs_f64(),
            r.warm.as_secs_f64(),
            r.agent_rss_idle >> 10
        );
        results.push(r);
        // Interleaved with the VM runs, so both see the same host load.
        let h = b::host_pull(&host, &host_image_pull(), &big.reference)?;
        println!("run {i}: host image-pull cold {:.2} s", h.as_secs_f64());
        host_pulls.push(h);
    }
    println!("\npod start ({}, {} MiB, {} vCPU), medians of {runs}:", spec.accel.name(), spec.memory_mib, spec.cpus);
    print!("{}", b::report(&results, &host_pulls, &big));
    Ok(())
}
