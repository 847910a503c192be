//! The host side of the CoCo demo, made fresh for every run (no key is ever
//! committed): a TLS `docker-registry` and the project's test KBS (TLS, sample
//! TEE) on 127.0.0.1 (the guest reaches them at 10.0.2.2 through QEMU user
//! networking), and an image built here with umoci — busybox, plus a layer
//! with a file only that layer holds — encrypted for a KEK held by the KBS
//! (ocicrypt, `provider.attestation-agent` packet, `image-pull encrypt`) and
//! cosign-signed (ECDSA P-256 over the cosign payload, by openssl; Debian's
//! skopeo has sigstore signing patched out). The same encrypted image is
//! also pushed under another repository signed by a stranger's key.
//!
//! The KBS serves the KEK, the signature policy (containers-policy.json,
//! `sigstoreSigned`) and the owner's public key; initdata's cdh.toml points
//! at the policy and aa.toml at the KBS, with the two self-signed
//! certificates as the guest's only trust.
//!
//! Everything lives under one temporary directory and is stopped on drop.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde_json::json;

use crate::initdata::Document;

/// What the host's loopback is from inside the guest (QEMU user networking).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// KBS resource paths (`kbs:///<path>`).
pub const KEK_PATH: &str = "default/key/coco-demo";
pub const POLICY_PATH: &str = "default/security-policy/coco-demo";
pub const COSIGN_KEY_PATH: &str = "default/cosign-public-key/coco-demo";
/// The file only the image's second (encrypted) layer holds, and its line.
pub const SECRET_FILE: &str = "/secret/message";
pub const SECRET_LINE: &str = "decrypted layer: the KBS released the key to this attested guest";
/// The image's repositories: the owner-signed one and the stranger-signed one.
pub const REPO: &str = "coco/demo";
pub const FORGED_REPO: &str = "coco/forged";

/// The kernel parameter that has the agent launch the attestation-agent and
/// the data hub (kata's `agent.guest_components_procs`).
pub const GUEST_COMPONENTS_PROCS: &str = "agent.guest_components_procs=confidential-data-hub";

/// Host tools the demo host needs (Debian packages in parentheses).
pub const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "openssl", "busybox"];

pub struct CocoHost {
    pub dir: tempfile::TempDir,
    registry: Option<Child>,
    pub registry_port: u16,
    /// Always `Some` until dropped (on a thread of its own: a runtime
    /// cannot be dropped from within another's async context).
    kbs_rt: Option<tokio::runtime::Runtime>,
    kbs: Option<test_kbs::TestKbs>,
    pub kbs_port: u16,
    pub registry_cert: String,
    pub kbs_cert: String,
    /// How long each preparation step took.
    pub timings: Vec<(String, Duration)>,
}

impl CocoHost {
    /// Builds, encrypts, signs and pushes the images and starts the KBS.
    /// `image_pull` is the host `image-pull` binary (for `encrypt`).
    pub fn start(image_pull: &Path) -> anyhow::Result<CocoHost> {
        let dir = tempfile::Builder::new().prefix("cvm-coco.").tempdir_in("/tmp")?;
        let d = dir.path().to_owned();
        let mut timings = Vec::new();
        let mut timed = |name: &str, t: Instant| timings.push((name.to_owned(), t.elapsed()));

        let t = Instant::now();
        let (reg_crt, reg_key) = self_signed(&d, "registry")?;
        let (kbs_crt, kbs_key) = self_signed(&d, "kbs")?;
        let (owner_key, owner_pub) = ec_key(&d, "owner")?;
        let (stranger_key, _) = ec_key(&d, "stranger")?;
        let mut kek = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut kek)?;
        std::fs::write(d.join("kek.bin"), kek)?;
        timed("keys and certificates (openssl)", t);

        let t = Instant::now();
        let (registry, registry_port) = start_registry(&d, &reg_crt, &reg_key)?;
        let mut host = CocoHost {
            registry: Some(registry),
            registry_port,
            kbs_rt: Some(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?),
            kbs: None,
            kbs_port: 0,
            registry_cert: std::fs::read_to_string(&reg_crt)?,
            kbs_cert: std::fs::read_to_string(&kbs_crt)?,
            timings: Vec::new(),
            dir,
        };
        timed("TLS registry (docker-registry)", t);

