//! The whole confidential key-release path for an encrypted image, composed
//! from real parts: a layer key wrapped under a KEK that only the test KBS
//! holds (`provider.attestation-agent` packet, kid `kbs:///default/key/1`);
//! the attestation-agent's ttrpc service on a unix socket, attesting to the
//! KBS with the RCAR protocol (sample evidence); and the real `image-pull
//! --attestation-agent unix://…` pulling from a real Distribution registry.
//!
//! Its own test binary on purpose: the attestation-agent narrows the process
//! umask while it binds its socket, which must not race other tests' files.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::agent::{Agent, StartOptions};
use attestation_agent::attester::device::LinuxKernel;
use attestation_agent::config::Config;
use support::cli::{manifest_of, our_encrypt, p, pull};
use support::layout::{Compression, ImageBuilder, LayerSpec, TarEntry};
use support::registry::{Registry, RegistryOptions};
use test_kbs::{KbsConfig, Policy, TestKbs};

const KID: &str = "kbs:///default/key/1";

/// The test KBS and an attestation-agent serving on `<dir>/aa.sock`, on a
/// runtime of their own (the test drives the CLI from this thread).
struct Guest {
    runtime: tokio::runtime::Runtime,
    kbs: Option<TestKbs>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    addr: String,
}

impl Guest {
    fn start(dir: &Path, kek: &[u8]) -> Guest {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let resources = HashMap::from([("default/key/1".to_string(), kek.to_vec())]);
        let kbs = runtime.block_on(TestKbs::start(KbsConfig { resources, ..KbsConfig::default() })).unwrap();
        let socket = dir.join("aa.sock");
        let addr = format!("unix://{}", socket.display());
        let toml = format!(
            "[token_configs.kbs]\nurl = \"{}\"\ninsecure_http = true\n\n[attester]\ntype = \"sample\"\n\n[server]\nsocket = \"{addr}\"\n",
            kbs.url()
        );
        let config = Config::from_toml(&toml, Path::new("aa.toml")).expect("aa.toml");
        let agent = Agent::start(&config, StartOptions { kernel: Arc::new(LinuxKernel), eventlog: false })
            .expect("attestation-agent starts with the sample attester");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn({
            let addr = addr.clone();
            async move {
                attestation_agent::server::serve_until(Arc::new(agent), &addr, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(!served.is_finished(), "attestation-agent stopped before serving");
            assert!(Instant::now() < deadline, "attestation-agent did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Guest { runtime, kbs: Some(kbs), stop: Some(stop), served: Some(served), addr }
    }

    fn kbs(&self) -> &TestKbs {
        self.kbs.as_ref().unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.runtime.block_on(served);
        }
        if let Some(kbs) = self.kbs.take() {
            self.runtime.block_on(kbs.stop());
        }
    }
}

#[test]
fn provider_encrypted_image_decrypts_with_the_kek_the_kbs_releases_through_the_attestation_agent() {
    if !support::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    // Random per run: the KBS and the encrypting side share it, nothing else.
    let mut kek = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut kek).unwrap();
    let kek_file = keys.path().join("kek.bin");
    std::fs::write(&kek_file, kek).unwrap();
    let guest = Guest::start(keys.path(), &kek);

    let reg = Registry::start(RegistryOptions::plain());
    let img = ImageBuilder::new()
        .layer(LayerSpec::entries(
            vec![
                TarEntry::dir("etc"),
                TarEntry::file("etc/app.conf", "secret configuration\n"),
                TarEntry::file("app/model.bin", support::tarball::noise(3, 200_000)),
            ],
            Compression::Gzip,
        ))
        .layer(LayerSpec::entries(vec![TarEntry::file("app/VERSION", "2\n").owner(1000, 1000)], Compression::Zstd))
        .cmd(&["/app/run"])
        .build();
    let plain = tempfile::tempdir().unwrap();
    img.write_to_layout(plain.path(), "t");
    reg.push_oci_layout(plain.path(), "t", "app:plain");
    let enc = tempfile::tempdir().unwrap();
    our_encrypt(plain.path(), enc.path(), &[format!("provider:attestation-agent:{KID}:{}", p(&kek_file))]);
    let m = manifest_of(enc.path(), "t");
    for layer in m["layers"].as_array().unwrap() {
        assert!(layer["mediaType"].as_str().unwrap().ends_with("+encrypted"), "{layer}");
        assert!(layer["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"].is_string());
        assert!(layer["annotations"]["org.opencontainers.image.enc.keys.jwe"].is_null(), "provider is the only way in");
    }
    reg.push_oci_layout(enc.path(), "t", "app:enc");
    let expected = pull(&reg, tempfile::tempdir().unwrap().path(), "app:plain", &[]).ok().rootfs();
    let aa = ["--attestation-agent", guest.addr.as_str()];

    // The KBS refuses the key (resource policy): the pull fails closed and
    // says which key the KBS would not release.
    guest.kbs().update(|c| c.policy = Policy::DenyAll);
    let work = tempfile::tempdir().unwrap();
    let err = pull(&reg, work.path(), "app:enc", &aa).refused_leaving_nothing();
    println!("KBS policy denies the KEK -> {}", err.lines().last().unwrap_or_default());
    assert!(err.contains(KID) && err.contains("refused by the key broker"), "{err}");

    // Released after attestation: the decrypted tree is the plain image's.
    guest.kbs().update(|c| c.policy = Policy::AllowAll);
    let stats = guest.kbs().stats();
    let released_before = stats.resource_ok.load(Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let got = pull(&reg, work.path(), "app:enc", &aa);
    assert_eq!(got.ok().rootfs(), expected);
    assert!(stats.attest_ok.load(Ordering::SeqCst) >= 1, "the guest attested to the KBS");
    assert!(stats.resource_ok.load(Ordering::SeqCst) > released_before, "the KEK came from the KBS");
    assert_eq!(got.staging_left(), 0);

    // A KBS that releases a different KEK: the layer key does not open.
    guest.kbs().update(|c| {
        c.resources.insert("default/key/1".into(), vec![0x11; 32]);
    });
    let work = tempfile::tempdir().unwrap();
    let err = pull(&reg, work.path(), "app:enc", &aa).refused_leaving_nothing();
    println!("KBS releases a different KEK -> {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("did not open"), "{err}");
}
