//! Benchmark of key release against the test KBS on loopback (HTTP):
//! - attestation + first resource (RCAR handshake, sample evidence, JWE);
//! - each later resource on the reused session;
//! - the peer behaviour: a full handshake per resource (what a client without
//!   session reuse does), measured in the same run.
//!
//! Prints one `key=value` line per metric (parsed by tests/bench/bench-aa.sh).

use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::attester::sample::SampleAttester;
use attestation_agent::config::Config;
use attestation_agent::kbs::KbsClient;
use test_kbs::{KbsConfig, TestKbs};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let key_alg = std::env::args().nth(2).unwrap_or_else(|| "ec-p256".into());
    let resources = (0..n).map(|i| (format!("default/key/{i}"), vec![0x5a; 32])).collect();
    let kbs = TestKbs::start(KbsConfig { resources, ..KbsConfig::default() }).await?;
    let toml = format!(
        "[token_configs.kbs]\nurl = \"{}\"\ninsecure_http = true\n[attester]\ntype = \"sample\"\n[kbs_client]\ntee_key = \"{key_alg}\"\n",
        kbs.url()
    );
    let config = Config::from_toml(&toml, std::path::Path::new("bench.toml"))?;
    let attester = Arc::new(SampleAttester::default());

    // Warm-up (connection pool, allocator), not measured.
    KbsClient::new(&config, attester.clone(), None)?.get_resource("kbs:///default/key/0").await?;

    let client = KbsClient::new(&config, attester.clone(), None)?;
    let t = Instant::now();
    client.get_resource("kbs:///default/key/0").await?;
    let first = t.elapsed();
    let mut later = Vec::with_capacity(n);
    for i in 1..n {
        let t = Instant::now();
        client.get_resource(&format!("kbs:///default/key/{i}")).await?;
        later.push(t.elapsed());
    }
    assert_eq!(client.handshakes(), 1);

    // Peer behaviour: a full RCAR handshake for every resource.
    let rounds = (n / 10).max(10);
    let mut per_resource_handshake = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let c = KbsClient::new(&config, attester.clone(), None)?;
        let t = Instant::now();
        c.get_resource(&format!("kbs:///default/key/{}", i % n)).await?;
        per_resource_handshake.push(t.elapsed());
    }

    let later_p50 = percentile(&mut later, 0.5);
    let later_p99 = percentile(&mut later, 0.99);
    let hs_p50 = percentile(&mut per_resource_handshake, 0.5);
    println!("tee_key={key_alg}");
    println!("resources={n}");
    println!("first_ms={:.3}", ms(first));
    println!("later_p50_ms={:.3}", ms(later_p50));
    println!("later_p99_ms={:.3}", ms(later_p99));
    println!("handshake_per_resource_p50_ms={:.3}", ms(hs_p50));
    println!("speedup_vs_handshake_per_resource={:.1}", hs_p50.as_secs_f64() / later_p50.as_secs_f64());
    Ok(())
}
