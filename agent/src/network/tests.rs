//! The request→operations logic against a recording fake kernel.

use std::net::IpAddr;
use std::sync::Mutex;

use async_trait::async_trait;
use protos::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use super::request::{self, REQUEST_ROUTE_FLAGS, RTNH_F_ONLINK};

const RTNH_F_LINKDOWN: u32 = 16;
use super::*;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    SetLink(u32, LinkChange),
    AddAddr(u32, String),
    DelAddr(u32, String),
    AddRoute(RouteEntry),
    DelRoute(RouteEntry),
    AddNeigh(NeighborEntry),
}

#[derive(Default)]
struct Fake {
    links: Vec<Link>,
    addrs: Vec<(u32, IpNet)>,
    routes: Vec<RouteEntry>,
    ipv6: bool,
    ops: Mutex<Vec<Op>>,
}

impl Fake {
    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
    fn record(&self, op: Op) -> Result<()> {
        self.ops.lock().unwrap().push(op);
        Ok(())
    }
}

#[async_trait]
impl Netlink for Fake {
    async fn links(&self) -> Result<Vec<Link>> {
        Ok(self.links.clone())
    }
    async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        Ok(self.addrs.iter().filter(|(i, _)| index.is_none_or(|w| w == *i)).copied().collect())
    }
    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        self.record(Op::SetLink(index, change.clone()))
    }
    async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.record(Op::AddAddr(index, net.to_string()))
    }
    async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.record(Op::DelAddr(index, net.to_string()))
    }
    async fn routes(&self) -> Result<Vec<RouteEntry>> {
        Ok(self.routes.clone())
    }
    async fn add_route(&self, route: &RouteEntry) -> Result<()> {
        self.record(Op::AddRoute(route.clone()))
    }
    async fn del_route(&self, route: &RouteEntry) -> Result<()> {
        self.record(Op::DelRoute(route.clone()))
    }
    async fn add_neighbor(&self, n: &NeighborEntry) -> Result<()> {
        self.record(Op::AddNeigh(n.clone()))
    }
    fn ipv6_enabled(&self) -> bool {
        self.ipv6
    }
}

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

fn link(index: u32, name: &str, mac: &[u8], up: bool) -> Link {
    Link { index, name: name.into(), mac: mac.to_vec(), mtu: 1500, up }
}

