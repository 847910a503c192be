//! `image-pull`: pull an image inside the guest and unpack it as an OCI bundle.
//!
//!     image-pull [--policy policy.json|kbs:///…] [--registries-d DIR]
//!                [--attestation-agent ADDR | --key-source-dir DIR]
//!                [--work-dir DIR] [--plain-http] [--ca-file PEM] [--creds USER:PASS]
//!                [--auth-file auth.json] [--registry-config FILE] [--platform os/arch] REF BUNDLE_DIR
//!     image-pull gc [--work-dir DIR]
//!     image-pull encrypt --recipient jwe:PUB.pem|provider:NAME:kbs:///R/T/T:KEKFILE … SRC_LAYOUT:TAG DST_LAYOUT:TAG
//!
//! Encrypted images: `--decryption-key FILE` (repeatable; PEM or JWK private
//! key) and, for provider packets, `--attestation-agent unix:///…` (the KEK is
//! released by the KBS after attestation) or `--key-source-dir DIR` (development only).
//!
//! A thin shell over [`image_rs::client::ImageClient`]: flags become an
//! `ImageClientConfig`, the pull itself is the library's.
//!
//! Exit 0 on success; otherwise non-zero with a one-line reason on stderr.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use image_rs::bundle::{RootfsKind, RootfsMode};
use image_rs::client::{ImageClient, ImageClientConfig, SigstoreConfig};
use image_rs::ocicrypt::encrypt::{encrypt_layout, Recipient};
use image_rs::ocicrypt::DecryptionKey;
use image_rs::pull::parse_reference;
use image_rs::registry::auth::Credentials;
use image_rs::registry::config::RegistriesConfig;
use image_rs::registry::Platform;
use image_rs::store::LayerStore;

#[derive(Debug, Parser)]
#[command(name = "image-pull", version, about = "Pull an OCI image inside the guest into a container bundle")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pull: PullArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove layers no pulled image references.
    Gc {
        #[arg(long, default_value = DEFAULT_WORK_DIR)]
        work_dir: PathBuf,
    },
    /// Encrypt an image of an OCI layout (ocicrypt) into another layout.
    Encrypt(EncryptArgs),
}

#[derive(Debug, Args)]
struct EncryptArgs {
    /// `jwe:PUBKEY_FILE` (PEM or JWK) or `provider:NAME:kbs:///REPO/TYPE/TAG:KEK_FILE`
    /// (KEK_FILE: 32 raw bytes); repeatable, at least one.
    #[arg(long = "recipient", value_name = "SPEC", required = true)]
    recipients: Vec<String>,
    /// Source image, `LAYOUT_DIR:TAG`.
    #[arg(value_name = "SRC_LAYOUT:TAG")]
    src: String,
    /// Destination, `LAYOUT_DIR:TAG` (created if missing; may be the source layout).
    #[arg(value_name = "DST_LAYOUT:TAG")]
    dst: String,
}

const DEFAULT_WORK_DIR: &str = "/run/image-rs";

