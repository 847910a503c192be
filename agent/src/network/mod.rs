//! The guest's network as the host configures it through kata's agent API:
//! UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors
//! (and GetIPTables/SetIPTables in `iptables.rs`).
//!
//! `request.rs` turns a hostile protobuf request into typed, bounded values
//! (or INVALID_ARGUMENT naming the field); [`Network`] turns those into
//! operations on the [`Netlink`] seam, so the planning is unit-tested with a
//! recording fake; `netlink.rs` is the real seam on the `rtnetlink` crate.
//! This module never guesses a configuration the host did not ask for, never
//! touches a link the request does not name (by MAC or by device name), and
//! never panics on a request.

mod iptables;
mod netlink;
mod request;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use protos::types::{ARPNeighbor, Interface, Route};

pub use iptables::IpTables;
pub use netlink::RtNetlink;
pub use request::{IpNet, MAX_ADDRESSES, MAX_NEIGHBORS, MAX_ROUTES};

/// Errors of the network module, grouped by what the caller did wrong (or
/// not); the rpc layer maps each to a ttrpc code.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A link the request names does not exist. The text starts with kata's
    /// "Link not found": the Go runtime retries UpdateInterface on it (the NIC
    /// may still be hot-plugging) and treats any other error as fatal.
    #[error("Link not found ({0})")]
    LinkNotFound(String),
    /// Something the agent needs is missing (e.g. the iptables binaries).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The kernel refused an operation; `errno` when netlink gave one.
    #[error("{op}: {message}")]
    Kernel { op: String, errno: Option<i32>, message: String },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, NetworkError>;

/// IP version of an address, route or neighbor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A network link as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address bytes (6 for Ethernet; empty when the link has none).
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
}

/// One change to a link, applied by a single netlink request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    /// `Some(false)` sets IFF_NOARP.
    pub arp: Option<bool>,
    pub up: Option<bool>,
}

/// A route of the main table, as listed or as to be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub family: Family,
    /// `None` is the default route (prefix length 0).
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// Output interface index (0 when the route has none, e.g. blackhole).
    pub oif: u32,
    /// Source prefix (RTA_SRC, IPv6 source routing).
    pub source: Option<IpNet>,
    /// Preferred source address (RTA_PREFSRC).
    pub pref_src: Option<IpAddr>,
    pub scope: u8,
    pub protocol: u8,
    /// Route table id (254 = main).
    pub table: u32,
    /// Route type (1 = unicast).
    pub kind: u8,
    pub tos: u8,
    /// Metric (RTA_PRIORITY); 0 when absent.
    pub priority: u32,
    /// RTNH_F_* flags of the route header.
    pub flags: u32,
    /// RTAX_MTU; 0 when absent.
    pub mtu: u32,
}

/// A permanent neighbor (ARP/NDP) entry to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborEntry {
    pub index: u32,
    pub ip: IpAddr,
    pub lladdr: Option<[u8; 6]>,
    /// NUD_* state bits.
    pub state: u16,
    /// NTF_* flags.
    pub flags: u8,
}

pub const RT_TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;
pub const RTPROT_KERNEL: u8 = libc::RTPROT_KERNEL;
/// Protocol of routes the host installs through UpdateRoutes (kata's choice).
pub const RTPROT_BOOT: u8 = libc::RTPROT_BOOT;
pub const RTN_UNICAST: u8 = libc::RTN_UNICAST;

