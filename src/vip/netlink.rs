//! Interface addresses over rtnetlink (no `ip` subprocess): look an interface
//! up by name, and check, add and remove the virtual IP on it.
//!
//! Data flow: `Netlink::new` opens a NETLINK_ROUTE socket in the calling
//! thread's network namespace and spawns its connection task on the current
//! tokio runtime; every call sends one request through the `rtnetlink::Handle`
//! and reads the kernel's answer. Set (add or refresh, always with a finite
//! lifetime) and delete are idempotent, so the VIP task can repeat them after
//! a crash or a lost answer without special cases.
//! The VIP is matched by its host address whatever the prefix length on the
//! interface: a copy left with an older prefix is still this node's address.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::LinkAttribute;
use tokio::task::JoinHandle;

/// Linux limits interface names to IFNAMSIZ - 1 bytes; the kernel rejects
/// longer ones with a vague EINVAL, so they are caught here by name.
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// A route-netlink connection. The connection task dies with it.
pub struct Netlink {
    handle: rtnetlink::Handle,
    conn: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Netlink {
    /// Opens the socket (in this thread's network namespace) and spawns its
    /// connection on the current tokio runtime.
    pub fn new() -> Result<Netlink, NetError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| NetError::Io {
            op: "opening a netlink socket".into(),
            source: std::io::Error::other(e),
        })?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            op: "opening a netlink socket".into(),
            source,
        })?;
        Ok(Netlink {
            handle,
            conn: rt.spawn(conn),
        })
    }

    /// The index of the interface called `name`.
    pub async fn ifindex(&self, name: &str) -> Result<u32, NetError> {
        if name.is_empty() || name.len() > IFNAME_MAX {
            return Err(NetError::NoInterface(name.to_string()));
        }
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetError::NoInterface(name.to_string())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                Err(NetError::NoInterface(name.to_string()))
            }
            Err(source) => Err(NetError::Netlink {
                op: format!("looking up interface {name:?}"),
                source,
            }),
        }
    }

    /// Whether `addr`'s host address is on the interface (any prefix length).
    pub async fn has_address(&self, ifindex: u32, addr: IpNet) -> Result<bool, NetError> {
        match self.find(ifindex, addr.addr()).await {
            Ok(found) => Ok(!found.is_empty()),
            Err(source) => Err(self
                .fail(
                    ifindex,
                    format!("listing the addresses to find {addr}"),
                    source,
                )
                .await),
        }
    }

    /// Puts `addr` (host address and prefix length) on the interface for
    /// `lifetime` seconds (`valid_lft` = `preferred_lft`), or sets the
    /// lifetime of the copy already there (`NLM_F_REPLACE`): the kernel
    /// removes the address by itself once it runs out. IPv6 skips duplicate
    /// address detection: the address must serve at once, and the lease
    /// already says no one else has it.
    pub async fn set_address(
        &self,
        ifindex: u32,
        addr: IpNet,
        lifetime: u32,
    ) -> Result<(), NetError> {
        let mut req = self
            .handle
            .address()
            .add(ifindex, addr.addr(), addr.prefix_len())
            .replace();
        let msg = req.message_mut();
        if addr.addr().is_ipv6() {
            msg.header.flags |= AddressHeaderFlags::Nodad;
        }
        let mut cache = CacheInfo::default();
        cache.ifa_valid = lifetime;
        cache.ifa_preferred = lifetime;
        msg.attributes.push(AddressAttribute::CacheInfo(cache));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(source) => {
                let what = format!("adding {addr} for {lifetime} s");
                Err(self.fail(ifindex, what, source).await)
            }
        }
    }

    /// Removes `addr`'s host address from the interface, whatever its prefix
    /// length there. Not there is success.
    pub async fn del_address(&self, ifindex: u32, addr: IpNet) -> Result<(), NetError> {
        let found = match self.find(ifindex, addr.addr()).await {
            Ok(found) => found,
            Err(source) => {
                return Err(self
                    .fail(
                        ifindex,
                        format!("listing the addresses to remove {addr}"),
                        source,
                    )
                    .await)
            }
        };
        for mut msg in found {
            // Only what identifies the address: the dump's cache info and
            // flags mean nothing to a delete.
            msg.attributes
                .retain(|a| matches!(a, AddressAttribute::Address(_) | AddressAttribute::Local(_)));
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                // Someone else removed it between the dump and the delete.
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(source) => {
                    return Err(self.fail(ifindex, format!("removing {addr}"), source).await)
                }
            }
        }
        Ok(())
    }

    /// The interface's address entries whose own (local) address is `ip`.
    async fn find(
        &self,
        ifindex: u32,
        ip: IpAddr,
    ) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        let all: Vec<AddressMessage> = dump.try_collect().await?;
        Ok(all.into_iter().filter(|m| local(m) == Some(ip)).collect())
    }

    /// A netlink error with the interface named: its name when the kernel
    /// still knows the index, else the index alone.
    async fn fail(&self, ifindex: u32, what: String, source: rtnetlink::Error) -> NetError {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let name = match links.try_next().await {
            Ok(Some(link)) => link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        };
        let op = match name {
            Some(n) => format!("{what} on interface {n} (index {ifindex})"),
            None => format!("{what} on interface index {ifindex}"),
        };
        NetError::Netlink { op, source }
    }
}

/// The entry's own address: IFA_LOCAL when present (IFA_ADDRESS is then the
/// peer of a point-to-point link), else IFA_ADDRESS (IPv6 without a peer).
fn local(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// The errno of a kernel refusal, positive (the wire carries it negated).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
pub(super) mod tests;
