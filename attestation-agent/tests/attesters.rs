//! Attesters driven through a fake kernel that implements the kernel side of
//! the real ABIs: configfs-tsm report items (provider, inblob, generation,
//! outblob, auxblob), the TDX_CMD_GET_REPORT0, SNP_GET_EXT_REPORT and
//! UVIO_IOCTL_ATT ioctls (argument structs decoded by their kernel offsets,
//! independently of the crate's struct definitions) and the TDX RTMR sysfs
//! files.

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use attestation_agent::agent::{Agent, AgentError, StartOptions};
use attestation_agent::attester::device::KernelIo;
use attestation_agent::attester::se::SeAttester;
use attestation_agent::attester::snp::SnpAttester;
use attestation_agent::attester::tdx::TdxAttester;
use attestation_agent::attester::{self, Attester, AttesterChoice, AttesterError, EvidenceRequest, TeeKind};
use attestation_agent::config::Config;
use attestation_agent::initdata::InitdataError;
use attestation_agent::measurement::EventLog;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha384, Sha512};

const TSM: &str = "/sys/kernel/config/tsm/report";
const RTMR_DIR: &str = "/sys/class/misc/tdx_guest/measurements";
const SNP_REPORT_LEN: usize = 0x4A0;
const VCEK_GUID: [u8; 16] =
    [0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];
const ASK_GUID: [u8; 16] =
    [0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82];

#[derive(Debug, Default)]
struct Item {
    inblob: Option<Vec<u8>>,
    generation: u64,
}

#[derive(Debug)]
struct FakeKernel {
    devices: HashSet<PathBuf>,
    files: Mutex<HashMap<PathBuf, Vec<u8>>>,
    tsm_provider: Option<&'static str>,
    items: Mutex<HashMap<PathBuf, Item>>,
    race: AtomicBool,
    ioctls: Mutex<Vec<u64>>,
    mrconfigid: [u8; 48],
    host_data: [u8; 32],
    rtmrs: Mutex<[[u8; 48]; 4]>,
    rtmr_sysfs: bool,
    /// Certificate buffer the fake host needs (SNP).
    certs_needed: usize,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self {
            devices: HashSet::new(),
            files: Mutex::default(),
            tsm_provider: None,
            items: Mutex::default(),
            race: AtomicBool::new(false),
            ioctls: Mutex::default(),
            mrconfigid: [0; 48],
            host_data: [0; 32],
            rtmrs: Mutex::new([[0; 48]; 4]),
            rtmr_sysfs: false,
            certs_needed: 0,
        }
    }
}

fn snp_report(report_data: &[u8], host_data: &[u8; 32]) -> Vec<u8> {
    let mut r = vec![0u8; SNP_REPORT_LEN];
    r[0..4].copy_from_slice(&2u32.to_le_bytes()); // version 2
    r[0x50..0x90].copy_from_slice(report_data);
    r[0xC0..0xE0].copy_from_slice(host_data);
    r[0x1A0..0x1E0].copy_from_slice(&[0x5a; 64]); // CHIP_ID (Genoa-like)
    r
}

fn cert_table() -> Vec<u8> {
    // Two entries + terminator, then the certificates.
    let mut t = vec![0u8; 24 * 3];
    let vcek = vec![0x30u8; 1300];
    let ask = vec![0x31u8; 1600];
    let (off_v, off_a) = (t.len(), t.len() + vcek.len());
    t[0..16].copy_from_slice(&VCEK_GUID);
    t[16..20].copy_from_slice(&(off_v as u32).to_le_bytes());
    t[20..24].copy_from_slice(&(vcek.len() as u32).to_le_bytes());
    t[24..40].copy_from_slice(&ASK_GUID);
    t[40..44].copy_from_slice(&(off_a as u32).to_le_bytes());
    t[44..48].copy_from_slice(&(ask.len() as u32).to_le_bytes());
    t.extend_from_slice(&vcek);
    t.extend_from_slice(&ask);
    t
}

