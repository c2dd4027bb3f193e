//! Telling the LAN that the virtual IP has moved here: gratuitous ARP for
//! IPv4, an unsolicited neighbour advertisement for IPv6, so switches and
//! neighbours send to this node's MAC at once instead of when their caches
//! expire.
//!
//! Data flow: `announce` opens one socket in the calling thread's network
//! namespace (AF_PACKET for ARP, raw ICMPv6 for NA), reads the interface's
//! MAC with SIOCGIFHWADDR, builds the packet once and sends it `repeats`
//! times. The sends are single non-blocking syscalls, so they run inline on
//! the async task; only the waits between them yield.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    self, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6, SockaddrLike,
};

use super::netlink::NetError;

/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// RFC 4861 7.1.2: receivers drop NAs that crossed a router.
const ND_HOP_LIMIT: i32 = 255;
const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;
/// Override: replace whatever link-layer address the neighbour has cached.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;

/// Sends `repeats` announcements of `ip` on the interface, `gap` apart. An
/// interface without an Ethernet address (loopback, tun, WireGuard) has no
/// neighbour caches to update: nothing is sent and that is success.
pub async fn announce(
    ifname: &str,
    ifindex: u32,
    ip: IpAddr,
    repeats: u32,
    gap: Duration,
) -> Result<(), NetError> {
    let io_err = |what: &str, e: io::Error| NetError::Io {
        op: format!("announcing {ip} on interface {ifname}: {what}"),
        source: e,
    };
    let opened = match ip {
        IpAddr::V4(v4) => Sender::arp(ifname, ifindex, v4),
        IpAddr::V6(v6) => Sender::neighbour_advert(ifname, ifindex, v6),
    };
    let sender = match opened {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::debug!(
                interface = ifname,
                "vip: no Ethernet address, nothing to announce"
            );
            return Ok(());
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            return Err(NetError::NoInterface(ifname.to_string()))
        }
        Err(e) => return Err(io_err("opening the socket", e)),
    };
    for n in 0..repeats {
        if n > 0 {
            tokio::time::sleep(gap).await;
        }
        sender.send().map_err(|e| io_err("sending", e))?;
    }
    tracing::debug!(%ip, interface = ifname, repeats, "vip: address announced");
    Ok(())
}

/// A socket with its packet and destination, ready to send again and again.
struct Sender {
    fd: OwnedFd,
    packet: Vec<u8>,
    to: Dest,
}

enum Dest {
    Link(LinkAddr),
    V6(SockaddrIn6),
}

impl Sender {
    /// Gratuitous ARP as an ARP *request* with sender = target = the VIP (RFC
    /// 5227's ARP Announcement, what `arping -U` and keepalived send): every
    /// stack processes requests, while some ignore replies nobody asked for.
    fn arp(ifname: &str, ifindex: u32, ip: Ipv4Addr) -> io::Result<Option<Sender>> {
        // Protocol 0: this socket only sends, so it subscribes to no frames.
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let Some(mac) = ether_addr(&fd, ifname)? else {
            return Ok(None);
        };
        let ll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ARP as u16).to_be(),
            sll_ifindex: i32::try_from(ifindex)
                .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            // The kernel writes the Ethernet header (SOCK_DGRAM): broadcast.
            sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
        };
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the pointer is to a fully initialised sockaddr_ll on this
        // stack frame and `len` is its exact size; from_raw copies it out.
        let to = unsafe { LinkAddr::from_raw(std::ptr::from_ref(&ll).cast(), Some(len)) }
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(Some(Sender {
            fd,
            packet: arp_announcement(mac, ip).to_vec(),
            to: Dest::Link(to),
        }))
    }

    /// An unsolicited NA to all nodes, sourced from an address the kernel
    /// picks on the interface; the kernel fills in the ICMPv6 checksum.
    fn neighbour_advert(ifname: &str, ifindex: u32, ip: Ipv6Addr) -> io::Result<Option<Sender>> {
        let fd = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )?;
        let Some(mac) = ether_addr(&fd, ifname)? else {
            return Ok(None);
        };
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))?;
        socket::setsockopt(&fd, sockopt::Ipv6MulticastHops, &ND_HOP_LIMIT)?;
        // The scope id picks the outgoing interface of a link-local multicast.
        let to = SockaddrIn6::from(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
        Ok(Some(Sender {
            fd,
            packet: neighbour_advert(mac, ip).to_vec(),
            to: Dest::V6(to),
        }))
    }

    fn send(&self) -> io::Result<()> {
        let to: &dyn SockaddrLike = match &self.to {
            Dest::Link(a) => a,
            Dest::V6(a) => a,
        };
        socket::sendto(self.fd.as_raw_fd(), &self.packet, to, MsgFlags::empty())?;
        Ok(())
    }
}

/// The interface's MAC, or None when its link layer is not Ethernet.
fn ether_addr(fd: &OwnedFd, ifname: &str) -> io::Result<Option<[u8; 6]>> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    // SAFETY: ifreq is plain old data (all zeroes is a valid value, and the
    // zero tail terminates the name); SIOCGIFHWADDR reads the name and writes
    // only the ifr_hwaddr member, which is then read as the sockaddr it is.
    let hw = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_hwaddr
    };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data) {
        *dst = src as u8;
    }
    Ok(Some(mac))
}

/// The 28-byte ARP body (the kernel adds the Ethernet header).
fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address stays zero: it is what a request asks for.
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// ICMPv6 NA with the target link-layer address option; checksum left zero
/// for the kernel.
fn neighbour_advert(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = ICMPV6_NEIGHBOUR_ADVERT;
    // Not solicited (RFC 4861 7.2.6): no one asked, and the S flag would be
    // taken as reachability confirmation.
    p[4] = NA_FLAG_OVERRIDE;
    p[8..24].copy_from_slice(&ip.octets());
    p[24] = ND_OPT_TARGET_LL_ADDR;
    p[25] = 1; // option length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

#[cfg(test)]
#[path = "announce_tests.rs"]
mod tests;
