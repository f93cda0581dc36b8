//! ARP on one interface: the request frames a sweep sends, the replies it accepts
//! (pnet's packet types, RFC 826), and the blocking raw-socket sweep itself.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender};
use pnet::packet::arp::{
    ArpHardwareTypes, ArpOperation, ArpOperations, ArpPacket, MutableArpPacket,
};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet::packet::{MutablePacket, Packet};
use pnet::util::MacAddr;

use super::local_interfaces;
use super::plan::list_names;
use super::{DiscoveryError, SweepPlan};

/// Requests sent between two reads of the replies, so the socket never overflows.
const SEND_BATCH: usize = 16;
/// Poll granularity of the raw socket while collecting replies.
const READ_TICK: Duration = Duration::from_millis(5);
/// Longest time spent emptying the socket between two batches of requests.
const DRAIN_LIMIT: Duration = Duration::from_millis(50);
/// Listening time between the first pass and the second (for hosts that were slow or a
/// frame that was lost, the second pass asks the silent addresses again).
const BETWEEN_PASSES: Duration = Duration::from_millis(200);
/// Length of an ARP request in an Ethernet frame (without padding).
pub const ARP_FRAME_LEN: usize = 42;

/// A broadcast Ethernet frame asking "who has `target`? tell `our_ip`" (RFC 826), from
/// the interface whose hardware address is `mac`.
pub fn arp_request(mac: [u8; 6], our_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(
        ArpOperations::Request,
        (mac_addr(mac), our_ip),
        // The target's hardware address is unknown: that is the question.
        (MacAddr::zero(), target),
        MacAddr::broadcast(),
    )
}

fn mac_addr(b: [u8; 6]) -> MacAddr {
    MacAddr::new(b[0], b[1], b[2], b[3], b[4], b[5])
}

/// An Ethernet frame to `destination` carrying an ARP packet for Ethernet and IPv4:
/// `operation`, from `sender` to `target` (each a hardware and a protocol address).
fn arp_frame(
    operation: ArpOperation,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
    destination: MacAddr,
) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    // ARP_FRAME_LEN is exactly an Ethernet header and such an ARP packet, so both views
    // fit (`arp_frames_round_trip` checks every field).
    if let Some(mut eth) = MutableEthernetPacket::new(&mut frame) {
        eth.set_destination(destination);
        eth.set_source(sender.0);
        eth.set_ethertype(EtherTypes::Arp);
        if let Some(mut arp) = MutableArpPacket::new(eth.payload_mut()) {
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(operation);
            arp.set_sender_hw_addr(sender.0);
            arp.set_sender_proto_addr(sender.1);
            arp.set_target_hw_addr(target.0);
            arp.set_target_proto_addr(target.1);
        }
    }
    frame
}

/// The sender of `frame` if it is an ARP reply to us from an address of the plan's range.
pub fn parse_arp_reply(frame: &[u8], plan: &SweepPlan) -> Option<Ipv4Addr> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    let ok = arp.get_operation() == ArpOperations::Reply
        && arp.get_hardware_type() == ArpHardwareTypes::Ethernet
        && arp.get_protocol_type() == EtherTypes::Ipv4
        && arp.get_target_proto_addr() == plan.our_ip;
    let sender = arp.get_sender_proto_addr();
    (ok && sender != plan.our_ip && plan.range.contains(sender)).then_some(sender)
}

/// Both ends of a raw Ethernet channel.
type RawChannel = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

fn open_channel(plan: &SweepPlan) -> Result<RawChannel, DiscoveryError> {
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.index == plan.index && i.name == plan.iface)
        .ok_or_else(|| DiscoveryError::NoInterface {
            name: plan.iface.clone(),
            available: list_names(&local_interfaces()),
        })?;
    let config = datalink::Config {
        read_timeout: Some(READ_TICK),
        write_timeout: Some(Duration::from_secs(1)),
        promiscuous: false,
        ..Default::default()
    };
    match datalink::channel(&iface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((tx, rx)),
        Ok(_) => Err(DiscoveryError::NotEthernet(plan.iface.clone())),
        Err(source) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(DiscoveryError::NotPermitted {
                iface: plan.iface.clone(),
                source,
            })
        }
        Err(source) => Err(DiscoveryError::Channel {
            iface: plan.iface.clone(),
            source,
        }),
    }
}

/// Checks that the plan's interface can be swept (it exists and raw sockets are
/// allowed) without sending anything.
pub fn check_plan(plan: &SweepPlan) -> Result<(), DiscoveryError> {
    open_channel(plan).map(drop)
}