/// The kernel operations the network RPCs need: the seam between the
/// request→operations logic and netlink.
#[async_trait]
pub trait Netlink: Send + Sync {
    async fn links(&self) -> Result<Vec<Link>>;
    /// Addresses of one link (`Some(index)`) or of every link, with the
    /// index of the link each belongs to.
    async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>>;
    async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()>;
    /// Adds an address, replacing an equal one.
    async fn add_address(&self, index: u32, net: IpNet) -> Result<()>;
    async fn del_address(&self, index: u32, net: IpNet) -> Result<()>;
    /// Routes of the main table, IPv4 then IPv6.
    async fn routes(&self) -> Result<Vec<RouteEntry>>;
    /// Adds a route, replacing an equal one.
    async fn add_route(&self, route: &RouteEntry) -> Result<()>;
    async fn del_route(&self, route: &RouteEntry) -> Result<()>;
    /// Adds a neighbor entry, replacing an equal one.
    async fn add_neighbor(&self, neighbor: &NeighborEntry) -> Result<()>;
    /// Whether the IPv6 stack is enabled (kata skips IPv6 addresses if not).
    fn ipv6_enabled(&self) -> bool;
}

/// How long UpdateInterface waits for the link of a NIC that names its bus
/// location (`devicePath`: hot-plugged, maybe not probed yet) before saying
/// "Link not found". kata's agent waits for the PCI device likewise; without
/// a `devicePath` the Go runtime retries by itself.
pub const HOTPLUG_WAIT: Duration = Duration::from_secs(3);
const HOTPLUG_POLL: Duration = Duration::from_millis(50);

/// The network RPCs over a [`Netlink`] implementation. Updates are serialised
/// (one host-driven reconfiguration at a time); listings are not.
pub struct Network<N: Netlink = RtNetlink> {
    nl: N,
    updates: tokio::sync::Mutex<()>,
    hotplug_wait: Duration,
}

impl<N: Netlink> Network<N> {
    pub fn new(nl: N) -> Network<N> {
        Network { nl, updates: tokio::sync::Mutex::new(()), hotplug_wait: HOTPLUG_WAIT }
    }

