//! Benchmark for `tests/bench/policy.sh`: the time the agent's policy takes
//! to decide one request, in process. For a policy file and a test-case file
//! in kata's format (`[{description, allowed, kind, request}]`), each request
//! is decoded into its message as the ttrpc layer would, then checked
//! (`AgentPolicy::check`'s path: policy input + evaluation) ROUNDS times on
//! the loaded policy without applying state changes. Prints one line per
//! request kind: `kind runs median_us p90_us max_us`.

use std::time::Instant;

use cvm_agent::policy::{input, PolicyEngine};
use protos::agent::*;

fn policy_input(kind: &str, request: &serde_json::Value) -> serde_json::Value {
    /// Decodes as kata's test harness does: kata's messages ignore unknown
    /// fields (its test files carry stale names such as `pciPath` and
    /// `additional_gids`), ours refuse them, so drop each one named and retry.
    fn typed<R: protobuf::MessageFull + serde::Serialize + serde::de::DeserializeOwned>(
        v: &serde_json::Value,
    ) -> serde_json::Value {
        let mut v = v.clone();
        for _ in 0..32 {
            match serde_json::from_value::<R>(v.clone()) {
                Ok(r) => return input::of(&r).expect("policy input"),
                Err(e) => {
                    let msg = e.to_string();
                    let field = msg.split('`').nth(1).filter(|_| msg.starts_with("unknown field"));
                    let field = field.unwrap_or_else(|| panic!("request does not decode: {msg}")).to_owned();
                    drop_key(&mut v, &field);
                }
            }
        }
        panic!("request does not decode after dropping 32 unknown fields");
    }
    fn drop_key(v: &mut serde_json::Value, key: &str) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove(key);
                m.values_mut().for_each(|c| drop_key(c, key));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|c| drop_key(c, key)),
            _ => {}
        }
    }
    match kind {
        "CreateContainerRequest" => typed::<CreateContainerRequest>(request),
        "CreateSandboxRequest" => typed::<CreateSandboxRequest>(request),
        "ExecProcessRequest" => typed::<ExecProcessRequest>(request),
        "RemoveContainerRequest" => typed::<RemoveContainerRequest>(request),
        "ReadStreamRequest" => typed::<ReadStreamRequest>(request),
        "UpdateInterfaceRequest" => typed::<UpdateInterfaceRequest>(request),
        "UpdateRoutesRequest" => typed::<UpdateRoutesRequest>(request),
        // kata's files give CopyFile as the policy's converted view already.
        _ => request.clone(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: policy_bench POLICY.rego TESTCASES.json ROUNDS");
        std::process::exit(2);
    }
    let t = Instant::now();
    let engine = PolicyEngine::from_file(std::path::Path::new(&args[1])).expect("policy loads");
    eprintln!("loaded {} in {:?}", args[1], t.elapsed());
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&args[2]).expect("testcases")).expect("testcases JSON");
    let rounds: usize = args[3].parse().expect("ROUNDS");
    let mut by_kind: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for case in &cases {
        let kind = case["kind"].as_str().expect("kind");
        for _ in 0..rounds {
            let t = Instant::now();
            let input = policy_input(kind, &case["request"]);
            std::hint::black_box(engine.would_allow(kind, input));
            by_kind.entry(kind.to_owned()).or_default().push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    for (kind, mut v) in by_kind {
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
        println!("{kind} {} {:.1} {:.1} {:.1}", v.len(), q(0.5), q(0.9), q(1.0));
    }
}