        let t = Instant::now();
        build_image(&d)?;
        timed("image: busybox layer + secret layer (umoci)", t);
        let t = Instant::now();
        let recipient = format!("provider:attestation-agent:kbs:///{KEK_PATH}:{}", d.join("kek.bin").display());
        run(Command::new(image_pull)
            .arg("encrypt")
            .args(["--recipient", &recipient])
            .arg(format!("{}:t", d.join("plain").display()))
            .arg(format!("{}:t", d.join("enc").display())))?;
        timed("encrypt every layer for the KBS-held KEK (image-pull encrypt)", t);

        let t = Instant::now();
        let ca_dir = d.join("ca");
        std::fs::create_dir_all(&ca_dir)?;
        std::fs::copy(&reg_crt, ca_dir.join("ca.crt"))?;
        for repo in [REPO, FORGED_REPO] {
            push(&ca_dir, &d.join("enc"), "t", &format!("127.0.0.1:{registry_port}/{repo}:1"))?;
        }
        let digest = manifest_digest(&ca_dir, &format!("127.0.0.1:{registry_port}/{REPO}:1"))?;
        let guest_host = format!("{HOST_FROM_GUEST}:{registry_port}");
        cosign_sign(&d, &ca_dir, registry_port, REPO, &digest, &format!("{guest_host}/{REPO}"), &owner_key)?;
        cosign_sign(
            &d,
            &ca_dir,
            registry_port,
            FORGED_REPO,
            &digest,
            &format!("{guest_host}/{FORGED_REPO}"),
            &stranger_key,
        )?;
        timed("push both repositories, cosign signatures (skopeo, openssl)", t);