fn send_frame(
    tx: &mut dyn DataLinkSender,
    frame: &[u8],
    iface: &str,
) -> Result<(), DiscoveryError> {
    let mut tries = 0;
    loop {
        match tx.send_to(frame, None) {
            Some(Ok(())) | None => return Ok(()),
            // A full transmit queue: give it a moment.
            Some(Err(e))
                if tries < 100
                    && (e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(Err(source)) => {
                return Err(DiscoveryError::Send {
                    iface: iface.to_string(),
                    source,
                })
            }
        }
    }
}

/// Reads replies: at least until `quiet_after` (then up to the first idle read tick),
/// and never past `deadline`, however busy the network.
fn collect_replies(
    rx: &mut dyn DataLinkReceiver,
    plan: &SweepPlan,
    found: &mut BTreeSet<Ipv4Addr>,
    quiet_after: Instant,
    deadline: Instant,
) -> Result<(), DiscoveryError> {
    loop {
        match rx.next() {
            Ok(frame) => {
                if let Some(ip) = parse_arp_reply(frame, plan) {
                    found.insert(ip);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= quiet_after {
                    return Ok(());
                }
            }
            Err(source) => {
                return Err(DiscoveryError::Receive {
                    iface: plan.iface.clone(),
                    source,
                })
            }
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// Sweeps the plan's range with ARP requests (two passes: everyone, then the silent
/// ones) and returns the addresses that answered, collecting replies until `wait` after
/// the last request. Blocking; needs root or CAP_NET_RAW.
pub fn arp_sweep(plan: &SweepPlan, wait: Duration) -> Result<BTreeSet<Ipv4Addr>, DiscoveryError> {
    let (mut tx, mut rx) = open_channel(plan)?;
    let targets = plan.targets();
    let mut found = BTreeSet::new();
    for pass in 0..2 {
        let ask: Vec<Ipv4Addr> = targets
            .iter()
            .copied()
            .filter(|ip| !found.contains(ip))
            .collect();
        if ask.is_empty() {
            break;
        }
        for batch in ask.chunks(SEND_BATCH) {
            for ip in batch {
                send_frame(
                    &mut *tx,
                    &arp_request(plan.mac, plan.our_ip, *ip),
                    &plan.iface,
                )?;
            }
            // Empty the socket between batches so it never overflows and drops replies.
            let now = Instant::now();
            collect_replies(&mut *rx, plan, &mut found, now, now + DRAIN_LIMIT)?;
        }
        let listen = if pass == 0 { BETWEEN_PASSES } else { wait };
        let until = Instant::now() + listen;
        collect_replies(&mut *rx, plan, &mut found, until, until)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::machine;
    use super::super::{plan, ScanTarget};
    use super::*;

    /// An ARP reply from `sender` (with MAC `smac`) to `target`.
    fn reply(sender: Ipv4Addr, smac: [u8; 6], target: Ipv4Addr, tmac: [u8; 6]) -> Vec<u8> {
        let (smac, tmac) = (mac_addr(smac), mac_addr(tmac));
        let mut f = arp_frame(ArpOperations::Reply, (smac, sender), (tmac, target), tmac).to_vec();
        f.resize(60, 0); // padded to the Ethernet minimum, as on the wire
        f
    }

    #[test]
    fn arp_frames_round_trip() {
        let p = plan(&ScanTarget::Interface("eth0".into()), &machine()).unwrap();
        let target = Ipv4Addr::new(192, 168, 1, 40);
        let req = arp_request(p.mac, p.our_ip, target);
        assert_eq!(
            ARP_FRAME_LEN,
            EthernetPacket::minimum_packet_size() + ArpPacket::minimum_packet_size()
        );
        let eth = EthernetPacket::new(&req).unwrap();
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        assert_eq!(eth.get_destination().octets(), [0xff; 6]);
        assert_eq!(eth.get_source().octets(), p.mac);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_hardware_type(), ArpHardwareTypes::Ethernet);
        assert_eq!(arp.get_protocol_type(), EtherTypes::Ipv4);
        assert_eq!((arp.get_hw_addr_len(), arp.get_proto_addr_len()), (6, 4));
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_hw_addr().octets(), p.mac);
        assert_eq!(arp.get_sender_proto_addr(), p.our_ip);
        assert_eq!(arp.get_target_hw_addr(), MacAddr::zero());
        assert_eq!(arp.get_target_proto_addr(), target);
        // Byte for byte the frame of RFC 826 (hardware type 1, EtherType 0x0806).
        assert_eq!(&req[12..22], &[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        // Our own request, seen on the socket, is not an answer.
        assert_eq!(parse_arp_reply(&req, &p), None);

        let theirs = [2, 9, 9, 9, 9, 9];
        assert_eq!(
            parse_arp_reply(&reply(target, theirs, p.our_ip, p.mac), &p),
            Some(target)
        );
        // A reply to someone else, or from outside the range, is ignored.
        let other = Ipv4Addr::new(192, 168, 1, 99);
        assert_eq!(
            parse_arp_reply(&reply(target, theirs, other, p.mac), &p),
            None
        );
        let outside = Ipv4Addr::new(192, 168, 2, 1);
        assert_eq!(
            parse_arp_reply(&reply(outside, theirs, p.our_ip, p.mac), &p),
            None
        );
        assert_eq!(parse_arp_reply(&[1, 2, 3], &p), None);
    }
}