fn net(text: &str) -> IpNet {
    let (a, p) = text.split_once('/').unwrap();
    IpNet::new(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

fn addr(address: &str, mask: &str) -> IPAddress {
    IPAddress { address: address.into(), mask: mask.into(), ..Default::default() }
}

fn iface(name: &str, hw: &str, addrs: Vec<IPAddress>) -> Interface {
    Interface { name: name.into(), hwAddr: hw.into(), mtu: 1400, IPAddresses: addrs, ..Default::default() }
}

fn route(dest: &str, gateway: &str, device: &str) -> Route {
    let v6 = dest.contains(':') || gateway.contains(':');
    Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        family: if v6 { IPFamily::v6 } else { IPFamily::v4 }.into(),
        ..Default::default()
    }
}

fn kernel_route(dest: Option<&str>, gateway: Option<&str>, oif: u32, protocol: u8) -> RouteEntry {
    let dest = dest.map(net);
    RouteEntry {
        family: dest.map_or(Family::V4, |d| d.family()),
        dest,
        gateway: gateway.map(|g| g.parse().unwrap()),
        oif,
        source: None,
        pref_src: None,
        scope: 0,
        protocol,
        table: RT_TABLE_MAIN,
        kind: RTN_UNICAST,
        tos: 0,
        priority: 0,
        flags: 0,
        mtu: 0,
    }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
}

#[test]
fn update_interface_downs_replaces_addresses_renames_then_sets_mtu_and_up() {
    let fake = Fake {
        links: vec![link(1, "lo", &[0; 6], true), link(2, "ens3", &MAC, true)],
        addrs: vec![(2, net("192.168.1.9/24")), (2, net("10.0.0.2/24")), (2, net("fe80::42:acff:fe11:2/64"))],
        ipv6: true,
        ..Default::default()
    };
    let net_ = Network::new(fake);
    let req = iface("eth0", "02:42:AC:11:00:02", vec![addr("10.0.0.2", "24"), addr("fd00::2", "64")]);
    let answer = block(net_.update_interface(&req)).unwrap();
    assert_eq!(answer, req, "kata answers the request's interface");
    let down = LinkChange { up: Some(false), ..Default::default() };
    let rename = LinkChange { name: Some("eth0".into()), ..Default::default() };
    let up = LinkChange { name: None, mtu: Some(1400), arp: Some(true), up: Some(true) };
    assert_eq!(
        net_.nl.ops(),
        vec![
            Op::SetLink(2, down),
            Op::DelAddr(2, "192.168.1.9/24".into()),
            Op::AddAddr(2, "10.0.0.2/24".into()),
            Op::AddAddr(2, "fd00::2/64".into()),
            Op::SetLink(2, rename),
            Op::SetLink(2, up),
        ]
    );
}

#[test]
fn update_interface_of_an_unknown_mac_is_kata_s_link_not_found() {
    let net_ = Network::new(Fake { links: vec![link(2, "eth0", &MAC, false)], ..Default::default() });
    let err = block(net_.update_interface(&iface("eth0", "02:00:00:00:00:99", vec![]))).unwrap_err();
    assert_eq!(err.to_string(), "Link not found (Address: 02:00:00:00:00:99)");
    assert!(net_.nl.ops().is_empty());
}

#[test]
fn a_nic_with_a_device_path_is_waited_for_before_link_not_found() {
    let mut net_ = Network::new(Fake::default());
    net_.hotplug_wait = std::time::Duration::from_millis(200);
    let cold = iface("eth0", "02:00:00:00:00:99", vec![]);
    let start = std::time::Instant::now();
    assert!(matches!(block(net_.update_interface(&cold)), Err(NetworkError::LinkNotFound(_))));
    assert!(start.elapsed() < std::time::Duration::from_millis(100), "no devicePath: the shim retries itself");
    let hotplugged = Interface { devicePath: "0000:00:03.0".into(), ..cold };
    let start = std::time::Instant::now();
    assert!(matches!(block(net_.update_interface(&hotplugged)), Err(NetworkError::LinkNotFound(_))));
    assert!(start.elapsed() >= std::time::Duration::from_millis(200), "{:?}", start.elapsed());
}

#[test]
fn update_interface_swaps_names_with_the_link_holding_the_requested_one() {
    let other = [0x02, 0, 0, 0, 0, 0x01];
    let fake = Fake { links: vec![link(2, "eth0", &other, true), link(3, "eth1", &MAC, false)], ..Default::default() };
    let net_ = Network::new(fake);
    block(net_.update_interface(&iface("eth0", "02:42:ac:11:00:02", vec![]))).unwrap();
    let names: Vec<(u32, Option<String>, Option<bool>)> = net_
        .nl
        .ops()
        .into_iter()
        .filter_map(|op| match op {
            Op::SetLink(i, c) => Some((i, c.name, c.up)),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (2, None, Some(false)),
            (2, Some("cvmtmp2".into()), None),
            (3, Some("eth0".into()), None),
            (2, Some("eth1".into()), Some(true)),
            (3, None, Some(true)),
        ]
    );
}

#[test]
fn ipv6_addresses_are_skipped_when_the_stack_has_ipv6_disabled() {
    let net_ = Network::new(Fake { links: vec![link(2, "eth0", &MAC, false)], ipv6: false, ..Default::default() });
    block(net_.update_interface(&iface("eth0", "02:42:ac:11:00:02", vec![addr("fd00::2", "64")]))).unwrap();
    assert!(!net_.nl.ops().iter().any(|op| matches!(op, Op::AddAddr(..))));
}

#[test]
fn noarp_in_raw_flags_turns_arp_off() {
    let net_ = Network::new(Fake { links: vec![link(2, "eth0", &MAC, false)], ..Default::default() });
    let mut req = iface("eth0", "02:42:ac:11:00:02", vec![]);
    req.raw_flags = libc::IFF_NOARP as u32;
    block(net_.update_interface(&req)).unwrap();
    assert!(net_.nl.ops().iter().any(|op| matches!(op, Op::SetLink(2, c) if c.arp == Some(false))));
}

#[test]
fn hostile_interfaces_are_refused_naming_the_field() {
    let cases = [
        (iface("eth0", "", vec![]), "interface.hwAddr"),
        (iface("eth0", "02:42:ac:11:00", vec![]), "interface.hwAddr"),
        (iface("eth0", "02:42:ac:11:00:02:03", vec![]), "interface.hwAddr"),
        (iface("eth0", "02:42:ac:11:00:zz", vec![]), "interface.hwAddr"),
        (iface("eth0", "00:00:00:00:00:00", vec![]), "interface.hwAddr"),
        (iface("", "02:42:ac:11:00:02", vec![]), "interface.name"),
        (iface("lo", "02:42:ac:11:00:02", vec![]), "interface.name"),
        (iface("a-name-longer-than-15", "02:42:ac:11:00:02", vec![]), "interface.name"),
        (iface("../eth0", "02:42:ac:11:00:02", vec![]), "interface.name"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.300", "24")]), "IPAddresses[0].address"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.2", "33")]), "IPAddresses[0].mask"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("fd00::2", "129")]), "IPAddresses[0].mask"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.2", "")]), "IPAddresses[0].mask"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.2", "-1")]), "IPAddresses[0].mask"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.2/24", "24")]), "IPAddresses[0].address"),
        (iface("eth0", "02:42:ac:11:00:02", vec![addr("10.0.0.2", "24"); MAX_ADDRESSES + 1]), "at most 64"),
        (Interface { mtu: u64::MAX, ..iface("eth0", "02:42:ac:11:00:02", vec![]) }, "interface.mtu"),
    ];
    for (req, field) in cases {
        let err = request::interface(&req).unwrap_err();
        assert!(matches!(&err, NetworkError::InvalidArgument(m) if m.contains(field)), "{field}: {err}");
    }
}

