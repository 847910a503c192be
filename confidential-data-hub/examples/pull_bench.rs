//! Benchmark client for tests/bench/cdh.sh: calls
//! `api.ImagePullService/PullImage` on a running confidential-data-hub, as
//! kata's agent does, through the generated ttrpc client, and prints timings.
//!
//!     pull_bench --socket unix:///run/cdh.sock [--concurrent] IMAGE=BUNDLE...
//!
//! Every pull gets its own client connection. Without `--concurrent` the
//! pulls run one after another; with it, all connections are opened first and
//! then every call is issued at once. Output on stdout, tab-separated:
//!
//!     pull  <index>  <seconds>  <manifest digest>  <image>
//!     total <sequential|concurrent>  <seconds>
//!
//! Seconds are measured in this process, from just before the call to its
//! answer (connection set-up excluded, as the agent keeps its connection
//! open). Any failed pull makes the exit status non-zero, naming the image and
//! the status; this client never retries.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use protos::cdh::ImagePullRequest;
use protos::cdh_ttrpc::ImagePullServiceClient;

#[derive(Debug, Parser)]
#[command(name = "pull_bench", about = "PullImage timings against a running confidential-data-hub")]
struct Cli {
    /// The CDH's socket, unix:///path.
    #[arg(long)]
    socket: String,
    /// Issue every pull at once (one connection each) instead of one after another.
    #[arg(long)]
    concurrent: bool,
    /// Per-call ttrpc deadline in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// IMAGE=BUNDLE_PATH pairs.
    #[arg(required = true, value_name = "IMAGE=BUNDLE")]
    pulls: Vec<String>,
}

#[derive(Clone)]
struct Pull {
    image: String,
    bundle: String,
}

struct Pulled {
    seconds: f64,
    digest: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut pulls = Vec::new();
    for arg in &cli.pulls {
        match arg.split_once('=') {
            Some((image, bundle)) if !image.is_empty() && !bundle.is_empty() => {
                pulls.push(Pull { image: image.to_owned(), bundle: bundle.to_owned() })
            }
            _ => {
                eprintln!("pull_bench: {arg:?} is not IMAGE=BUNDLE");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pull_bench: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli, &pulls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pull_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(socket: &str) -> Result<ImagePullServiceClient, String> {
    let client = ttrpc::r#async::Client::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to the CDH at {socket}: {e}"))?;
    Ok(ImagePullServiceClient::new(client))
}

async fn pull(client: ImagePullServiceClient, job: Pull, timeout: Duration) -> Result<Pulled, String> {
    let req = ImagePullRequest { image_url: job.image.clone(), bundle_path: job.bundle.clone(), ..Default::default() };
    let started = Instant::now();
    let answer = client
        .pull_image(ttrpc::context::with_timeout(timeout.as_nanos() as i64), &req)
        .await
        .map_err(|e| format!("PullImage {} into {}: {e}", job.image, job.bundle))?;
    Ok(Pulled { seconds: started.elapsed().as_secs_f64(), digest: answer.manifest_digest })
}

async fn run(cli: &Cli, pulls: &[Pull]) -> Result<(), String> {
    let timeout = Duration::from_secs(cli.timeout_secs);
    let mut clients = Vec::with_capacity(pulls.len());
    for _ in pulls {
        clients.push(connect(&cli.socket).await?);
    }
    let started = Instant::now();
    let results: Vec<Result<Pulled, String>> = if cli.concurrent {
        let tasks: Vec<_> = clients
            .into_iter()
            .zip(pulls)
            .map(|(client, job)| tokio::spawn(pull(client, job.clone(), timeout)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await.unwrap_or_else(|e| Err(format!("pull task failed: {e}"))));
        }
        out
    } else {
        let mut out = Vec::with_capacity(pulls.len());
        for (client, job) in clients.into_iter().zip(pulls) {
            out.push(pull(client, job.clone(), timeout).await);
        }
        out
    };
    let total = started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    for (i, (result, job)) in results.into_iter().zip(pulls).enumerate() {
        match result {
            Ok(p) => println!("pull\t{i}\t{:.3}\t{}\t{}", p.seconds, p.digest, job.image),
            Err(e) => failures.push(e),
        }
    }
    println!("total\t{}\t{total:.3}", if cli.concurrent { "concurrent" } else { "sequential" });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
