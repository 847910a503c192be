//! The network RPCs against the real kernel: each test gets its own network
//! namespace with a veth pair of known MAC, runs the real agent inside it
//! (setns before exec), drives it over ttrpc as a kata shim does, and checks
//! with `ip -j` in that namespace what the kernel really holds.

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Agent;
use protos::agent::*;
use protos::agent_ttrpc::AgentServiceClient;
use protos::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use serde_json::Value;

const MAC: &str = "02:aa:bb:cc:dd:01";

/// Skips (prints why) unless root with iproute2; with CI=true a missing
/// prerequisite is a failure.
fn prerequisites() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if Command::new("ip").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        Some("iproute2 (`ip`) is not installed")
    } else {
        None
    };
    match missing {
        Some(why) if ci => panic!("network tests need: {why}"),
        Some(why) => {
            eprintln!("skipping network test: {why}");
            false
        }
        None => true,
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("cvm-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    /// `ip -n <ns> args…`; panics on failure; stdout.
    fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).arg("-j").args(args));
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap()
    }

    /// A veth pair, `name` carrying MAC, both ends up.
    fn veth(&self, name: &str) {
        self.ip(&["link", "add", name, "address", MAC, "type", "veth", "peer", "name", "peer0"]);
        self.ip(&["link", "set", "peer0", "up"]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// The real agent, inside this namespace.
    fn agent(&self, dir: &Path) -> Agent {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let fd = ns.as_raw_fd();
        let sock = format!("unix://{}", dir.join("agent.sock").display());
        let agent = Agent::start_with(dir, move |cmd| {
            cmd.arg("--server-addr").arg(sock);
            // SAFETY: setns(2) only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        });
        drop(ns);
        agent
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

async fn client(agent: &Agent) -> AgentServiceClient {
    AgentServiceClient::new(ttrpc::r#async::Client::connect(&agent.addr()).await.expect("connect to agent"))
}

/// The status of a failed call: (code, message).
fn status<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected a status, got {other:?}"),
    }
}

fn ip_address(address: &str, mask: &str) -> IPAddress {
    let family = if address.contains(':') { IPFamily::v6 } else { IPFamily::v4 };
    IPAddress { family: family.into(), address: address.into(), mask: mask.into(), ..Default::default() }
}

fn route(dest: &str, gateway: &str, scope: u32, mtu: u32) -> Route {
    let v6 = dest.contains(':') || gateway.contains(':');
    Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: "eth0".into(),
        scope,
        mtu,
        family: if v6 { IPFamily::v6 } else { IPFamily::v4 }.into(),
        ..Default::default()
    }
}

/// Global-scope addresses of `dev` as "addr/prefix".
fn global_addresses(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = ns.json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// An `eth0` as the host would have configured it through UpdateInterface.
fn configured_eth0(ns: &Netns) {
    ns.veth("eth0");
    ns.ip(&["addr", "add", "10.20.0.2/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "fd00:20::2/64", "dev", "eth0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_interface_by_mac_renames_sets_mtu_arp_and_exactly_the_requested_addresses() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("ifc");
    ns.veth("ens3");
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "ens3"]);
    ns.ip(&["link", "set", "ens3", "arp", "off"]);
    let dir = tempfile::tempdir().unwrap();
    let agent = ns.agent(dir.path());
    let c = client(&agent).await;

    let iface = Interface {
        name: "eth0".into(),
        hwAddr: MAC.to_uppercase(),
        mtu: 1400,
        IPAddresses: vec![ip_address("10.20.0.2", "24"), ip_address("fd00:20::2", "64")],
        ..Default::default()
    };
    let req = UpdateInterfaceRequest { interface: Some(iface.clone()).into(), ..Default::default() };
    let answer = c.update_interface(ctx(), &req).await.expect("UpdateInterface");
    assert_eq!(answer, iface, "kata answers the request's interface");

    let link = &ns.json(&["link", "show", "dev", "eth0"])[0];
    assert_eq!(link["address"], MAC);
    assert_eq!(link["mtu"], 1400);
    let flags: Vec<&str> = link["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(flags.contains(&"UP") && !flags.contains(&"NOARP"), "{flags:?}");
    let want: BTreeSet<String> = ["10.20.0.2/24", "fd00:20::2/64"].map(String::from).into();
    assert_eq!(global_addresses(&ns, "eth0"), want, "the old 192.168.77.1/24 is gone");

    // The same request again changes nothing and succeeds (the shim retries).
    c.update_interface(ctx(), &req).await.expect("UpdateInterface again");
    assert_eq!(global_addresses(&ns, "eth0"), want);

    // An unknown MAC is kata's "Link not found", the only error the Go
    // runtime retries on.
    let mut unknown = iface.clone();
    unknown.hwAddr = "02:00:00:00:99:99".into();
    let req = UpdateInterfaceRequest { interface: Some(unknown).into(), ..Default::default() };
    let (code, msg) = status(c.update_interface(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("Link not found") && msg.contains("02:00:00:00:99:99"), "{msg}");

    let mut hostile = iface.clone();
    hostile.IPAddresses[0].mask = "33".into();
    let req = UpdateInterfaceRequest { interface: Some(hostile).into(), ..Default::default() };
    let (code, msg) = status(c.update_interface(ctx(), &req).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("interface.IPAddresses[0].mask"), "{msg}");
    assert_eq!(global_addresses(&ns, "eth0"), want, "a refused request changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_with_a_device_path_that_appears_late_is_waited_for() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("hp");
    let dir = tempfile::tempdir().unwrap();
    let agent = ns.agent(dir.path());
    let c = client(&agent).await;
    let iface = Interface {
        name: "eth0".into(),
        hwAddr: MAC.into(),
        devicePath: "02/01".into(),
        IPAddresses: vec![ip_address("10.20.0.2", "24")],
        ..Default::default()
    };
    let req = UpdateInterfaceRequest { interface: Some(iface).into(), ..Default::default() };
    let call = tokio::spawn(async move { c.update_interface(ctx(), &req).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "answered before the NIC existed");
    // Only the link is made here: the agent is already looking for its MAC
    // and renames it to eth0 at once, so a later `ip link set ens5 up` of
    // the test could find no ens5 (seen under load in CI's stand-in).
    ns.ip(&["link", "add", "ens5", "address", MAC, "type", "veth", "peer", "name", "peer0"]);
    call.await.unwrap().expect("UpdateInterface once the NIC is there");
    assert_eq!(global_addresses(&ns, "eth0"), BTreeSet::from(["10.20.0.2/24".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_routes_replaces_the_device_routes_link_routes_first_with_mtu_and_ipv6() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("rt");
    configured_eth0(&ns);
    ns.ip(&["route", "add", "10.99.0.0/16", "dev", "eth0", "proto", "boot"]);
    let dir = tempfile::tempdir().unwrap();
    let agent = ns.agent(dir.path());
    let c = client(&agent).await;

    // The default gateway is only reachable through the link route of the
    // same request: this fails unless link routes are added first.
    let routes = vec![
        route("", "10.30.0.1", 0, 1300),
        route("10.30.0.0/16", "", libc::RT_SCOPE_LINK.into(), 0),
        route("fd00:99::/64", "fd00:20::1", 0, 0),
    ];
    let req = UpdateRoutesRequest {
        routes: Some(Routes { Routes: routes, ..Default::default() }).into(),
        ..Default::default()
    };
    let answer = c.update_routes(ctx(), &req).await.expect("UpdateRoutes").Routes;

    let v4 = ns.json(&["route", "show", "table", "main"]);
    let find = |v: &Value, dst: &str| v.as_array().unwrap().iter().find(|r| r["dst"] == dst).cloned();
    let default = find(&v4, "default").expect("default route");
    assert_eq!((default["gateway"].as_str(), default["dev"].as_str()), (Some("10.30.0.1"), Some("eth0")));
    assert_eq!(default["metrics"][0]["mtu"], 1300, "{default}");
    let link = find(&v4, "10.30.0.0/16").expect("link route");
    assert_eq!(link["scope"], "link");
    assert!(find(&v4, "10.20.0.0/24").is_some(), "the kernel's own prefix route stays");
    assert!(find(&v4, "10.99.0.0/16").is_none(), "the stale route is replaced: {v4}");
    let v6 = ns.json(&["-6", "route", "show", "table", "main"]);
    let r6 = find(&v6, "fd00:99::/64").expect("IPv6 route");
    assert_eq!(r6["gateway"], "fd00:20::1");

    // The answer is ListRoutes, in kata's shape.
    let listed = c.list_routes(ctx(), &ListRoutesRequest::new()).await.expect("ListRoutes").Routes;
    assert_eq!(answer, listed);
    let gw = listed.iter().find(|r| r.gateway == "10.30.0.1").expect("listed default route");
    assert_eq!((gw.dest.as_str(), gw.device.as_str(), gw.mtu), ("0.0.0.0", "eth0", 1300));
    let lr = listed.iter().find(|r| r.dest == "10.30.0.0/16").expect("listed link route");
    assert_eq!((lr.scope, lr.gateway.as_str()), (u32::from(libc::RT_SCOPE_LINK), ""));
    let r6 = listed.iter().find(|r| r.dest == "fd00:99::/64").expect("listed IPv6 route");
    assert_eq!((r6.gateway.as_str(), r6.family.enum_value()), ("fd00:20::1", Ok(IPFamily::v6)));

    // Hostile routes: refused naming the field, or kata's "Link not found".
    let bad = |r: Route| UpdateRoutesRequest {
        routes: Some(Routes { Routes: vec![r], ..Default::default() }).into(),
        ..Default::default()
    };
    let (code, msg) = status(c.update_routes(ctx(), &bad(route("10.0.0.1/24", "", 0, 0))).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("routes[0].dest"), "{msg}");
    let mut elsewhere = route("10.40.0.0/16", "", 253, 0);
    elsewhere.device = "nope0".into();
    let (code, msg) = status(c.update_routes(ctx(), &bad(elsewhere)).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("Link not found (Name: nope0)"), "{msg}");
    let after = c.list_routes(ctx(), &ListRoutesRequest::new()).await.unwrap().Routes;
    assert_eq!(after, listed, "refused requests change no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_interfaces_and_permanent_arp_neighbors() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("nb");
    configured_eth0(&ns);
    let dir = tempfile::tempdir().unwrap();
    let agent = ns.agent(dir.path());
    let c = client(&agent).await;

    let list = c.list_interfaces(ctx(), &ListInterfacesRequest::new()).await.expect("ListInterfaces").Interfaces;
    assert!(list.iter().any(|i| i.name == "lo"), "kata lists the loopback too: {list:?}");
    let eth0 = list.iter().find(|i| i.name == "eth0").expect("eth0 listed");
    assert_eq!((eth0.hwAddr.as_str(), eth0.mtu), (MAC, 1500));
    let addrs: Vec<(String, String, IPFamily)> =
        eth0.IPAddresses.iter().map(|a| (a.address.clone(), a.mask.clone(), a.family.enum_value().unwrap())).collect();
    assert!(addrs.contains(&("10.20.0.2".into(), "24".into(), IPFamily::v4)), "{addrs:?}");
    assert!(addrs.contains(&("fd00:20::2".into(), "64".into(), IPFamily::v6)), "{addrs:?}");

    let neighbors = vec![
        ARPNeighbor {
            toIPAddress: Some(ip_address("10.20.0.1", "")).into(),
            device: "eth0".into(),
            lladdr: "02:00:00:00:00:01".into(),
            ..Default::default()
        },
        ARPNeighbor {
            toIPAddress: Some(ip_address("fd00:20::1", "")).into(),
            device: "eth0".into(),
            lladdr: "02:00:00:00:00:02".into(),
            state: 0x80,
            ..Default::default()
        },
    ];
    let req = AddARPNeighborsRequest {
        neighbors: Some(ARPNeighbors { ARPNeighbors: neighbors, ..Default::default() }).into(),
        ..Default::default()
    };
    c.add_arp_neighbors(ctx(), &req).await.expect("AddARPNeighbors");
    for (family, dst, lladdr) in [("-4", "10.20.0.1", "02:00:00:00:00:01"), ("-6", "fd00:20::1", "02:00:00:00:00:02")] {
        let v = ns.json(&[family, "neigh", "show", "dev", "eth0"]);
        let n = v.as_array().unwrap().iter().find(|n| n["dst"] == dst).unwrap_or_else(|| panic!("{dst}: {v}"));
        assert_eq!(n["lladdr"], lladdr);
        assert_eq!(n["state"], serde_json::json!(["PERMANENT"]));
    }
}

fn iptables_installed() -> bool {
    let found = Command::new("sh").args(["-c", "command -v iptables-save && command -v ip6tables-restore"]).output();
    if found.is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the iptables test needs iptables (apt-get install iptables)");
    }
    eprintln!("skipping iptables test: iptables is not installed (apt-get install iptables)");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_and_get_ip_tables_round_trip_in_the_agent_namespace() {
    if !prerequisites() || !iptables_installed() {
        return;
    }
    let ns = Netns::new("ipt");
    let dir = tempfile::tempdir().unwrap();
    let agent = ns.agent(dir.path());
    let c = client(&agent).await;

    for (ipv6, source) in [(false, "10.66.0.0/16"), (true, "fd00:66::/64")] {
        let rule = format!("-A INPUT -s {source} -j DROP");
        let rules =
            format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rule}\nCOMMIT\n");
        let set = SetIPTablesRequest { is_ipv6: ipv6, data: rules.into_bytes(), ..Default::default() };
        c.set_ip_tables(ctx(), &set).await.unwrap_or_else(|e| panic!("SetIPTables ipv6={ipv6}: {e:?}"));
        let got = c
            .get_ip_tables(ctx(), &GetIPTablesRequest { is_ipv6: ipv6, ..Default::default() })
            .await
            .expect("GetIPTables")
            .data;
        let got = String::from_utf8(got).unwrap();
        assert!(got.contains(&rule), "ipv6={ipv6}: {got}");
        let tool = if ipv6 { "ip6tables-save" } else { "iptables-save" };
        let seen = run(Command::new("ip").args(["netns", "exec", &ns.name, tool]));
        assert!(seen.contains(&rule), "the rule is in the namespace's kernel tables: {seen}");
        let host = run(&mut Command::new(tool));
        assert!(!host.contains(&rule), "the host's tables are untouched");
    }

    let set = SetIPTablesRequest { data: b"*filter\n-A NOPE -j DROP\nCOMMIT\n".to_vec(), ..Default::default() };
    let (code, msg) = status(c.set_ip_tables(ctx(), &set).await);
    assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
    assert!(msg.contains("iptables-restore failed"), "{msg}");
    let huge = SetIPTablesRequest { data: vec![b'#'; 3 << 20], ..Default::default() };
    let (code, msg) = status(c.set_ip_tables(ctx(), &huge).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_tables_without_the_binaries_is_a_failed_precondition_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}", dir.path().join("agent.sock").display());
    let agent = Agent::start_with(dir.path(), |cmd| {
        cmd.arg("--server-addr").arg(sock).env("PATH", empty.path());
    });
    let c = client(&agent).await;
    let (code, msg) = status(c.get_ip_tables(ctx(), &GetIPTablesRequest::new()).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("iptables-save not found"), "{msg}");
    let set = SetIPTablesRequest { is_ipv6: true, ..Default::default() };
    let (code, msg) = status(c.set_ip_tables(ctx(), &set).await);
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("ip6tables-restore not found"), "{msg}");
}

/// Fake iptables tools (shell scripts) in a directory used as the agent's PATH.
fn fake_tools(dir: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    for tool in ["iptables-save", "iptables-restore"] {
        let path = dir.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_tables_output_is_bounded_and_a_hung_tool_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}", dir.path().join("agent.sock").display());
    let agent = Agent::start_with(dir.path(), |cmd| {
        cmd.arg("--server-addr").arg(sock).env("PATH", tools.path());
    });
    let c = client(&agent).await;

    // 3 MiB of rules: more than a response may carry.
    fake_tools(tools.path(), "head -c 3145728 /dev/zero");
    let (code, msg) = status(c.get_ip_tables(ctx(), &GetIPTablesRequest::new()).await);
    assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
    assert!(msg.contains("wrote more than 2097152 bytes"), "{msg}");

    // A tool that never finishes (and never reads its stdin) is killed.
    fake_tools(tools.path(), "exec sleep 600");
    let started = std::time::Instant::now();
    let set = SetIPTablesRequest { data: vec![b'#'; 1 << 20], ..Default::default() };
    let (code, msg) = status(c.set_ip_tables(ctx(), &set).await);
    assert_eq!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{msg}");
    assert!(msg.contains("iptables-restore did not finish"), "{msg}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(20), "{took:?}");
    // The agent still answers.
    fake_tools(tools.path(), "echo '# rules'");
    let got = c.get_ip_tables(ctx(), &GetIPTablesRequest::new()).await.expect("GetIPTables after a kill").data;
    assert_eq!(got, b"# rules\n");
}
