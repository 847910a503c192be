//! The QEMU command line for the guest image, and what the host must offer
//! for it. Building the arguments is pure (unit-tested); the host checks read
//! /dev, /sys and `qemu -object help` and refuse with a reason an operator can
//! act on (e.g. "--tdx: kvm_intel.tdx is not enabled on this host").

use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";
pub const VHOST_DEVICE_VSOCK: &str = "vhost-device-vsock";
/// The guest NIC's MAC address unless told otherwise (QEMU's own default).
pub const DEFAULT_MAC: &str = "52:54:00:12:34:56";

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (real hosts).
    Kvm,
    /// QEMU's emulator: slow but works everywhere.
    Tcg,
}

impl Accel {
    /// KVM when /dev/kvm is usable with a stock kernel, else TCG, with the
    /// reason. `CVM_VM_ACCEL=kvm|tcg` overrides.
    pub fn detect() -> (Accel, String) {
        match std::env::var("CVM_VM_ACCEL").as_deref() {
            Ok("kvm") => return (Accel::Kvm, "CVM_VM_ACCEL=kvm".into()),
            Ok("tcg") => return (Accel::Tcg, "CVM_VM_ACCEL=tcg".into()),
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            // PVM (paravirtualized KVM) cannot boot a stock kernel: MSR and
            // emulation failures. See shared notes on this machine.
            return (Accel::Tcg, "/dev/kvm is kvm_pvm, which cannot boot a stock kernel".into());
        }
        let hw = Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
        let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        match (hw, usable) {
            (true, true) => (Accel::Kvm, "/dev/kvm (kvm_intel/kvm_amd)".into()),
            (_, false) => (Accel::Tcg, "/dev/kvm is absent or not accessible".into()),
            (false, true) => (Accel::Tcg, "/dev/kvm is not backed by kvm_intel or kvm_amd".into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Confidential-guest technology to ask QEMU for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidential {
    None,
    /// Intel TDX: `-object tdx-guest`, TDVF firmware, split irqchip.
    Tdx,
    /// AMD SEV-SNP: `-object sev-snp-guest` with measured kernel hashes.
    Snp,
}

/// Everything that decides the VM's shape.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub confidential: Confidential,
    /// TDVF / OVMF image (needed for --tdx and --snp).
    pub firmware: Option<PathBuf>,
    /// Guest vsock CID.
    pub cid: u32,
    /// QEMU user networking with a virtio-net NIC.
    pub user_network: bool,
    /// The NIC's MAC address (what a shim's UpdateInterface names as `hwAddr`).
    pub mac: String,
    /// An initdata TOML document: the VM writes it as kata's disk image (see
    /// `initdata`) into its work directory and attaches it.
    pub initdata: Option<Vec<u8>>,
    /// Extra kernel parameters (e.g. `agent.log=debug`).
    pub extra_cmdline: Vec<String>,
}

impl VmSpec {
    /// The image `make rootfs` built in `dir` (`vmlinux`, `initramfs`).
    pub fn from_image_dir(dir: &Path) -> Self {
        let (accel, _) = Accel::detect();
        VmSpec {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initramfs"),
            memory_mib: 512,
            cpus: 1,
            accel,
            confidential: Confidential::None,
            firmware: None,
            cid: 3,
            user_network: true,
            mac: DEFAULT_MAC.to_owned(),
            initdata: None,
            extra_cmdline: Vec::new(),
        }
    }

    /// Kernel command line: serial console, quiet, power off (not reboot) on
    /// panic, and parameters that skip slow probes of hardware we do not give
    /// the guest; and, as kata's runtime passes by default
    /// (`KERNELPARAMS`), cgroup v2 only, which the agent mounts by kata's rule.
    pub fn kernel_cmdline(&self) -> String {
        let mut p: Vec<String> = [
            "console=ttyS0",
            "quiet",
            "panic=-1",
            "8250.nr_uarts=1",
            "i8042.noaux",
            "i8042.nomux",
            "i8042.nopnp",
            "i8042.dumbkbd",
            "cryptomgr.notests",
            "no_timer_check",
            "random.trust_cpu=on",
            "cgroup_no_v1=all",
            "systemd.unified_cgroup_hierarchy=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        p.extend(self.extra_cmdline.iter().cloned());
        p.join(" ")
    }

    /// QEMU arguments. `vhost_socket` is vhost-device-vsock's vhost-user
    /// socket; the serial console goes to `console_log` (and to stdout too
    /// when `echo_console`); `initdata_image` is attached as kata's QEMU
    /// driver attaches it: raw virtio-blk PCI, drive id `initdata`.
    pub fn qemu_args(
        &self,
        vhost_socket: &Path,
        console_log: &Path,
        echo_console: bool,
        initdata_image: Option<&Path>,
    ) -> Vec<String> {
        let mem = format!("{}M", self.memory_mib);
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        match self.accel {
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        }
        let machine = match self.confidential {
            Confidential::None => "pc,memory-backend=mem".to_owned(),
            Confidential::Tdx => {
                "q35,memory-backend=mem,kernel-irqchip=split,confidential-guest-support=tee0".to_owned()
            }
            Confidential::Snp => "q35,memory-backend=mem,confidential-guest-support=tee0".to_owned(),
        };
        push(&["-machine", &machine, "-m", &mem, "-smp", &self.cpus.to_string()]);
        // vhost-user needs guest memory the backend can map: a shared memfd.
        push(&["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")]);
        match self.confidential {
            Confidential::None => {}
            Confidential::Tdx => push(&["-object", "tdx-guest,id=tee0"]),
            Confidential::Snp => {
                let (cbitpos, reduced) = sev_cbit();
                push(&[
                    "-object",
                    &format!("sev-snp-guest,id=tee0,cbitpos={cbitpos},reduced-phys-bits={reduced},kernel-hashes=on"),
                ]);
            }
        }
        if let Some(fw) = &self.firmware {
            push(&["-bios", &fw.to_string_lossy()]);
        }
        push(&["-kernel", &self.kernel.to_string_lossy(), "-initrd", &self.initrd.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline()]);
        let log = console_log.to_string_lossy();
        if echo_console {
            push(&["-chardev", &format!("stdio,id=con,signal=on,logfile={log}")]);
        } else {
            push(&["-chardev", &format!("file,id=con,path={log}")]);
        }
        push(&["-serial", "chardev:con"]);
        push(&["-chardev", &format!("socket,id=vsock,path={}", vhost_socket.to_string_lossy())]);
        push(&["-device", "vhost-user-vsock-pci,chardev=vsock"]);
        push(&["-device", "virtio-rng-pci"]);
        if self.user_network {
            push(&[
                "-netdev",
                "user,id=net0",
                "-device",
                &format!("virtio-net-pci,netdev=net0,mac={},romfile=", self.mac),
            ]);
        }
        if let Some(img) = initdata_image {
            // govmm's BlockDevice for kata's initdata: if=none, raw, aio=threads,
            // no SCSI, write cache off; read-only here as cloud-hypervisor's is.
            push(&[
                "-drive",
                &format!("id=initdata,file={},aio=threads,format=raw,if=none,readonly=on", img.to_string_lossy()),
            ]);
            push(&["-device", "virtio-blk-pci,drive=initdata,scsi=off,config-wce=off"]);
        }
        a
    }
}

/// Why the host cannot run the requested VM.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{tool} not found on PATH: {hint}")]
    MissingTool { tool: &'static str, hint: &'static str },
    #[error("guest image file {0} is missing: run `make rootfs`")]
    MissingImage(PathBuf),
    #[error("--{tee}: {reason}")]
    Tee { tee: &'static str, reason: String },
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn qemu_has_object(name: &str) -> bool {
    Command::new(QEMU)
        .args(["-object", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == name))
        .unwrap_or(false)
}

const TDX_FIRMWARE: &[&str] =
    &["/usr/share/ovmf/OVMF.inteltdx.fd", "/usr/share/qemu/OVMF.inteltdx.fd", "/usr/share/edk2/ovmf/OVMF.inteltdx.fd"];
const SNP_FIRMWARE: &[&str] =
    &["/usr/share/ovmf/OVMF.amdsev.fd", "/usr/share/qemu/OVMF.amdsev.fd", "/usr/share/edk2/ovmf/OVMF.amdsev.fd"];

impl VmSpec {
    /// Checks tools, image files and (for --tdx/--snp) the host's TEE support;
    /// fills in the firmware path when it was not given.
    pub fn check_host(&mut self) -> Result<(), HostError> {
        if !on_path(QEMU) {
            return Err(HostError::MissingTool { tool: QEMU, hint: "apt-get install qemu-system-x86" });
        }
        if !on_path(VHOST_DEVICE_VSOCK) {
            return Err(HostError::MissingTool {
                tool: VHOST_DEVICE_VSOCK,
                hint: "cargo install --locked vhost-device-vsock",
            });
        }
        for f in [&self.kernel, &self.initrd] {
            if !f.exists() {
                return Err(HostError::MissingImage(f.clone()));
            }
        }
        let (tee, module_param, object, firmware) = match self.confidential {
            Confidential::None => return Ok(()),
            Confidential::Tdx => ("tdx", "/sys/module/kvm_intel/parameters/tdx", "tdx-guest", TDX_FIRMWARE),
            Confidential::Snp => ("snp", "/sys/module/kvm_amd/parameters/sev_snp", "sev-snp-guest", SNP_FIRMWARE),
        };
        let refuse = |reason: String| Err(HostError::Tee { tee, reason });
        if self.accel != Accel::Kvm {
            return refuse("a confidential guest needs KVM on a TEE-capable host; this host runs TCG".into());
        }
        match read_trim(module_param).as_deref() {
            Some("Y") | Some("1") => {}
            Some(v) => return refuse(format!("{module_param} is {v:?}: the host kernel has it disabled")),
            None => return refuse(format!("{module_param} does not exist: the host kernel or CPU lacks support")),
        }
        if !qemu_has_object(object) {
            return refuse(format!("this QEMU has no `-object {object}`; a newer QEMU is needed"));
        }
        if self.firmware.is_none() {
            let found = std::env::var_os("CVM_VM_FIRMWARE")
                .map(PathBuf::from)
                .or_else(|| firmware.iter().map(PathBuf::from).find(|p| p.exists()));
            match found {
                Some(fw) => self.firmware = Some(fw),
                None => return refuse(format!("no firmware found (looked at {firmware:?}); set CVM_VM_FIRMWARE")),
            }
        }
        Ok(())
    }
}

/// SEV C-bit position and physical address bit reduction from CPUID
/// 0x8000001F (EBX[5:0], EBX[11:6]); the usual values when not on AMD.
fn sev_cbit() -> (u32, u32) {
    // `__cpuid` became a safe fn in newer toolchains; keep building on both.
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    {
        // SAFETY: cpuid is always available on x86_64.
        let max = unsafe { std::arch::x86_64::__cpuid(0x8000_0000) }.eax;
        if max >= 0x8000_001f {
            // SAFETY: as above; leaf checked to exist.
            let ebx = unsafe { std::arch::x86_64::__cpuid(0x8000_001f) }.ebx;
            let (c, r) = (ebx & 0x3f, (ebx >> 6) & 0x3f);
            if c != 0 {
                return (c, r);
            }
        }
    }
    (51, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initramfs".into(),
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Tcg,
            confidential: Confidential::None,
            firmware: None,
            cid: 3,
            user_network: true,
            mac: DEFAULT_MAC.into(),
            initdata: None,
            extra_cmdline: vec!["agent.log=debug".into()],
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn plain_vm_uses_shared_memfd_vhost_user_vsock_and_user_networking() {
        let args = spec().qemu_args(Path::new("/w/vhost.sock"), Path::new("/w/console.log"), false, None);
        assert_eq!(value_after(&args, "-accel"), vec!["tcg"]);
        assert!(value_after(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(value_after(&args, "-device").contains(&"vhost-user-vsock-pci,chardev=vsock"));
        assert!(value_after(&args, "-chardev").contains(&"socket,id=vsock,path=/w/vhost.sock"));
        assert_eq!(value_after(&args, "-netdev"), vec!["user,id=net0"]);
        assert!(value_after(&args, "-device").contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile="));
        assert!(value_after(&args, "-drive").is_empty(), "no initdata disk unless asked");
        assert!(args.contains(&"-no-reboot".to_owned()), "a guest reboot must end QEMU");
        let cmdline = value_after(&args, "-append")[0];
        assert!(cmdline.starts_with("console=ttyS0") && cmdline.ends_with("agent.log=debug"), "{cmdline}");
        assert!(cmdline.contains("panic=-1"));
        assert!(!args.iter().any(|a| a.contains("tee0")));
    }

    #[test]
    fn initdata_is_a_raw_virtio_blk_disk_and_the_mac_is_configurable() {
        let mut s = spec();
        s.mac = "02:00:00:aa:bb:cc".into();
        let args = s.qemu_args(Path::new("/w/v"), Path::new("/w/c"), false, Some(Path::new("/w/initdata.img")));
        assert_eq!(
            value_after(&args, "-drive"),
            vec!["id=initdata,file=/w/initdata.img,aio=threads,format=raw,if=none,readonly=on"]
        );
        let devices = value_after(&args, "-device");
        assert!(devices.contains(&"virtio-blk-pci,drive=initdata,scsi=off,config-wce=off"), "{devices:?}");
        assert!(devices.contains(&"virtio-net-pci,netdev=net0,mac=02:00:00:aa:bb:cc,romfile="), "{devices:?}");
    }

    #[test]
    fn tdx_adds_the_guest_object_split_irqchip_and_firmware() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.confidential = Confidential::Tdx;
        s.firmware = Some("/fw/OVMF.inteltdx.fd".into());
        let args = s.qemu_args(Path::new("/w/v"), Path::new("/w/c"), false, None);
        assert!(value_after(&args, "-object").contains(&"tdx-guest,id=tee0"));
        let machine = value_after(&args, "-machine")[0];
        assert!(machine.starts_with("q35") && machine.contains("kernel-irqchip=split"), "{machine}");
        assert!(machine.contains("confidential-guest-support=tee0"));
        assert_eq!(value_after(&args, "-bios"), vec!["/fw/OVMF.inteltdx.fd"]);
        assert_eq!(value_after(&args, "-cpu"), vec!["host"]);
    }

    #[test]
    fn snp_measures_the_kernel_hashes() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.confidential = Confidential::Snp;
        let args = s.qemu_args(Path::new("/w/v"), Path::new("/w/c"), false, None);
        let obj = value_after(&args, "-object").into_iter().find(|o| o.starts_with("sev-snp-guest")).unwrap();
        assert!(obj.contains("kernel-hashes=on") && obj.contains("cbitpos="), "{obj}");
    }

    #[test]
    fn confidential_guests_are_refused_under_tcg_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.kernel = dir.path().join("k");
        s.initrd = dir.path().join("i");
        std::fs::write(&s.kernel, b"").unwrap();
        std::fs::write(&s.initrd, b"").unwrap();
        s.confidential = Confidential::Tdx;
        match s.check_host() {
            Err(HostError::Tee { tee: "tdx", reason }) => assert!(reason.contains("TCG"), "{reason}"),
            Err(HostError::MissingTool { .. }) => eprintln!("skipped: qemu or vhost-device-vsock not installed"),
            other => panic!("--tdx under TCG was not refused: {other:?}"),
        }
    }
}