unsafe fn bytes<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl KernelIo for FakeKernel {
    unsafe fn ioctl(&self, device: &Path, request: u64, arg: *mut c_void) -> io::Result<()> {
        if !self.devices.contains(device) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.ioctls.lock().unwrap().push(request);
        match (device.to_str().unwrap(), request) {
            ("/dev/tdx_guest", 0xC440_5401) => {
                // struct tdx_report_req { u8 reportdata[64]; u8 tdreport[1024]; }
                let req = unsafe { bytes(arg as u64, 1088) };
                let (rd, report) = req.split_at_mut(64);
                report[128..192].copy_from_slice(rd);
                report[576..624].copy_from_slice(&self.mrconfigid);
                for (i, r) in self.rtmrs.lock().unwrap().iter().enumerate() {
                    report[720 + 48 * i..768 + 48 * i].copy_from_slice(r);
                }
                Ok(())
            }
            ("/dev/sev-guest", 0xC020_5302) => {
                let ioc = unsafe { bytes(arg as u64, 32) };
                assert_eq!(ioc[0], 1, "msg_version");
                let req = unsafe { bytes(rd_u64(ioc, 8), 112) };
                let resp = unsafe { bytes(rd_u64(ioc, 16), 4000) };
                let (certs_addr, certs_len) = (rd_u64(req, 96), rd_u32(req, 104) as usize);
                assert_eq!(certs_len % 4096, 0, "certs_len must be page aligned");
                if certs_len < self.certs_needed {
                    req[104..108].copy_from_slice(&(self.certs_needed as u32).to_le_bytes());
                    ioc[24..32].copy_from_slice(&(1u64 << 32).to_le_bytes());
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let table = cert_table();
                let certs = unsafe { bytes(certs_addr, certs_len) };
                certs[..table.len()].copy_from_slice(&table);
                resp[4..8].copy_from_slice(&(SNP_REPORT_LEN as u32).to_le_bytes());
                resp[32..32 + SNP_REPORT_LEN].copy_from_slice(&snp_report(&req[..64], &self.host_data));
                Ok(())
            }
            ("/dev/uv", 0xC040_7501) => {
                let cb = unsafe { bytes(arg as u64, 0x40) };
                assert_eq!(rd_u32(cb, 0x10), 0x138, "argument_len is sizeof(struct uvio_attest)");
                let att = unsafe { bytes(rd_u64(cb, 8), 0x138) };
                let arcb = unsafe { bytes(rd_u64(att, 0), rd_u32(att, 0x128) as usize) }.to_vec();
                let meas_len = rd_u32(att, 0x12c) as usize;
                let add_len = rd_u32(att, 0x130) as usize;
                let ud_len = u16::from_le_bytes(att[0x134..0x136].try_into().unwrap()) as usize;
                let user_data = att[0x18..0x18 + ud_len].to_vec();
                let mac = Sha512::new().chain_update(&arcb).chain_update(&user_data).finalize();
                unsafe { bytes(rd_u64(att, 8), meas_len) }.copy_from_slice(&mac[..meas_len]);
                if add_len > 0 {
                    unsafe { bytes(rd_u64(att, 0x10), add_len) }.fill(0xAD);
                }
                att[0x118..0x128].fill(0xC1);
                cb[4..6].copy_from_slice(&1u16.to_le_bytes());
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::ENOTTY)),
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some(dir) = path.parent().filter(|d| d.parent() == Some(Path::new(TSM))) {
            let mut items = self.items.lock().unwrap();
            let item = items.get_mut(dir).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let provider = self.tsm_provider.unwrap();
            return match path.file_name().unwrap().to_str().unwrap() {
                "provider" => Ok(format!("{provider}\n").into_bytes()),
                "generation" => Ok(format!("{}\n", item.generation).into_bytes()),
                "outblob" => {
                    if self.race.load(Ordering::SeqCst) {
                        item.generation += 1; // another writer slipped in
                    }
                    let inblob = item.inblob.clone().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                    Ok(if provider == "tdx_guest" {
                        [b"TDXQUOTE".as_slice(), &inblob].concat()
                    } else {
                        snp_report(&inblob, &self.host_data)
                    })
                }
                "auxblob" if provider == "sev_guest" => Ok(cert_table()),
                _ => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            };
        }
        if let Some(i) = rtmr_index(path).filter(|_| self.rtmr_sysfs) {
            return Ok(self.rtmrs.lock().unwrap()[i].to_vec());
        }
        self.files.lock().unwrap().get(path).cloned().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if let Some(i) = rtmr_index(path).filter(|_| self.rtmr_sysfs) {
            if data.len() != 48 {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let mut rtmrs = self.rtmrs.lock().unwrap();
            let next = Sha384::new().chain_update(rtmrs[i]).chain_update(data).finalize();
            rtmrs[i].copy_from_slice(&next);
            return Ok(());
        }
        let dir = path.parent().unwrap();
        let mut items = self.items.lock().unwrap();
        let item = items.get_mut(dir).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        match path.file_name().unwrap().to_str().unwrap() {
            "inblob" if data.len() <= 64 => {
                item.inblob = Some(data.to_vec());
                item.generation += 1;
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        if self.tsm_provider.is_none() || path.parent() != Some(Path::new(TSM)) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.items.lock().unwrap().insert(path.to_owned(), Item::default());
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.items.lock().unwrap().remove(path).map(|_| ()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn exists(&self, path: &Path) -> bool {
        self.devices.contains(path)
            || (path == Path::new(TSM) && self.tsm_provider.is_some())
            || (self.rtmr_sysfs && rtmr_index(path).is_some())
            || self.files.lock().unwrap().contains_key(path)
    }
}

fn rtmr_index(path: &Path) -> Option<usize> {
    let name = path.strip_prefix(RTMR_DIR).ok()?.to_str()?;
    name.strip_prefix("rtmr")?.strip_suffix(":sha384")?.parse().ok().filter(|i| *i < 4)
}

fn tdx_kernel() -> FakeKernel {
    let k = FakeKernel {
        devices: ["/dev/tdx_guest".into()].into(),
        tsm_provider: Some("tdx_guest"),
        mrconfigid: [0x11; 48],
        rtmr_sysfs: true,
        ..FakeKernel::default()
    };
    k.files.lock().unwrap().insert("/sys/firmware/acpi/tables/data/CCEL".into(), b"CCEL-TABLE".to_vec());
    k
}

fn evidence(a: &dyn Attester, rd: &[u8]) -> Result<serde_json::Value, AttesterError> {
    a.evidence(&EvidenceRequest { report_data: rd, kbs_nonce: None, aa_eventlog: None })
}

#[test]
fn tdx_quote_binds_zero_padded_report_data_and_cleans_up() {
    let k = Arc::new(tdx_kernel());
    let tdx = TdxAttester::new(k.clone());
    let rd = [0xAB; 48];
    let ev = evidence(&tdx, &rd).unwrap();
    let mut keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["aa_eventlog", "cc_eventlog", "quote"]);
    let quote = STANDARD.decode(ev["quote"].as_str().unwrap()).unwrap();
    let mut expected = b"TDXQUOTE".to_vec();
    expected.extend_from_slice(&rd);
    expected.extend_from_slice(&[0; 16]);
    assert_eq!(quote, expected, "inblob = report_data zero-padded to 64 bytes");
    assert_eq!(ev["cc_eventlog"], STANDARD.encode(b"CCEL-TABLE"));
    assert!(k.items.lock().unwrap().is_empty(), "report item removed");
    assert!(evidence(&tdx, &[0; 65]).is_err(), "more than 64 bytes cannot be bound");
}

#[test]
fn tdx_refuses_another_provider_and_a_moved_generation() {
    let k = Arc::new(FakeKernel { tsm_provider: Some("sev_guest"), ..tdx_kernel() });
    let err = evidence(&TdxAttester::new(k.clone()), &[1; 48]).unwrap_err();
    assert!(matches!(&err, AttesterError::WrongProvider { found, .. } if found == "sev_guest"), "{err}");
    assert!(k.items.lock().unwrap().is_empty());

    let k = Arc::new(tdx_kernel());
    k.race.store(true, Ordering::SeqCst);
    let err = evidence(&TdxAttester::new(k.clone()), &[1; 48]).unwrap_err();
    assert!(matches!(err, AttesterError::GenerationChanged { before: 1, after: 2 }), "{err}");
    assert!(k.items.lock().unwrap().is_empty());
}

#[test]
fn tdx_tdreport_ioctl_gives_mrconfigid_and_rtmrs() {
    let k = Arc::new(FakeKernel { rtmr_sysfs: false, ..tdx_kernel() });
    k.rtmrs.lock().unwrap()[3] = [0x33; 48];
    let tdx = TdxAttester::new(k.clone());
    assert_eq!(tdx.initdata_field().unwrap(), vec![0x11; 48]);
    assert_eq!(tdx.read_register(3).unwrap(), vec![0x33; 48]);
    let report = tdx.tdreport(&[0x77; 64]).unwrap();
    assert_eq!(&report[128..192], &[0x77; 64], "REPORTDATA at offset 128 of the TDREPORT");
    assert!(k.ioctls.lock().unwrap().iter().all(|r| *r == 0xC440_5401));
    let err = tdx.extend_register(2, &[0; 48]).unwrap_err();
    assert!(matches!(err, AttesterError::Unsupported { .. }), "{err}");
}

#[test]
fn tdx_runtime_measurements_extend_rtmr_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(tdx_kernel());
    let tdx: Arc<dyn Attester> = Arc::new(TdxAttester::new(k.clone()));
    let log = EventLog::open(dir.path().join("log"), tdx.clone()).unwrap();
    log.extend(2, "github.com/confidential-containers", "PullImage", "quay.io/x/y:1").unwrap();
    log.extend(2, "github.com/confidential-containers", "PullImage", "quay.io/x/z:2").unwrap();
    assert_eq!(log.replayed(2).unwrap().unwrap(), k.rtmrs.lock().unwrap()[2].to_vec());
    let ev = tdx
        .evidence(&EvidenceRequest { report_data: &[0; 48], kbs_nonce: None, aa_eventlog: log.aael(2).as_deref() })
        .unwrap();
    assert!(ev["aa_eventlog"].as_str().unwrap().contains("PullImage quay.io/x/z:2"));
    assert!(tdx.extend_register(4, &[0; 48]).is_err());
}

fn config_with_initdata(dir: &Path, initdata: &str, attester: &str) -> Config {
    let path = dir.join("initdata.toml");
    std::fs::write(&path, initdata).unwrap();
    let text = format!(
        "initdata = \"{}\"\n[attester]\ntype = \"{attester}\"\n[measurement]\neventlog = \"{}\"\n",
        path.display(),
        dir.join("log").display()
    );
    Config::from_toml(&text, Path::new("aa.toml")).unwrap()
}

#[test]
fn initdata_mismatch_refuses_start_and_match_starts() {
    let dir = tempfile::tempdir().unwrap();
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = \"\"\"\n[token_configs.kbs]\nurl = 'http://10.0.2.2:8080'\n\"\"\"\n";
    let cfg = config_with_initdata(dir.path(), doc, "tdx");
    let err = Agent::start(&cfg, StartOptions { kernel: Arc::new(tdx_kernel()), eventlog: true }).unwrap_err();
    assert!(matches!(err, AgentError::Initdata(InitdataError::Mismatch { .. })), "{err}");
    assert!(err.to_string().contains("refusing to start"), "{err}");

    let digest: [u8; 48] = Sha384::digest(doc.as_bytes()).into();
    let k = FakeKernel { mrconfigid: digest, ..tdx_kernel() };
    let agent = Agent::start(&cfg, StartOptions { kernel: Arc::new(k), eventlog: true }).unwrap();
    assert_eq!(agent.tee(), TeeKind::Tdx);
}

#[test]
fn snp_initdata_is_compared_with_host_data() {
    let dir = tempfile::tempdir().unwrap();
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
    let cfg = config_with_initdata(dir.path(), doc, "snp");
    let host_data: [u8; 32] = sha2::Sha256::digest(doc.as_bytes()).into();
    let good = FakeKernel { devices: ["/dev/sev-guest".into()].into(), host_data, ..FakeKernel::default() };
    Agent::start(&cfg, StartOptions { kernel: Arc::new(good), eventlog: false }).unwrap();
    let bad = FakeKernel { devices: ["/dev/sev-guest".into()].into(), host_data: [9; 32], ..FakeKernel::default() };
    let err = Agent::start(&cfg, StartOptions { kernel: Arc::new(bad), eventlog: false }).unwrap_err();
    assert!(matches!(err, AgentError::Initdata(InitdataError::Mismatch { .. })), "{err}");
}

fn check_snp_evidence(ev: &serde_json::Value, rd: &[u8]) {
    let report = &ev["attestation_report"];
    let got: Vec<u8> = report["report_data"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let mut padded = rd.to_vec();
    padded.resize(64, 0);
    assert_eq!(got, padded, "report_data zero-padded into the report");
    assert_eq!(report["version"], 2);
    let chain = ev["cert_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["data"].as_array().unwrap().len(), 1300);
    assert_eq!(chain[1]["data"].as_array().unwrap().len(), 1600);
}

#[test]
fn snp_ext_report_ioctl_grows_the_cert_buffer_and_returns_the_chain() {
    let k = Arc::new(FakeKernel {
        devices: ["/dev/sev-guest".into()].into(),
        certs_needed: 5 * 4096,
        ..FakeKernel::default()
    });
    let snp = SnpAttester::new(k.clone());
    let rd = [0x42; 48];
    check_snp_evidence(&evidence(&snp, &rd).unwrap(), &rd);
    assert_eq!(*k.ioctls.lock().unwrap(), vec![0xC020_5302, 0xC020_5302], "retried once with a larger buffer");
}

#[test]
fn snp_refuses_an_unbounded_cert_buffer() {
    let k = Arc::new(FakeKernel {
        devices: ["/dev/sev-guest".into()].into(),
        certs_needed: 64 << 20,
        ..FakeKernel::default()
    });
    let err = evidence(&SnpAttester::new(k), &[0; 32]).unwrap_err();
    assert!(err.to_string().contains("certificate buffer"), "{err}");
}

#[test]
fn snp_via_configfs_tsm_reads_report_and_auxblob() {
    let k = Arc::new(FakeKernel { tsm_provider: Some("sev_guest"), ..FakeKernel::default() });
    let rd = [0x24; 64];
    check_snp_evidence(&evidence(&SnpAttester::new(k.clone()), &rd).unwrap(), &rd);
    assert!(k.ioctls.lock().unwrap().is_empty(), "configfs-tsm preferred over the ioctl");
}

#[test]
fn se_evidence_answers_the_request_from_the_kbs_nonce() {
    let k = Arc::new(FakeKernel { devices: ["/dev/uv".into()].into(), ..FakeKernel::default() });
    let se = SeAttester::new(k);
    let nonce = serde_json::json!({
        "request_blob": STANDARD.encode([7u8; 512]),
        "measurement_size": 64,
        "additional_size": 16,
        "encr_measurement_key": STANDARD.encode([1u8; 32]),
        "encr_request_nonce": STANDARD.encode([2u8; 16]),
        "image_hdr_tags": STANDARD.encode([3u8; 208]),
    })
    .to_string();
    let rd = [0x5e; 64];
    let ev = se.evidence(&EvidenceRequest { report_data: &rd, kbs_nonce: Some(&nonce), aa_eventlog: None }).unwrap();
    let field = |k: &str| STANDARD.decode(ev[k].as_str().unwrap()).unwrap();
    assert_eq!(field("user_data"), rd.to_vec());
    let mac = Sha512::new().chain_update([7u8; 512]).chain_update(rd).finalize();
    assert_eq!(field("measurement"), mac.to_vec(), "the Ultravisor saw our ARCB and user data");
    assert_eq!(field("additional_data"), vec![0xAD; 16]);
    assert_eq!(field("cuid"), vec![0xC1; 16]);
    assert_eq!(field("image_hdr_tags"), vec![3u8; 208]);

    let err =
        se.evidence(&EvidenceRequest { report_data: &rd, kbs_nonce: Some("garbage"), aa_eventlog: None }).unwrap_err();
    assert!(err.to_string().contains("not an SE attestation request"), "{err}");
    let huge = nonce.replace("\"measurement_size\":64", "\"measurement_size\":100000");
    assert!(se.evidence(&EvidenceRequest { report_data: &rd, kbs_nonce: Some(&huge), aa_eventlog: None }).is_err());
}

#[test]
fn detection_picks_the_hardware_and_never_sample() {
    assert_eq!(attester::detect(&tdx_kernel()).unwrap(), TeeKind::Tdx);
    let snp = FakeKernel { devices: ["/dev/sev-guest".into()].into(), ..FakeKernel::default() };
    assert_eq!(attester::detect(&snp).unwrap(), TeeKind::Snp);
    let se = FakeKernel { devices: ["/dev/uv".into()].into(), ..FakeKernel::default() };
    se.files.lock().unwrap().insert("/sys/firmware/uv/prot_virt_guest".into(), b"1\n".to_vec());
    assert_eq!(attester::detect(&se).unwrap(), TeeKind::Se);
    let err = attester::build(AttesterChoice::Auto, Arc::new(FakeKernel::default())).unwrap_err();
    assert!(matches!(err, AttesterError::NoTeeDetected), "{err}");
    let sample = attester::build(AttesterChoice::Sample, Arc::new(FakeKernel::default())).unwrap();
    assert_eq!(sample.tee(), TeeKind::Sample);
    let az = attester::build(AttesterChoice::AzSnpVtpm, Arc::new(FakeKernel::default())).unwrap_err();
    assert!(az.to_string().contains("TPM"), "{az}");
}

/// Serves `agent` on a unix socket in this process (the daemon's own server
/// and service table) and connects a ttrpc client to it.
async fn serve(
    agent: Agent,
    dir: &Path,
) -> (protos::attestation_agent_ttrpc::AttestationAgentServiceClient, tokio::sync::oneshot::Sender<()>) {
    let socket = format!("unix://{}", dir.join("aa.sock").display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = socket.clone();
    tokio::spawn(async move {
        attestation_agent::server::serve_until(Arc::new(agent), &addr, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.join("aa.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let client = ttrpc::r#async::Client::connect(&socket).await.unwrap();
    (protos::attestation_agent_ttrpc::AttestationAgentServiceClient::new(client), stop)
}

fn ttrpc_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

fn agent_for(kernel: FakeKernel, tee: &str, dir: &Path) -> Agent {
    let text = format!("[attester]\ntype = \"{tee}\"\n[measurement]\neventlog = \"{}\"\n", dir.join("log").display());
    let cfg = Config::from_toml(&text, Path::new("aa.toml")).unwrap();
    Agent::start(&cfg, StartOptions { kernel: Arc::new(kernel), eventlog: true }).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_init_data_over_ttrpc_compares_mrconfigid_truncating_sha512() {
    use protos::attestation_agent::BindInitDataRequest;
    let dir = tempfile::tempdir().unwrap();
    let sha512 = Sha512::digest(b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n").to_vec();
    let kernel = FakeKernel { mrconfigid: sha512[..48].try_into().unwrap(), ..tdx_kernel() };
    let (aa, _stop) = serve(agent_for(kernel, "tdx", dir.path()), dir.path()).await;

    let req = BindInitDataRequest { Digest: sha512.clone(), ..Default::default() };
    aa.bind_init_data(ttrpc_ctx(), &req).await.unwrap();
    let wrong = BindInitDataRequest { Digest: Sha384::digest(b"another document").to_vec(), ..Default::default() };
    match aa.bind_init_data(ttrpc_ctx(), &wrong).await.unwrap_err() {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
            assert!(s.message().contains("does not match the hardware measurement"), "{}", s.message());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snp_over_ttrpc_binds_host_data_and_answers_not_supported_for_runtime_measurement() {
    use protos::attestation_agent::{BindInitDataRequest, ExtendRuntimeMeasurementRequest, RuntimeMeasurementResult};
    let dir = tempfile::tempdir().unwrap();
    let sha384 = Sha384::digest(b"initdata").to_vec();
    let kernel = FakeKernel {
        devices: ["/dev/sev-guest".into()].into(),
        host_data: sha384[..32].try_into().unwrap(),
        ..FakeKernel::default()
    };
    let (aa, _stop) = serve(agent_for(kernel, "snp", dir.path()), dir.path()).await;
    aa.bind_init_data(ttrpc_ctx(), &BindInitDataRequest { Digest: sha384, ..Default::default() }).await.unwrap();

    // SNP has no runtime register: an answer guest-components' clients log
    // and go on from (Result = NOT_SUPPORTED), not an UNIMPLEMENTED status.
    let ext = ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: "x".into(),
        ..Default::default()
    };
    let resp = aa.extend_runtime_measurement(ttrpc_ctx(), &ext).await.unwrap();
    assert_eq!(resp.Result.enum_value(), Ok(RuntimeMeasurementResult::NOT_SUPPORTED));
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(!log.contains("PullImage"), "nothing logged for an unmeasured event: {log}");
}
