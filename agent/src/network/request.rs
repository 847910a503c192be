//! Decodes kata's network messages (hostile input) into typed, bounded values,
//! and encodes kernel state back into kata's messages. Pure: no kernel access,
//! never panics; every refusal is INVALID_ARGUMENT naming the field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use protos::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use super::{Family, Link, NeighborEntry, NetworkError, Result, RouteEntry, RTN_UNICAST, RTPROT_BOOT, RT_TABLE_MAIN};

/// At most this many addresses in one UpdateInterface.
pub const MAX_ADDRESSES: usize = 64;
/// At most this many routes in one UpdateRoutes.
pub const MAX_ROUTES: usize = 64;
/// At most this many entries in one AddARPNeighbors.
pub const MAX_NEIGHBORS: usize = 64;
/// IFNAMSIZ - 1: the longest link name the kernel accepts.
const MAX_LINK_NAME: usize = 15;
/// Route flags a request may carry (RTNH_F_ONLINK, RTNH_F_PERVASIVE). The
/// others (dead, linkdown, offload, trap, RTM_F_*) are state the kernel
/// reports; the host copies them from its own routes, and the kernel would
/// refuse some of them (EINVAL for linkdown), so they are dropped.
pub(super) const REQUEST_ROUTE_FLAGS: u32 = RTNH_F_ONLINK | RTNH_F_PERVASIVE;
pub(super) const RTNH_F_PERVASIVE: u32 = 2;
pub(super) const RTNH_F_ONLINK: u32 = 4;
const NUD_PERMANENT: u16 = 0x80;

fn invalid(field: impl fmt::Display, why: impl fmt::Display) -> NetworkError {
    NetworkError::InvalidArgument(format!("{field}: {why}"))
}

/// An address with its prefix length (`10.0.0.2/24`), prefix checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `None` when the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// fe80::/10: made by the kernel for every IPv6 link; never removed here.
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
    }

    /// No bits set past the prefix (`10.0.0.0/24`, not `10.0.0.1/24`).
    fn is_network(&self) -> bool {
        let p = u32::from(self.prefix);
        match self.addr {
            IpAddr::V4(a) => p >= 32 || u32::from(a) & (u32::MAX >> p) == 0,
            IpAddr::V6(a) => p >= 128 || u128::from(a) & (u128::MAX >> p) == 0,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn ip(field: &str, text: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| invalid(field, format_args!("{text:?} is not an IP address")))
}

/// `addr` or `addr/prefix`; no prefix means a host (/32, /128).
fn net(field: &str, text: &str) -> Result<IpNet> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (ip(field, a)?, Some(p)),
        None => (ip(field, text)?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => prefix_len(field, p)?,
    };
    IpNet::new(addr, prefix).ok_or_else(|| invalid(field, format_args!("prefix {prefix} longer than {max}")))
}

fn prefix_len(field: &str, text: &str) -> Result<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, format_args!("{text:?} is not a prefix length")));
    }
    text.parse().map_err(|_| invalid(field, format_args!("{text:?} is not a prefix length")))
}

/// `aa:bb:cc:dd:ee:ff` (either case, one or two hex digits per octet).
pub(super) fn mac(field: &str, text: &str) -> Result<[u8; 6]> {
    let bad = || invalid(field, format_args!("{text:?} is not a MAC address"));
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

pub(super) fn mac_text(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_name(field: &str, name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LINK_NAME
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(invalid(
            field,
            format_args!("{name:?} is not a link name (1-{MAX_LINK_NAME} printable bytes, no '/' or ':')"),
        ))
    }
}

fn bounded<T>(field: &str, items: &[T], max: usize) -> Result<()> {
    if items.len() > max {
        return Err(invalid(field, format_args!("{} entries, at most {max}", items.len())));
    }
    Ok(())
}

/// An UpdateInterface request, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InterfaceRequest {
    pub mac: [u8; 6],
    /// The MAC as the host wrote it, for kata's "Link not found (Address: …)".
    pub mac_text: String,
    pub name: String,
    /// `None` when the request's MTU is 0 (kept as is).
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    pub noarp: bool,
}