        let t = Instant::now();
        let policy = json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {guest_host.clone(): [{
                "type": "sigstoreSigned",
                "keyPath": format!("kbs:///{COSIGN_KEY_PATH}"),
                "signedIdentity": {"type": "matchRepository"}
            }]}}
        });
        let policy_json = serde_json::to_vec_pretty(&policy)?;
        std::fs::write(d.join("policy.json"), &policy_json)?;
        let resources: HashMap<String, Vec<u8>> = [
            (KEK_PATH.to_owned(), kek.to_vec()),
            (POLICY_PATH.to_owned(), policy_json.clone()),
            (COSIGN_KEY_PATH.to_owned(), std::fs::read(&owner_pub)?),
        ]
        .into_iter()
        .collect();
        let tls = Some((host.kbs_cert.clone(), std::fs::read_to_string(&kbs_key)?));
        let config = test_kbs::KbsConfig { resources, tls, ..test_kbs::KbsConfig::default() };
        let rt = host.kbs_rt.as_ref().context("the KBS runtime")?;
        let kbs = outside_any_runtime(|| {
            rt.block_on(test_kbs::TestKbs::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config))
        })?;
        host.kbs_port = kbs.url().rsplit(':').next().and_then(|p| p.parse().ok()).context("KBS port")?;
        host.kbs = Some(kbs);
        timed("test KBS (TLS, sample TEE): KEK, policy, cosign key", t);
        host.timings = timings;
        Ok(host)
    }

    /// Encrypts the image `plain_layout:tag` for the demo's KEK, pushes it
    /// to `repo:1` and signs it with the owner's key, as the demo image is;
    /// returns the reference as the guest names it.
    pub fn publish_signed(
        &self,
        image_pull: &Path,
        plain_layout: &Path,
        tag: &str,
        repo: &str,
    ) -> anyhow::Result<String> {
        let d = self.dir.path();
        let enc = d.join(format!("enc-{}", repo.replace('/', "-")));
        let recipient = format!("provider:attestation-agent:kbs:///{KEK_PATH}:{}", d.join("kek.bin").display());
        run(Command::new(image_pull)
            .arg("encrypt")
            .args(["--recipient", &recipient])
            .arg(format!("{}:{tag}", plain_layout.display()))
            .arg(format!("{}:{tag}", enc.display())))?;
        let ca_dir = d.join("ca");
        let port = self.registry_port;
        push(&ca_dir, &enc, tag, &format!("127.0.0.1:{port}/{repo}:1"))?;
        let digest = manifest_digest(&ca_dir, &format!("127.0.0.1:{port}/{repo}:1"))?;
        let identity = format!("{HOST_FROM_GUEST}:{port}/{repo}");
        cosign_sign(d, &ca_dir, port, repo, &digest, &identity, &d.join("owner.key"))?;
        Ok(format!("{identity}:1"))
    }

    /// The resources the KBS serves, as `image-pull --key-source-dir` reads
    /// them (`DIR/REPO/TYPE/TAG`), for a pull on this host without attestation.
    pub fn write_key_source_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let d = self.dir.path();
        for (path, src) in [(KEK_PATH, "kek.bin"), (COSIGN_KEY_PATH, "owner.pub"), (POLICY_PATH, "policy.json")] {
            let dest = dir.join(path);
            std::fs::create_dir_all(dest.parent().context("resource path")?)?;
            std::fs::copy(d.join(src), &dest).with_context(|| format!("copying {src}"))?;
        }
        Ok(())
    }

    /// The demo image unencrypted, OCI layout `plain_layout():t`.
    pub fn plain_layout(&self) -> PathBuf {
        self.dir.path().join("plain")
    }

    /// The image as the guest names it.
    pub fn image(&self) -> String {
        format!("{HOST_FROM_GUEST}:{}/{REPO}:1", self.registry_port)
    }

    pub fn forged_image(&self) -> String {
        format!("{HOST_FROM_GUEST}:{}/{FORGED_REPO}:1", self.registry_port)
    }

    pub fn kbs_url(&self) -> String {
        format!("https://{HOST_FROM_GUEST}:{}", self.kbs_port)
    }

    pub fn aa_toml(&self) -> String {
        format!(
            "[token_configs.kbs]\nurl = \"{}\"\ncert = '''\n{}'''\n\n[attester]\n# No TEE under QEMU/TCG: the KBS test peer verifies sample evidence only.\ntype = \"sample\"\n",
            self.kbs_url(),
            self.kbs_cert
        )
    }

    pub fn cdh_toml(&self) -> String {
        format!(
            "socket = \"unix:///run/confidential-containers/cdh.sock\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\nkbs_cert = '''\n{}'''\n\n[image]\nimage_security_policy_uri = \"kbs:///{POLICY_PATH}\"\nextra_root_certificates = ['''\n{}''']\n",
            self.kbs_url(),
            self.kbs_cert,
            self.registry_cert
        )
    }

    /// The initdata the VM boots with: these configs and `policy_rego`.
    pub fn initdata(&self, policy_rego: &str) -> Document {
        let mut doc = Document::new("sha384");
        doc.aa_toml = Some(self.aa_toml());
        doc.cdh_toml = Some(self.cdh_toml());
        doc.policy_rego = Some(policy_rego.to_owned());
        doc
    }
}

