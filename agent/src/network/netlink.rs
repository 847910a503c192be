//! The real [`Netlink`] seam: rtnetlink requests on one NETLINK_ROUTE socket
//! of the agent's network namespace, opened on first use. Translates kernel
//! messages to the module's types and back; decides nothing itself, and never
//! touches a link, address or route it was not handed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{Family, IpNet, Link, LinkChange, NeighborEntry, Netlink, NetworkError, Result, RouteEntry};

/// rtnetlink over a socket opened on first use, and opened again if its
/// connection task ever ends (the task runs on the agent's tokio runtime).
#[derive(Default)]
pub struct RtNetlink {
    conn: std::sync::Mutex<Option<Connection>>,
}

struct Connection {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl RtNetlink {
    pub fn new() -> RtNetlink {
        RtNetlink::default()
    }

    fn handle(&self) -> Result<rtnetlink::Handle> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conn.as_ref().filter(|c| !c.task.is_finished()) {
            return Ok(c.handle.clone());
        }
        let (task, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetworkError::Internal(format!("open netlink socket: {e}")))?;
        *conn = Some(Connection { handle: handle.clone(), task: tokio::spawn(task) });
        Ok(handle)
    }
}

fn kernel(op: impl Into<String>, err: rtnetlink::Error) -> NetworkError {
    let errno = match &err {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    };
    let message = match errno {
        Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
        None => err.to_string(),
    };
    NetworkError::Kernel { op: op.into(), errno, message }
}

fn link_from(m: LinkMessage) -> Link {
    let mut link = Link { index: m.header.index, up: m.header.flags.contains(LinkFlags::Up), ..Default::default() };
    for attr in m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = a,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            _ => {}
        }
    }
    link
}

/// IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on a
/// point-to-point link); IPv6 only sends IFA_ADDRESS.
fn address_from(m: &AddressMessage) -> Option<(u32, IpNet)> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or(address)?;
    Some((m.header.index, IpNet::new(ip, m.header.prefix_len)?))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from(m: &RouteMessage) -> Option<RouteEntry> {
    let h = &m.header;
    let family = match h.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let mut r = RouteEntry {
        family,
        dest: None,
        gateway: None,
        oif: 0,
        source: None,
        pref_src: None,
        scope: h.scope.into(),
        protocol: h.protocol.into(),
        table: h.table.into(),
        kind: h.kind.into(),
        tos: h.tos,
        priority: 0,
        flags: h.flags.bits(),
        mtu: 0,
    };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                r.dest = route_ip(a).and_then(|ip| IpNet::new(ip, h.destination_prefix_length));
            }
            RouteAttribute::Source(a) => r.source = route_ip(a).and_then(|ip| IpNet::new(ip, h.source_prefix_length)),
            RouteAttribute::Gateway(a) => r.gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => r.pref_src = route_ip(a),
            RouteAttribute::Oif(i) => r.oif = *i,
            RouteAttribute::Priority(p) => r.priority = *p,
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Metrics(ms) => {
                r.mtu = ms.iter().find_map(|m| if let RouteMetric::Mtu(v) = m { Some(*v) } else { None }).unwrap_or(0);
            }
            _ => {}
        }
    }
    r.dest = r.dest.filter(|d| d.prefix() > 0);
    Some(r)
}

/// `10.1.0.0/16 via 10.0.0.1 oif 2` (`default` for prefix 0), for errors.
fn describe(r: &RouteEntry) -> String {
    let mut s = r.dest.map_or_else(|| "default".to_owned(), |d| d.to_string());
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" oif {}", r.oif));
    s
}