pub(super) fn interface(iface: &Interface) -> Result<InterfaceRequest> {
    let mac = mac("interface.hwAddr", &iface.hwAddr)?;
    // All zeros is the loopback's: never a NIC the host plugged in.
    if mac == [0; 6] {
        return Err(invalid("interface.hwAddr", "00:00:00:00:00:00 is not a NIC's address"));
    }
    let name = link_name("interface.name", &iface.name)?;
    if name == "lo" {
        return Err(invalid("interface.name", "\"lo\" is the loopback's name"));
    }
    let mtu = match iface.mtu {
        0 => None,
        m => Some(u32::try_from(m).map_err(|_| invalid("interface.mtu", format_args!("{m} is out of range")))?),
    };
    bounded("interface.IPAddresses", &iface.IPAddresses, MAX_ADDRESSES)?;
    let mut addresses = Vec::with_capacity(iface.IPAddresses.len());
    for (i, a) in iface.IPAddresses.iter().enumerate() {
        let addr = ip(&format!("interface.IPAddresses[{i}].address"), &a.address)?;
        let field = format!("interface.IPAddresses[{i}].mask");
        let prefix = prefix_len(&field, &a.mask)?;
        addresses.push(IpNet::new(addr, prefix).ok_or_else(|| invalid(&field, "longer than the address"))?);
    }
    let noarp = iface.raw_flags & libc::IFF_NOARP as u32 != 0;
    Ok(InterfaceRequest { mac, mac_text: iface.hwAddr.clone(), name, mtu, addresses, noarp })
}

/// One route of an UpdateRoutes request, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RouteRequest {
    pub device: String,
    pub family: Family,
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpNet>,
    pub pref_src: Option<IpAddr>,
    pub scope: u8,
    pub flags: u32,
    pub mtu: u32,
}

impl RouteRequest {
    pub fn entry(&self, oif: u32) -> RouteEntry {
        RouteEntry {
            family: self.family,
            dest: self.dest,
            gateway: self.gateway,
            oif,
            source: self.source,
            pref_src: self.pref_src,
            scope: self.scope,
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            kind: RTN_UNICAST,
            tos: 0,
            priority: 0,
            flags: self.flags,
            mtu: self.mtu,
        }
    }
}

/// The request's routes, checked and in the order they are added: routes
/// without a gateway (link routes) first, then gateway routes, each group in
/// request order (kata's order: a gateway must be reachable when its route is
/// added).
pub(super) fn routes(routes: &[Route]) -> Result<Vec<RouteRequest>> {
    bounded("routes", routes, MAX_ROUTES)?;
    let parsed = routes.iter().enumerate().map(|(i, r)| route(i, r)).collect::<Result<Vec<_>>>()?;
    let (mut ordered, gateways): (Vec<_>, Vec<_>) = parsed.into_iter().partition(|r| r.gateway.is_none());
    ordered.extend(gateways);
    Ok(ordered)
}

fn route(i: usize, r: &Route) -> Result<RouteRequest> {
    let field = |name: &str| format!("routes[{i}].{name}");
    let family = match r.family.enum_value() {
        Ok(IPFamily::v4) => Family::V4,
        Ok(IPFamily::v6) => Family::V6,
        Err(n) => return Err(invalid(field("family"), format_args!("unknown family {n}"))),
    };
    let device = link_name(&field("device"), &r.device)?;
    let dest = match r.dest.as_str() {
        "" | "default" => None,
        // kata lists the default route as "0.0.0.0"; accept it back.
        "0.0.0.0" | "::" => None,
        text => {
            let n = net(&field("dest"), text)?;
            if !n.is_network() {
                return Err(invalid(field("dest"), format_args!("{text:?} has host bits set")));
            }
            (n.prefix() > 0).then_some(n)
        }
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        text => Some(ip(&field("gateway"), text)?),
    };
    // The Go runtime sends netlink's Src, the preferred source address (no
    // prefix); a prefix > 0 is a source prefix (IPv6 source routing).
    let (source, pref_src) = match r.source.as_str() {
        "" => (None, None),
        text => {
            let n = net(&field("source"), text)?;
            if text.contains('/') && n.prefix() > 0 {
                (Some(n), None)
            } else {
                (None, Some(n.addr()))
            }
        }
    };
    let checks = [
        ("dest", dest.map(|d| d.family())),
        ("gateway", gateway.as_ref().map(Family::of)),
        ("source", source.map(|s| s.family()).or(pref_src.as_ref().map(Family::of))),
    ];
    for (name, f) in checks {
        if f.is_some_and(|f| f != family) {
            return Err(invalid(field(name), format_args!("not of the route's family ({family:?})")));
        }
    }
    let scope =
        u8::try_from(r.scope).map_err(|_| invalid(field("scope"), format_args!("{} is out of range", r.scope)))?;
    Ok(RouteRequest {
        device,
        family,
        dest,
        gateway,
        source,
        pref_src,
        scope,
        flags: r.flags & REQUEST_ROUTE_FLAGS,
        mtu: r.mtu,
    })
}

