//! Tests of `announce` on the wire: a veth pair across two namespaces made
//! by the test, the VIP added and announced on one end, and the frames
//! captured on the other with an AF_PACKET socket of the test's own. Root
//! only, as in CI (see `netlink_tests` for the namespace helpers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

use super::super::netlink::tests::NetNs;
use super::super::netlink::{NetError, Netlink};
use super::announce;

/// Namespaces `a` (with `va`) and `b` (with `vb`), joined by a veth pair.
fn pair() -> (NetNs, NetNs) {
    let (a, b) = (NetNs::new(), NetNs::new());
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    (a, b)
}

/// Adds `vip` on `a`'s `va` and announces it twice, while `b` captures; the
/// first captured frame that `wanted` accepts, and how many frames were seen.
fn announce_and_capture(
    a: &NetNs,
    b: &NetNs,
    vip: &str,
    wanted: impl Fn(&[u8]) -> bool + Send,
) -> (Option<Vec<u8>>, usize) {
    let vip: ipnet::IpNet = vip.parse().expect("vip");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let capture = s.spawn(move || {
            b.enter();
            let fd = socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthAll,
            )
            .expect("capture socket");
            let _ = ready_tx.send(());
            let (mut buf, mut seen) = (vec![0u8; 2048], 0);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n) => {
                        seen += 1;
                        if wanted(&buf[..n]) {
                            return (Some(buf[..n].to_vec()), seen);
                        }
                    }
                    Err(Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => panic!("capture: {e}"),
                }
            }
            (None, seen)
        });
        ready_rx.recv().expect("capture thread ready");
        a.block_on(|| async {
            let net = Netlink::new().expect("netlink");
            let idx = net.ifindex("va").await.expect("va");
            net.set_address(idx, vip, 30).await.expect("add");
            announce("va", idx, vip.addr(), 2, Duration::from_millis(50))
                .await
                .expect("announce");
        });
        capture
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[test]
fn ipv4_sends_a_gratuitous_arp_request_from_the_interface_mac() {
    let (a, b) = pair();
    let mac = a.mac("va");
    let ip: Ipv4Addr = "198.18.0.100".parse().expect("ip");
    let (frame, seen) = announce_and_capture(&a, &b, "198.18.0.100/24", |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == ip.octets()
    });
    let f =
        frame.unwrap_or_else(|| panic!("no ARP for {ip} among {seen} frames captured on the peer"));
    assert_eq!(f[0..6], [0xff; 6], "not broadcast");
    assert_eq!(f[6..12], mac, "Ethernet source is not va's MAC");
    let arp = &f[14..42];
    assert_eq!(
        arp[0..8],
        [0, 1, 0x08, 0x00, 6, 4, 0, 1],
        "not an Ethernet/IPv4 ARP request"
    );
    assert_eq!(arp[8..14], mac, "sender MAC");
    assert_eq!(arp[14..18], ip.octets(), "sender IP");
    assert_eq!(arp[18..24], [0; 6], "target MAC");
    assert_eq!(arp[24..28], ip.octets(), "target IP");
}

#[test]
fn ipv6_sends_an_unsolicited_neighbour_advertisement() {
    let (a, b) = pair();
    let mac = a.mac("va");
    let ip: Ipv6Addr = "fd00::100".parse().expect("ip");
    let (frame, seen) = announce_and_capture(&a, &b, "fd00::100/64", |f| {
        f.len() >= 86
            && f[12..14] == [0x86, 0xdd]
            && f[20] == 58
            && f[54] == 136
            && f[62..78] == ip.octets()
    });
    let f =
        frame.unwrap_or_else(|| panic!("no NA for {ip} among {seen} frames captured on the peer"));
    assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "not to all nodes");
    assert_eq!(f[6..12], mac, "Ethernet source is not va's MAC");
    let (ip6, icmp) = (&f[14..54], &f[54..]);
    assert_eq!(ip6[7], 255, "hop limit");
    assert_eq!(
        ip6[24..40],
        "ff02::1".parse::<Ipv6Addr>().expect("ff02::1").octets()
    );
    assert_eq!(icmp[1], 0, "code");
    assert_eq!(icmp[4] & 0xe0, 0x20, "flags: override only");
    assert_eq!(icmp[24..26], [2, 1], "target link-layer address option");
    assert_eq!(icmp[26..32], mac, "target link-layer address");
    let len = u16::from_be_bytes([ip6[4], ip6[5]]) as usize;
    assert_eq!(
        icmp6_sum(&ip6[8..24], &ip6[24..40], &icmp[..len]),
        0xffff,
        "bad ICMPv6 checksum"
    );
}

/// One's-complement sum over the IPv6 pseudo-header and the message; a
/// correct checksum makes it 0xffff.
fn icmp6_sum(src: &[u8], dst: &[u8], msg: &[u8]) -> u16 {
    let len = (msg.len() as u32).to_be_bytes();
    let pseudo = [src, dst, &len, &[0, 0, 0, 58]].concat();
    let mut sum: u32 = 0;
    for part in [pseudo.as_slice(), msg] {
        for c in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn loopback_has_nothing_to_announce_and_unknown_names_are_errors() {
    let ns = NetNs::new();
    let (lo4, lo6, missing) = ns.block_on(|| async {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        (
            announce("lo", 1, v4, 1, Duration::ZERO).await,
            announce("lo", 1, v6, 1, Duration::ZERO).await,
            announce("nosuch0", 77, v4, 1, Duration::ZERO).await,
        )
    });
    assert!(lo4.is_ok() && lo6.is_ok(), "{lo4:?} {lo6:?}");
    assert!(
        matches!(missing, Err(NetError::NoInterface(ref n)) if n == "nosuch0"),
        "{missing:?}"
    );
}