/// The RTM_NEWROUTE/RTM_DELROUTE message for `r`. A delete leaves out the
/// metrics (the kernel matches on the key, nexthop, protocol and scope).
fn route_message(r: &RouteEntry, for_delete: bool) -> RouteMessage {
    let mut m = match r.family {
        Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let h = &mut m.header;
    h.destination_prefix_length = r.dest.map_or(0, |d| d.prefix());
    h.source_prefix_length = r.source.map_or(0, |s| s.prefix());
    h.tos = r.tos;
    h.table = u8::try_from(r.table).unwrap_or(0);
    h.protocol = RouteProtocol::from(r.protocol);
    h.scope = RouteScope::from(r.scope);
    h.kind = RouteType::from(r.kind);
    h.flags = RouteFlags::from_bits_retain(r.flags);
    let a = &mut m.attributes;
    a.push(RouteAttribute::Table(r.table));
    if let Some(d) = r.dest {
        a.push(RouteAttribute::Destination(d.addr().into()));
    }
    if let Some(s) = r.source {
        a.push(RouteAttribute::Source(s.addr().into()));
    }
    if let Some(g) = r.gateway {
        a.push(RouteAttribute::Gateway(g.into()));
    }
    if let Some(p) = r.pref_src {
        a.push(RouteAttribute::PrefSource(p.into()));
    }
    if r.oif != 0 {
        a.push(RouteAttribute::Oif(r.oif));
    }
    if r.priority != 0 {
        a.push(RouteAttribute::Priority(r.priority));
    }
    if r.mtu != 0 && !for_delete {
        a.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(r.mtu)]));
    }
    m
}

#[async_trait]
impl Netlink for RtNetlink {
    async fn links(&self) -> Result<Vec<Link>> {
        let h = self.handle()?;
        let msgs: Vec<LinkMessage> =
            h.link().get().execute().try_collect().await.map_err(|e| kernel("list links", e))?;
        Ok(msgs.into_iter().map(link_from).collect())
    }

    async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let h = self.handle()?;
        let mut req = h.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(|e| kernel("list addresses", e))?;
        Ok(msgs.iter().filter_map(address_from).filter(|(i, _)| index.is_none_or(|want| want == *i)).collect())
    }

    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let h = self.handle()?;
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(name) = &change.name {
            b = b.name(name.clone());
        }
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(arp) = change.arp {
            b = b.arp(arp);
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        h.link().set(b.build()).execute().await.map_err(|e| kernel(format!("set link {index} ({change:?})"), e))
    }

    async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        let h = self.handle()?;
        let req = h.address().add(index, net.addr(), net.prefix()).replace();
        req.execute().await.map_err(|e| kernel(format!("add address {net} to link {index}"), e))
    }

    async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        let h = self.handle()?;
        let mut m = AddressMessage::default();
        m.header.family = match net.family() {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        m.header.prefix_len = net.prefix();
        m.header.index = index;
        if net.family() == Family::V4 {
            m.attributes.push(AddressAttribute::Local(net.addr()));
        }
        m.attributes.push(AddressAttribute::Address(net.addr()));
        h.address().del(m).execute().await.map_err(|e| kernel(format!("delete address {net} of link {index}"), e))
    }

    async fn routes(&self) -> Result<Vec<RouteEntry>> {
        let h = self.handle()?;
        let mut out = Vec::new();
        // One dump at a time: a second dump on the socket while one runs
        // fails with EBUSY.
        for query in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
            let msgs: Vec<RouteMessage> =
                h.route().get(query).execute().try_collect().await.map_err(|e| kernel("list routes", e))?;
            out.extend(msgs.iter().filter_map(route_from));
        }
        Ok(out)
    }

    async fn add_route(&self, route: &RouteEntry) -> Result<()> {
        let h = self.handle()?;
        let m = route_message(route, false);
        h.route().add(m).replace().execute().await.map_err(|e| kernel(format!("add route {}", describe(route)), e))
    }

    async fn del_route(&self, route: &RouteEntry) -> Result<()> {
        let h = self.handle()?;
        let m = route_message(route, true);
        match h.route().del(m).execute().await {
            // Gone already (e.g. with an address deleted just before).
            Err(rtnetlink::Error::NetlinkError(e)) if e.code.is_some_and(|c| -c.get() == libc::ESRCH) => Ok(()),
            r => r.map_err(|e| kernel(format!("delete route {}", describe(route)), e)),
        }
    }

    async fn add_neighbor(&self, n: &NeighborEntry) -> Result<()> {
        let h = self.handle()?;
        let mut req = h
            .neighbours()
            .add(n.index, n.ip)
            .state(NeighbourState::from(n.state))
            .flags(NeighbourFlags::from_bits_retain(n.flags))
            .replace();
        if let Some(ll) = n.lladdr {
            req = req.link_layer_address(&ll);
        }
        req.execute().await.map_err(|e| kernel(format!("add neighbor {} on link {}", n.ip, n.index), e))
    }

    fn ipv6_enabled(&self) -> bool {
        ["all", "default"].iter().any(|c| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6")).is_ok_and(|s| s.trim() == "0")
        })
    }
}