impl Drop for CocoHost {
    fn drop(&mut self) {
        let kbs = self.kbs.take();
        if let Some(rt) = self.kbs_rt.take() {
            outside_any_runtime(move || {
                if let Some(kbs) = kbs {
                    rt.block_on(kbs.stop());
                }
                drop(rt);
            });
        }
        if let Some(mut c) = self.registry.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` on a thread of its own: the KBS has its own runtime, which
/// cannot be blocked on from a thread already driving one (the callers').
fn outside_any_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the KBS thread panicked"))
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A self-signed certificate valid for the host as the guest sees it and as
/// the host sees itself (CA:TRUE, as `openssl req -x509` makes it).
fn self_signed(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={HOST_FROM_GUEST}")])
        .args(["-addext", &format!("subjectAltName=IP:{HOST_FROM_GUEST},IP:127.0.0.1")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt))?;
    Ok((crt, key))
}

fn ec_key(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (key, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    run(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]).arg(&key))?;
    run(Command::new("openssl").args(["ec", "-in"]).arg(&key).arg("-pubout").arg("-out").arg(&public))?;
    Ok((key, public))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_registry(dir: &Path, crt: &Path, key: &Path) -> anyhow::Result<(Child, u16)> {
    let storage = dir.join("registry");
    std::fs::create_dir_all(&storage)?;
    let port = free_port()?;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: cvm-coco-demo\n  tls:\n    certificate: {}\n    key: {}\n",
            storage.display(),
            crt.display(),
            key.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start docker-registry")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "docker-registry exited ({status}): {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("docker-registry is not listening on 127.0.0.1:{port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

/// The demo image in OCI layout `dir/plain:t`: layer 1 a busybox rootfs,
/// layer 2 only [`SECRET_FILE`]; the command prints it.
fn build_image(dir: &Path) -> anyhow::Result<()> {
    let layout = dir.join("plain");
    let bundle = dir.join("bundle");
    let l = format!("{}:t", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &l]))?;
    run(Command::new("umoci").args(["unpack", "--rootless", "--image", &l]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let busybox = which("busybox").context("busybox not installed (apt-get install busybox-static)")?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "cat", "echo", "ls", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    run(Command::new("umoci").args(["repack", "--image", &l]).arg(&bundle))?;
    // A repack adds one layer to the image the bundle was unpacked from: unpack
    // the busybox image again so the secret goes into a second layer alone.
    let bundle = dir.join("bundle2");
    run(Command::new("umoci").args(["unpack", "--rootless", "--image", &l]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let secret = rootfs.join(SECRET_FILE.trim_start_matches('/'));
    std::fs::create_dir_all(secret.parent().expect("has a parent"))?;
    std::fs::write(&secret, format!("{SECRET_LINE}\n"))?;
    run(Command::new("umoci").args(["repack", "--image", &l]).arg(&bundle))?;
    run(Command::new("umoci")
        .args(["config", "--image", &l, "--config.cmd", "/bin/sh", "--config.cmd", "-c"])
        .args(["--config.cmd", &format!("cat {SECRET_FILE}")]))?;
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn push(ca_dir: &Path, layout: &Path, tag: &str, dest: &str) -> anyhow::Result<()> {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(ca_dir)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}")))?;
    Ok(())
}

fn manifest_digest(ca_dir: &Path, reference: &str) -> anyhow::Result<String> {
    let out = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(ca_dir)
        .arg(format!("docker://{reference}")))?;
    Ok(format!("sha256:{}", sha256_hex(&out.stdout)?))
}

fn sha256_hex(bytes: &[u8]) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(bytes)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned())
}

/// A cosign signature of `digest` claiming `identity`, signed with `key`:
/// the simple-signing payload as one layer of an OCI manifest tagged
/// `sha256-<hex>.sig` in `repo`, the DER signature in its annotation.
fn cosign_sign(
    dir: &Path,
    ca_dir: &Path,
    port: u16,
    repo: &str,
    digest: &str,
    identity: &str,
    key: &Path,
) -> anyhow::Result<()> {
    let work = tempfile::tempdir_in(dir)?;
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))?;
    let payload_path = work.path().join("payload.json");
    std::fs::write(&payload_path, &payload)?;
    let sig_path = work.path().join("sig.der");
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&sig_path)
        .arg(&payload_path))?;
    let sig = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sig_path)?);
    let layout = work.path().join("layout");
    let blob = |data: &[u8]| -> anyhow::Result<String> {
        let hex = sha256_hex(data)?;
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(blobs.join(&hex), data)?;
        Ok(format!("sha256:{hex}"))
    };
    let layer_digest = blob(&payload)?;
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    }))?;
    let config_digest = blob(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(),
            "digest": layer_digest,
            "annotations": {"dev.cosignproject.cosign/signature": sig}
        }]
    }))?;
    let manifest_digest = blob(&manifest)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "sig"}}]}))?,
    )?;
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    push(ca_dir, &layout, "sig", &format!("127.0.0.1:{port}/{repo}:{tag}"))
}