#[derive(Debug, Args)]
struct PullArgs {
    /// Store for layers and image records.
    #[arg(long, default_value = DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Allow plain HTTP to the image's registry.
    #[arg(long)]
    plain_http: bool,
    /// Extra CA certificate(s) (PEM) to trust for registries; repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,
    /// Registry credentials USER:PASS (used over --auth-file).
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<Credentials>,
    /// containers/docker auth.json with registry credentials.
    #[arg(long = "auth-file", visible_alias = "auth", value_name = "FILE")]
    auth_file: Option<PathBuf>,
    /// registries.conf-style TOML: mirrors, remapping, insecure/blocked registries, proxy, CAs.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Signature policy (containers-policy.json), a file or a kbs:/// URI. Without it every
    /// image is accepted unverified, with a warning (see README).
    #[arg(long, value_name = "FILE|kbs:///REPO/TYPE/TAG")]
    policy: Option<String>,
    /// containers-registries.d directory: where simple-signing signatures live (lookaside).
    #[arg(long = "registries-d", value_name = "DIR")]
    registries_d: Option<PathBuf>,
    /// Platform to select from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<Platform>,
    /// Layers fetched and unpacked at once.
    #[arg(long, default_value_t = 3)]
    max_concurrent_layers: usize,
    /// Most bytes of file content one layer may unpack (e.g. 2G); the free
    /// space of the store's filesystem bounds it in any case.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_layer_bytes: Option<u64>,
    /// Free space kept on the store's filesystem while unpacking: this percent
    /// of its size (default 5), at most --free-space-reserve (default 64M).
    #[arg(long, value_name = "PERCENT")]
    free_space_reserve_percent: Option<u64>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    free_space_reserve: Option<u64>,
    /// Abandon and resume a blob fetch slower than this many bytes/s (default 1024; 0: off).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    min_transfer_rate: Option<u64>,
    /// How to build BUNDLE_DIR/rootfs.
    #[arg(long, value_enum, default_value = "auto")]
    rootfs: RootfsArg,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Private key (PEM or JWK) for encrypted layers; repeatable, as skopeo's flag.
    #[arg(long = "decryption-key", value_name = "FILE")]
    decryption_keys: Vec<PathBuf>,
    /// Development only: serve kbs:/// resources (layer KEKs, signature policy and keys) from DIR/REPO/TYPE/TAG,
    /// without attestation. In a confidential guest the attestation-agent does this.
    #[arg(long, value_name = "DIR", conflicts_with = "attestation_agent")]
    key_source_dir: Option<PathBuf>,
    /// Resolve kbs:/// resources (layer KEKs, signature policy and keys) through the
    /// attestation-agent at ADDR (unix:///path): released by the KBS only after attestation.
    #[arg(long, value_name = "ADDR")]
    attestation_agent: Option<String>,
    /// Image reference, e.g. registry.example/app:1 or …@sha256:…
    #[arg(value_name = "REF")]
    reference: Option<String>,
    /// Bundle directory to create (config.json and rootfs/).
    #[arg(value_name = "BUNDLE_DIR")]
    bundle: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RootfsArg {
    Auto,
    Overlay,
    Flatten,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_target(false);
    let _ = match cli.pull.log_format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("image-pull: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Gc { work_dir }) => gc(&work_dir),
        Some(Command::Encrypt(args)) => encrypt(&args),
        None => runtime.block_on(pull(cli.pull)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-pull: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread its own malloc arena; with a download task and an
/// unpack thread per layer that multiplies resident memory for no gain here.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `123`, `64K`, `512M`, `2G` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 512M or 2G"))
}

/// The error chain on one line, without repeating causes a message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out.replace('\n', " ")
}

fn gc(work_dir: &std::path::Path) -> anyhow::Result<()> {
    let store = LayerStore::open(work_dir).with_context(|| format!("opening store {}", work_dir.display()))?;
    let stats = store.gc()?;
    eprintln!(
        "removed {} unreferenced layers and {} stale staging directories",
        stats.layers_removed, stats.staging_removed
    );
    Ok(())
}

/// Where `kbs:///` resources come from: the attestation-agent, a development
/// directory, or nowhere (a `kbs:///` reference then fails closed).
fn key_source(args: &PullArgs) -> Arc<dyn image_rs::keysource::KeySource> {
    use image_rs::keysource::{AaKeySource, DirKeySource, NoKeySource};
    match (&args.attestation_agent, &args.key_source_dir) {
        (Some(addr), _) => Arc::new(AaKeySource::new(addr.clone(), std::time::Duration::from_secs(60))),
        (None, Some(dir)) => Arc::new(DirKeySource::new(dir)),
        (None, None) => Arc::new(NoKeySource),
    }
}

/// The flags as a typed client config; `registry` is the image's registry
/// (what `--plain-http` applies to).
fn client_config(args: &PullArgs, registry: &str) -> anyhow::Result<ImageClientConfig> {
    let mut decryption_keys = Vec::new();
    for p in &args.decryption_keys {
        decryption_keys.push(DecryptionKey::load(p).map_err(anyhow::Error::msg)?);
    }
    let mut extra_root_certificates = Vec::new();
    for p in &args.ca_files {
        extra_root_certificates.push(std::fs::read(p).with_context(|| format!("reading CA file {}", p.display()))?);
    }
    Ok(ImageClientConfig {
        work_dir: args.work_dir.clone(),
        signature_policy: args.policy.clone(),
        require_signature_policy: false,
        sigstore_config: args.registries_d.clone().map(SigstoreConfig::Dir).unwrap_or_default(),
        registry_auth: args.auth_file.as_ref().map(|p| p.display().to_string()),
        creds_override: args.creds.clone(),
        registries: match &args.registry_config {
            Some(p) => RegistriesConfig::load(p)?,
            None => RegistriesConfig::default(),
        },
        extra_root_certificates,
        proxy: None,
        insecure_registries: if args.plain_http { vec![registry.to_owned()] } else { Vec::new() },
        max_concurrent_layers: args.max_concurrent_layers,
        max_layer_bytes: args.max_layer_bytes,
        free_space_reserve_percent: args.free_space_reserve_percent,
        free_space_reserve_bytes: args.free_space_reserve,
        min_transfer_rate: args.min_transfer_rate,
        key_source: key_source(args),
        decryption_keys: Arc::new(decryption_keys),
        platform: args.platform.clone().unwrap_or_else(Platform::host),
        rootfs: match args.rootfs {
            RootfsArg::Auto => RootfsMode::Auto,
            RootfsArg::Overlay => RootfsMode::Overlay,
            RootfsArg::Flatten => RootfsMode::Flatten,
        },
        pull_deadline: None,
    })
}

/// `DIR:TAG` (the tag is after the last colon).
fn layout_ref(s: &str) -> anyhow::Result<(PathBuf, &str)> {
    match s.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => Ok((PathBuf::from(dir), tag)),
        _ => anyhow::bail!("{s:?}: expected OCI_LAYOUT_DIR:TAG"),
    }
}

fn encrypt(args: &EncryptArgs) -> anyhow::Result<()> {
    let (src, src_tag) = layout_ref(&args.src)?;
    let (dst, dst_tag) = layout_ref(&args.dst)?;
    let recipients = args
        .recipients
        .iter()
        .map(|r| Recipient::parse(r).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = encrypt_layout(&src, src_tag, &dst, dst_tag, &recipients)?;
    eprintln!("encrypted {} layers for {} recipients into {}:{dst_tag}", out.layers, recipients.len(), dst.display());
    println!("{}", out.manifest_digest);
    Ok(())
}

async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let (Some(image), Some(bundle)) = (args.reference.as_deref(), args.bundle.as_deref()) else {
        anyhow::bail!("usage: image-pull [OPTIONS] REF BUNDLE_DIR (see --help)");
    };
    let reference = parse_reference(image)?;
    let client = ImageClient::new(client_config(&args, reference.registry())?);
    let pulled = client.pull(image, bundle).await?;
    eprintln!(
        "pulled {} ({}) in {:.2}s: {} layers, {} fetched, rootfs {}",
        pulled.reference,
        pulled.manifest_digest,
        pulled.elapsed.as_secs_f64(),
        pulled.layers,
        pulled.layers_fetched,
        match pulled.rootfs {
            RootfsKind::Overlay => "overlay",
            RootfsKind::Flattened => "flattened",
        }
    );
    println!("{}", pulled.manifest_digest);
    Ok(())
}
