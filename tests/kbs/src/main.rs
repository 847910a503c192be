//! `test-kbs`: the KBS test peer as a program, for acceptance scripts and
//! benchmarks. Resources come from a directory laid out like Trustee's local
//! repository (`DIR/<repo>/<type>/<tag>`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use test_kbs::{KbsConfig, Policy, TestKbs};

#[derive(Parser)]
#[command(about = "KBS test peer (Trustee RCAR 0.4.0, sample TEE only). Never deploy it.")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of resources: DIR/<repo>/<type>/<tag>.
    #[arg(long)]
    resources: Option<PathBuf>,
    /// `allow` or `deny` every resource.
    #[arg(long, default_value = "allow")]
    policy: String,
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

fn load_resources(root: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    for repo in std::fs::read_dir(root)? {
        let repo = repo?;
        for kind in std::fs::read_dir(repo.path())? {
            let kind = kind?;
            for tag in std::fs::read_dir(kind.path())? {
                let tag = tag?;
                if tag.file_type()?.is_file() {
                    let key = format!(
                        "{}/{}/{}",
                        repo.file_name().to_string_lossy(),
                        kind.file_name().to_string_lossy(),
                        tag.file_name().to_string_lossy()
                    );
                    out.insert(key, std::fs::read(tag.path())?);
                }
            }
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let policy = match args.policy.as_str() {
        "allow" => Policy::AllowAll,
        "deny" => Policy::DenyAll,
        other => anyhow::bail!("--policy {other:?}: expected allow or deny"),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((std::fs::read_to_string(c)?, std::fs::read_to_string(k)?)),
        _ => None,
    };
    let resources = args.resources.as_deref().map(load_resources).transpose()?.unwrap_or_default();
    let kbs = TestKbs::start_on(
        args.listen,
        KbsConfig { resources, policy, token_ttl: Duration::from_secs(args.token_ttl), tls, ..KbsConfig::default() },
    )
    .await?;
    println!("test-kbs listening on {}", kbs.url());
    tokio::signal::ctrl_c().await?;
    kbs.stop().await;
    Ok(())
}