/// One AddARPNeighbors entry, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct NeighborRequest {
    pub device: String,
    pub ip: IpAddr,
    pub lladdr: Option<[u8; 6]>,
    pub state: u16,
    pub flags: u8,
}

impl NeighborRequest {
    pub fn entry(&self, index: u32) -> NeighborEntry {
        NeighborEntry { index, ip: self.ip, lladdr: self.lladdr, state: self.state, flags: self.flags }
    }
}

pub(super) fn neighbors(list: &[ARPNeighbor]) -> Result<Vec<NeighborRequest>> {
    bounded("neighbors", list, MAX_NEIGHBORS)?;
    list.iter().enumerate().map(|(i, n)| neighbor(i, n)).collect()
}

fn neighbor(i: usize, n: &ARPNeighbor) -> Result<NeighborRequest> {
    let field = |name: &str| format!("neighbors[{i}].{name}");
    let to = n.toIPAddress.as_ref().map(|a| a.address.as_str()).unwrap_or("");
    if to.is_empty() {
        return Err(invalid(field("toIPAddress"), "missing"));
    }
    let ip = ip(&field("toIPAddress.address"), to)?;
    let device = link_name(&field("device"), &n.device)?;
    let lladdr = match n.lladdr.as_str() {
        "" => None,
        text => Some(mac(&field("lladdr"), text)?),
    };
    let state = match n.state {
        0 => NUD_PERMANENT,
        s => u8::try_from(s)
            .map(u16::from)
            .map_err(|_| invalid(field("state"), format_args!("{s} is not a NUD state")))?,
    };
    let flags =
        u8::try_from(n.flags).map_err(|_| invalid(field("flags"), format_args!("{} is out of range", n.flags)))?;
    Ok(NeighborRequest { device, ip, lladdr, state, flags })
}

fn family_out(f: Family) -> IPFamily {
    match f {
        Family::V4 => IPFamily::v4,
        Family::V6 => IPFamily::v6,
    }
}

fn address_out(net: IpNet) -> IPAddress {
    IPAddress {
        family: family_out(net.family()).into(),
        address: net.addr().to_string(),
        mask: net.prefix().to_string(),
        ..Default::default()
    }
}

/// ListInterfaces' entry for a link: kata's fields (name, hwAddr, mtu,
/// IPAddresses). The MAC is lower-case, as the Go runtime writes it.
pub(super) fn interface_out(link: &Link, addresses: impl Iterator<Item = IpNet>) -> Interface {
    Interface {
        name: link.name.clone(),
        hwAddr: mac_text(&link.mac),
        mtu: link.mtu.into(),
        IPAddresses: addresses.map(address_out).collect(),
        ..Default::default()
    }
}

/// ListRoutes' entry. The default route's dest is "0.0.0.0" or "::" (kata
/// writes "0.0.0.0"; both are read back as the default route).
pub(super) fn route_out(r: &RouteEntry, device: &str) -> Route {
    let dest = match (r.dest, r.family) {
        (Some(d), _) => d.to_string(),
        (None, Family::V4) => Ipv4Addr::UNSPECIFIED.to_string(),
        (None, Family::V6) => Ipv6Addr::UNSPECIFIED.to_string(),
    };
    let source = match (r.source, r.pref_src) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => p.to_string(),
        (None, None) => String::new(),
    };
    Route {
        dest,
        gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: device.to_owned(),
        source,
        scope: r.scope.into(),
        family: family_out(r.family).into(),
        flags: r.flags & REQUEST_ROUTE_FLAGS,
        mtu: r.mtu,
        ..Default::default()
    }
}
