//! Benchmark client for `tests/bench/runtime.sh`: reads an OCI bundle's
//! config.json (the one crun and runc run), converts the fields it uses into
//! the kata spec message, and times create + start + wait + remove of that
//! container through a running agent over its unix socket, one connection
//! kept open as a shim would. Prints one line per run: microseconds.

use std::time::Instant;

use protos::agent::*;
use protos::agent_ttrpc::AgentServiceClient;
use protos::oci;
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The subset of OCI config.json that `runc spec` produces.
fn spec_from_config(c: &Value, bundle: &std::path::Path) -> oci::Spec {
    let p = &c["process"];
    let caps = &p["capabilities"];
    let process = oci::Process {
        Terminal: p["terminal"].as_bool().unwrap_or(false),
        User: Some(oci::User {
            UID: p["user"]["uid"].as_u64().unwrap_or(0) as u32,
            GID: p["user"]["gid"].as_u64().unwrap_or(0) as u32,
            ..Default::default()
        })
        .into(),
        Args: strings(&p["args"]),
        Env: strings(&p["env"]),
        Cwd: str_of(&p["cwd"]),
        Capabilities: Some(oci::LinuxCapabilities {
            Bounding: strings(&caps["bounding"]),
            Effective: strings(&caps["effective"]),
            Inheritable: strings(&caps["inheritable"]),
            Permitted: strings(&caps["permitted"]),
            Ambient: strings(&caps["ambient"]),
            ..Default::default()
        })
        .into(),
        Rlimits: p["rlimits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| oci::POSIXRlimit {
                Type: str_of(&r["type"]),
                Hard: r["hard"].as_u64().unwrap_or(0),
                Soft: r["soft"].as_u64().unwrap_or(0),
                ..Default::default()
            })
            .collect(),
        NoNewPrivileges: p["noNewPrivileges"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    let root_path = bundle.join(c["root"]["path"].as_str().unwrap_or("rootfs"));
    let l = &c["linux"];
    let linux = oci::Linux {
        Namespaces: l["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| oci::LinuxNamespace { Type: str_of(&n["type"]), Path: str_of(&n["path"]), ..Default::default() })
            .collect(),
        MaskedPaths: strings(&l["maskedPaths"]),
        ReadonlyPaths: strings(&l["readonlyPaths"]),
        ..Default::default()
    };
    oci::Spec {
        Version: str_of(&c["ociVersion"]),
        Process: Some(process).into(),
        Root: Some(oci::Root {
            Path: root_path.display().to_string(),
            Readonly: c["root"]["readonly"].as_bool().unwrap_or(false),
            ..Default::default()
        })
        .into(),
        Hostname: str_of(&c["hostname"]),
        Mounts: c["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| oci::Mount {
                destination: str_of(&m["destination"]),
                type_: str_of(&m["type"]),
                source: str_of(&m["source"]),
                options: strings(&m["options"]),
                ..Default::default()
            })
            .collect(),
        Linux: Some(linux).into(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: runtime_bench SOCKET BUNDLE RUNS ID_PREFIX");
        std::process::exit(2);
    }
    let bundle = std::path::PathBuf::from(&args[2]);
    let runs: usize = args[3].parse().expect("RUNS");
    let config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config.json")).expect("json");
    let spec = spec_from_config(&config, &bundle);
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", args[1])).await.expect("connect");
    let agent = AgentServiceClient::new(client);
    let ctx = || ttrpc::context::with_timeout(60_000_000_000);
    let phases = std::env::var_os("BENCH_PHASES").is_some();
    for i in 0..runs {
        let id = format!("{}-{i}", args[4]);
        let t = Instant::now();
        let create = CreateContainerRequest {
            container_id: id.clone(),
            exec_id: id.clone(),
            OCI: Some(spec.clone()).into(),
            ..Default::default()
        };
        agent.create_container(ctx(), &create).await.expect("CreateContainer");
        let created = t.elapsed();
        agent
            .start_container(ctx(), &StartContainerRequest { container_id: id.clone(), ..Default::default() })
            .await
            .expect("StartContainer");
        let started = t.elapsed();
        let status = agent
            .wait_process(ctx(), &WaitProcessRequest { container_id: id.clone(), ..Default::default() })
            .await
            .expect("WaitProcess")
            .status;
        assert_eq!(status, 0, "container exit status");
        let waited = t.elapsed();
        agent
            .remove_container(ctx(), &RemoveContainerRequest { container_id: id, ..Default::default() })
            .await
            .expect("RemoveContainer");
        let total = t.elapsed();
        println!("{}", total.as_micros());
        if phases {
            eprintln!(
                "create {created:?} start {:?} wait {:?} remove {:?}",
                started - created,
                waited - started,
                total - waited
            );
        }
    }
}