#[test]
fn link_routes_are_added_before_gateway_routes_in_request_order() {
    let req = [
        route("", "10.0.0.1", "eth0"),
        route("10.0.0.0/24", "", "eth0"),
        route("10.1.0.0/16", "10.0.0.254", "eth0"),
        route("fd00::/64", "", "eth0"),
    ];
    let planned = request::routes(&req).unwrap();
    let order: Vec<(Option<String>, Option<IpAddr>)> =
        planned.iter().map(|r| (r.dest.map(|d| d.to_string()), r.gateway)).collect();
    assert_eq!(
        order,
        vec![
            (Some("10.0.0.0/24".into()), None),
            (Some("fd00::/64".into()), None),
            (None, Some("10.0.0.1".parse().unwrap())),
            (Some("10.1.0.0/16".into()), Some("10.0.0.254".parse().unwrap())),
        ]
    );
}

#[test]
fn update_routes_deletes_only_non_kernel_routes_of_the_named_devices_then_adds() {
    let fake = Fake {
        links: vec![
            link(1, "lo", &[0; 6], true),
            link(2, "eth0", &MAC, true),
            link(3, "eth1", &[2, 0, 0, 0, 0, 3], true),
        ],
        routes: vec![
            kernel_route(Some("10.0.0.0/24"), None, 2, RTPROT_KERNEL),
            kernel_route(None, Some("10.0.0.1"), 2, RTPROT_BOOT),
            kernel_route(Some("10.9.0.0/16"), Some("10.0.0.1"), 2, libc::RTPROT_STATIC),
            kernel_route(Some("172.16.0.0/12"), None, 3, RTPROT_BOOT),
            RouteEntry { table: 100, ..kernel_route(Some("10.8.0.0/16"), None, 2, RTPROT_BOOT) },
        ],
        ..Default::default()
    };
    let net_ = Network::new(fake);
    let mut gw = route("", "10.0.0.1", "eth0");
    gw.mtu = 1300;
    gw.flags = RTNH_F_ONLINK | RTNH_F_LINKDOWN;
    let mut link_route = route("10.0.0.0/24", "", "eth0");
    link_route.scope = libc::RT_SCOPE_LINK.into();
    link_route.source = "10.0.0.2".into();
    block(net_.update_routes(&[gw, link_route])).unwrap();
    let ops = net_.nl.ops();
    let deleted: Vec<_> = ops
        .iter()
        .filter_map(|o| match o {
            Op::DelRoute(r) => Some((r.dest, r.gateway)),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        vec![(None, Some("10.0.0.1".parse().unwrap())), (Some(net("10.9.0.0/16")), Some("10.0.0.1".parse().unwrap()))],
        "kernel routes, other devices' routes and other tables are kept"
    );
    let added: Vec<&RouteEntry> = ops
        .iter()
        .filter_map(|o| match o {
            Op::AddRoute(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(added.len(), 2);
    assert_eq!(
        (added[0].dest, added[0].scope, added[0].pref_src),
        (Some(net("10.0.0.0/24")), 253, Some("10.0.0.2".parse().unwrap()))
    );
    assert_eq!((added[1].dest, added[1].mtu, added[1].flags), (None, 1300, RTNH_F_ONLINK));
    assert!(added.iter().all(|r| r.oif == 2 && r.protocol == RTPROT_BOOT && r.table == RT_TABLE_MAIN));
    let last_delete = ops.iter().rposition(|o| matches!(o, Op::DelRoute(_))).unwrap();
    let first_add = ops.iter().position(|o| matches!(o, Op::AddRoute(_))).unwrap();
    assert!(last_delete < first_add, "deletes happen before adds: {ops:?}");
}

#[test]
fn a_route_on_an_unknown_device_is_link_not_found_and_changes_nothing() {
    let net_ = Network::new(Fake { links: vec![link(2, "eth0", &MAC, true)], ..Default::default() });
    let err =
        block(net_.update_routes(&[route("10.0.0.0/24", "", "eth0"), route("", "10.0.0.1", "eth9")])).unwrap_err();
    assert_eq!(err.to_string(), "Link not found (Name: eth9)");
    assert!(net_.nl.ops().is_empty());
}

#[test]
fn hostile_routes_are_refused_naming_the_field() {
    let mut bad_family = route("10.0.0.0/24", "", "eth0");
    bad_family.family = protobuf::EnumOrUnknown::from_i32(7);
    let mut v6_family_v4_dest = route("10.0.0.0/24", "", "eth0");
    v6_family_v4_dest.family = IPFamily::v6.into();
    let mut v4_family_v6_gateway = route("10.0.0.0/24", "fd00::1", "eth0");
    v4_family_v6_gateway.family = IPFamily::v4.into();
    let mut big_scope = route("10.0.0.0/24", "", "eth0");
    big_scope.scope = 256;
    let cases = [
        (vec![bad_family], "routes[0].family"),
        (vec![v6_family_v4_dest], "routes[0].dest"),
        (vec![big_scope], "routes[0].scope"),
        (vec![route("10.0.0.1/24", "", "eth0")], "host bits"),
        (vec![route("10.0.0.0/40", "", "eth0")], "routes[0].dest"),
        (vec![route("10.0.0.0/24", "", "")], "routes[0].device"),
        (vec![route("10.0.0.0/24", "", "eth0"), route("", "fd00::1x", "eth0")], "routes[1].gateway"),
        (vec![v4_family_v6_gateway], "routes[0].gateway"),
        (vec![route("10.0.0.0/24", "", "eth0"); MAX_ROUTES + 1], "at most 64"),
    ];
    for (req, field) in cases {
        let err = request::routes(&req).unwrap_err();
        assert!(matches!(&err, NetworkError::InvalidArgument(m) if m.contains(field)), "{field}: {err}");
    }
}

#[test]
fn default_route_spellings_and_host_destinations() {
    for dest in ["", "default", "0.0.0.0", "0.0.0.0/0"] {
        assert_eq!(request::routes(&[route(dest, "10.0.0.1", "eth0")]).unwrap()[0].dest, None, "{dest:?}");
    }
    let host = request::routes(&[route("10.0.0.7", "", "eth0")]).unwrap();
    assert_eq!(host[0].dest, Some(net("10.0.0.7/32")));
    let mut src_prefix = route("fd00::/64", "", "eth0");
    src_prefix.source = "fd01::/64".into();
    let r = &request::routes(&[src_prefix]).unwrap()[0];
    assert_eq!((r.source, r.pref_src), (Some(net("fd01::/64")), None));
}

#[test]
fn listed_routes_read_back_as_the_same_request() {
    let mut r = kernel_route(None, Some("10.0.0.1"), 2, RTPROT_BOOT);
    r.mtu = 1300;
    r.flags = RTNH_F_ONLINK;
    r.pref_src = Some("10.0.0.2".parse().unwrap());
    let out = request::route_out(&r, "eth0");
    assert_eq!((out.dest.as_str(), out.gateway.as_str(), out.source.as_str()), ("0.0.0.0", "10.0.0.1", "10.0.0.2"));
    let back = &request::routes(&[out]).unwrap()[0];
    assert_eq!(back.entry(2), RouteEntry { protocol: RTPROT_BOOT, flags: r.flags & REQUEST_ROUTE_FLAGS, ..r });
}

#[test]
fn list_interfaces_gives_every_link_with_its_own_addresses() {
    let fake = Fake {
        links: vec![link(1, "lo", &[0; 6], true), link(2, "eth0", &MAC, true)],
        addrs: vec![(1, net("127.0.0.1/8")), (2, net("10.0.0.2/24")), (2, net("fd00::2/64"))],
        ..Default::default()
    };
    let list = block(Network::new(fake).list_interfaces()).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[1].name.as_str(), list[1].hwAddr.as_str(), list[1].mtu), ("eth0", "02:42:ac:11:00:02", 1500));
    let addrs: Vec<(String, String, IPFamily)> = list[1]
        .IPAddresses
        .iter()
        .map(|a| (a.address.clone(), a.mask.clone(), a.family.enum_value().unwrap()))
        .collect();
    assert_eq!(
        addrs,
        vec![("10.0.0.2".into(), "24".into(), IPFamily::v4), ("fd00::2".into(), "64".into(), IPFamily::v6)]
    );
}

#[test]
fn neighbors_default_to_permanent_and_are_bounded() {
    let n = ARPNeighbor {
        toIPAddress: Some(addr("10.0.0.1", "")).into(),
        device: "eth0".into(),
        lladdr: "02:00:00:00:00:01".into(),
        ..Default::default()
    };
    let net_ = Network::new(Fake { links: vec![link(2, "eth0", &MAC, true)], ..Default::default() });
    block(net_.add_arp_neighbors(std::slice::from_ref(&n))).unwrap();
    assert_eq!(
        net_.nl.ops(),
        vec![Op::AddNeigh(NeighborEntry {
            index: 2,
            ip: "10.0.0.1".parse().unwrap(),
            lladdr: Some([2, 0, 0, 0, 0, 1]),
            state: 0x80,
            flags: 0
        })]
    );
    let missing_ip = ARPNeighbor { toIPAddress: Default::default(), ..n.clone() };
    let bad_state = ARPNeighbor { state: 0x1_0000, ..n.clone() };
    let bad_lladdr = ARPNeighbor { lladdr: "02:00".into(), ..n.clone() };
    for (req, field) in [
        (vec![missing_ip], "neighbors[0].toIPAddress"),
        (vec![bad_state], "neighbors[0].state"),
        (vec![bad_lladdr], "neighbors[0].lladdr"),
        (vec![n; MAX_NEIGHBORS + 1], "at most 64"),
    ] {
        let err = block(net_.add_arp_neighbors(&req)).unwrap_err();
        assert!(matches!(&err, NetworkError::InvalidArgument(m) if m.contains(field)), "{field}: {err}");
    }
}