    /// Waits at most `wait` for a link with `mac` to exist (no lock held).
    async fn wait_for_mac(&self, mac: &[u8; 6], wait: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.nl.links().await?.iter().any(|l| l.mac == *mac) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(HOTPLUG_POLL).await;
        }
        Ok(())
    }

    /// kata's UpdateInterface: the link with the request's `hwAddr` gets the
    /// request's name, MTU, NOARP flag and exactly the request's addresses
    /// (IPv6 link-local ones the kernel made are kept), and is left up. Answers
    /// the request's interface, as kata does.
    pub async fn update_interface(&self, iface: &Interface) -> Result<Interface> {
        let req = request::interface(iface)?;
        if !iface.devicePath.is_empty() {
            self.wait_for_mac(&req.mac, self.hotplug_wait).await?;
        }
        let _serial = self.updates.lock().await;
        let links = self.nl.links().await?;
        let link = links
            .iter()
            .find(|l| l.mac == req.mac)
            .ok_or_else(|| NetworkError::LinkNotFound(format!("Address: {}", req.mac_text)))?;
        tracing::info!(index = link.index, from = %link.name, to = %req.name, mac = %req.mac_text, "updating interface");
        if link.up {
            self.nl.set_link(link.index, &LinkChange { up: Some(false), ..Default::default() }).await?;
        }

        let wanted: Vec<IpNet> =
            req.addresses.iter().copied().filter(|a| a.family() == Family::V4 || self.nl.ipv6_enabled()).collect();
        for (_, old) in self.nl.addresses(Some(link.index)).await? {
            if !wanted.contains(&old) && !old.is_ipv6_link_local() {
                self.nl.del_address(link.index, old).await?;
            }
        }
        for net in &wanted {
            self.nl.add_address(link.index, *net).await?;
        }

        if link.name != req.name {
            self.rename(link, &links, &req.name).await?;
        }
        let change = LinkChange { name: None, mtu: req.mtu, arp: Some(!req.noarp), up: Some(true) };
        self.nl.set_link(link.index, &change).await?;
        Ok(iface.clone())
    }

    /// Renames `link` (down) to `name`. A different link already holding the
    /// name takes `link`'s old name (through a temporary one), as kata swaps.
    async fn rename(&self, link: &Link, links: &[Link], name: &str) -> Result<()> {
        let holder = links.iter().find(|l| l.name == name && l.index != link.index);
        if let Some(other) = holder {
            let temp = format!("cvmtmp{}", other.index);
            tracing::info!(index = other.index, name, temp = %temp, "moving the link holding the requested name aside");
            // The kernel refuses to rename a link that is up (EBUSY), and a
            // SETLINK applies the name before the flags: down first.
            if other.up {
                self.nl.set_link(other.index, &LinkChange { up: Some(false), ..Default::default() }).await?;
            }
            self.nl.set_link(other.index, &LinkChange { name: Some(temp), ..Default::default() }).await?;
            self.nl.set_link(link.index, &LinkChange { name: Some(name.to_owned()), ..Default::default() }).await?;
            let back = LinkChange { name: Some(link.name.clone()), up: other.up.then_some(true), ..Default::default() };
            self.nl.set_link(other.index, &back).await
        } else {
            self.nl.set_link(link.index, &LinkChange { name: Some(name.to_owned()), ..Default::default() }).await
        }
    }

    /// kata's UpdateRoutes: on every device the request names, the routes
    /// that are not the kernel's own (protocol kernel) are deleted, then the
    /// request's routes are added (those without a gateway first, so that a
    /// gateway is reachable when its route is added). Answers ListRoutes.
    pub async fn update_routes(&self, routes: &[Route]) -> Result<Vec<Route>> {
        let planned = request::routes(routes)?;
        {
            let _serial = self.updates.lock().await;
            let links = self.nl.links().await?;
            let mut entries = Vec::with_capacity(planned.len());
            for r in &planned {
                let link = find_by_name(&links, &r.device)?;
                entries.push(r.entry(link.index));
            }
            let devices: HashSet<u32> = entries.iter().map(|e| e.oif).collect();
            for old in self.nl.routes().await? {
                if old.table == RT_TABLE_MAIN && old.protocol != RTPROT_KERNEL && devices.contains(&old.oif) {
                    self.nl.del_route(&old).await?;
                }
            }
            for entry in &entries {
                tracing::info!(dest = ?entry.dest, gateway = ?entry.gateway, oif = entry.oif, "adding route");
                self.nl.add_route(entry).await?;
            }
        }
        self.list_routes().await
    }

    /// kata's ListInterfaces: every link (loopback included) with its name,
    /// MAC, MTU and addresses.
    pub async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let links = self.nl.links().await?;
        let addrs = self.nl.addresses(None).await?;
        Ok(links
            .iter()
            .map(|l| {
                let own = addrs.iter().filter(|(i, _)| *i == l.index).map(|(_, a)| *a);
                request::interface_out(l, own)
            })
            .collect())
    }

    /// kata's ListRoutes: the main table's routes, IPv4 then IPv6.
    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let links = self.nl.links().await?;
        let routes = self.nl.routes().await?;
        Ok(routes
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN)
            .map(|r| {
                let device = links.iter().find(|l| l.index == r.oif).map(|l| l.name.as_str()).unwrap_or("");
                request::route_out(r, device)
            })
            .collect())
    }

    /// kata's AddARPNeighbors: each entry added (replaced) on its device;
    /// state 0 means NUD_PERMANENT.
    pub async fn add_arp_neighbors(&self, neighbors: &[ARPNeighbor]) -> Result<()> {
        let parsed = request::neighbors(neighbors)?;
        let _serial = self.updates.lock().await;
        let links = self.nl.links().await?;
        for n in &parsed {
            let link = find_by_name(&links, &n.device)?;
            let entry = n.entry(link.index);
            tracing::info!(ip = %entry.ip, device = %n.device, state = entry.state, "adding neighbor");
            self.nl.add_neighbor(&entry).await?;
        }
        Ok(())
    }
}

fn find_by_name<'a>(links: &'a [Link], name: &str) -> Result<&'a Link> {
    links.iter().find(|l| l.name == name).ok_or_else(|| NetworkError::LinkNotFound(format!("Name: {name}")))
}
