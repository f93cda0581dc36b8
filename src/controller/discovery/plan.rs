//! What a sweep covers: the `--scan` target, this machine's interfaces, and the plan
//! (interface, our address, the range to ask) that follows from them. Pure: no socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use pnet::datalink::{self, NetworkInterface};
use pnet::ipnetwork::Ipv4Network;

use super::{DiscoveryError, MAX_SWEEP_HOSTS};

/// What `--scan` names: an interface (sweep its subnet) or a CIDR (sweep it through the
/// interface whose subnet overlaps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanTarget {
    /// An interface by name (`eth0`): sweep its IPv4 subnet.
    Interface(String),
    /// A CIDR (`192.168.1.0/24`): sweep the part of it on an interface's subnet.
    Cidr(Ipv4Network),
}

impl FromStr for ScanTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains('/') {
            let net =
                Ipv4Network::from_str(s).map_err(|e| format!("invalid IPv4 CIDR {s:?}: {e}"))?;
            return Ok(ScanTarget::Cidr(normalize(net)));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{s} is an address, not a subnet: give a CIDR such as {s}/24 or an interface name"
            ));
        }
        let valid = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid {
            return Err(format!(
                "{s:?} is neither an interface name nor an IPv4 CIDR (such as 192.168.1.0/24)"
            ));
        }
        Ok(ScanTarget::Interface(s.to_string()))
    }
}

impl fmt::Display for ScanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanTarget::Interface(name) => f.write_str(name),
            ScanTarget::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// `net` with its host bits cleared (10.0.0.7/24 becomes 10.0.0.0/24).
fn normalize(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Number of host addresses of `net` (without network and broadcast addresses, except
/// for /31 and /32 which have none).
pub fn host_count(net: Ipv4Network) -> usize {
    let size = 1usize << (32 - u32::from(net.prefix()));
    if net.prefix() >= 31 {
        size
    } else {
        size - 2
    }
}

/// The host addresses of `net`, in order.
pub fn host_addresses(net: Ipv4Network) -> Vec<Ipv4Addr> {
    let net = normalize(net);
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    let (first, last) = if net.prefix() >= 31 {
        (first, last)
    } else {
        (first + 1, last - 1)
    };
    (first..=last).map(Ipv4Addr::from).collect()
}

/// A network interface as discovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// The kernel's interface index.
    pub index: u32,
    /// Its Ethernet address; `None` if it has none (or all zeros).
    pub mac: Option<[u8; 6]>,
    /// Its IPv4 addresses with their prefixes (10.0.0.7/24).
    pub ipv4: Vec<Ipv4Network>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Whether it is a loopback interface.
    pub loopback: bool,
}

impl Interface {
    fn from_pnet(i: &NetworkInterface) -> Self {
        Interface {
            name: i.name.clone(),
            index: i.index,
            mac: i.mac.map(|m| m.octets()).filter(|m| *m != [0; 6]),
            ipv4: i
                .ips
                .iter()
                .filter_map(|ip| match ip {
                    pnet::ipnetwork::IpNetwork::V4(v4) => {
                        Ipv4Network::new(v4.ip(), v4.prefix()).ok()
                    }
                    pnet::ipnetwork::IpNetwork::V6(_) => None,
                })
                .collect(),
            up: i.is_up(),
            loopback: i.is_loopback(),
        }
    }
}

/// The interfaces of this machine (of the network namespace the process runs in).
pub fn local_interfaces() -> Vec<Interface> {
    datalink::interfaces()
        .iter()
        .map(Interface::from_pnet)
        .collect()
}

/// One sweep to run: where to send from and which addresses to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepPlan {
    /// The interface to send from, by name.
    pub iface: String,
    /// Its kernel interface index.
    pub index: u32,
    /// Its Ethernet address (the ARP sender hardware address).
    pub mac: [u8; 6],
    /// Our address on the swept subnet (the ARP sender address, never swept).
    pub our_ip: Ipv4Addr,
    /// The addresses swept: the interface's subnet, or the part of the CIDR on it.
    pub range: Ipv4Network,
}

impl SweepPlan {
    /// Every address to ask, without our own.
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        host_addresses(self.range)
            .into_iter()
            .filter(|ip| *ip != self.our_ip)
            .collect()
    }
}

pub(super) fn list_names(ifaces: &[Interface]) -> String {
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn list_subnets(ifaces: &[Interface]) -> String {
    let nets: Vec<String> = ifaces
        .iter()
        .filter(|i| !i.loopback)
        .flat_map(|i| i.ipv4.iter().map(move |n| format!("{} on {}", n, i.name)))
        .collect();
    if nets.is_empty() {
        "none".into()
    } else {
        nets.join(", ")
    }
}

/// Decides how to sweep `target` given this machine's interfaces.
pub fn plan(target: &ScanTarget, ifaces: &[Interface]) -> Result<SweepPlan, DiscoveryError> {
    let (iface, our, range) = match target {
        ScanTarget::Interface(name) => {
            let iface = ifaces.iter().find(|i| &i.name == name).ok_or_else(|| {
                DiscoveryError::NoInterface {
                    name: name.clone(),
                    available: list_names(ifaces),
                }
            })?;
            if iface.loopback {
                return Err(DiscoveryError::Loopback(name.clone()));
            }
            let our = iface
                .ipv4
                .iter()
                .find(|n| n.prefix() < 32)
                .ok_or_else(|| DiscoveryError::NoIpv4(name.clone()))?;
            (iface, *our, normalize(*our))
        }
        ScanTarget::Cidr(cidr) => {
            let found = ifaces
                .iter()
                .filter(|i| !i.loopback)
                .flat_map(|i| i.ipv4.iter().map(move |n| (i, *n)))
                .find_map(|(i, n)| {
                    let subnet = normalize(n);
                    if subnet.contains(cidr.network()) {
                        Some((i, n, *cidr))
                    } else if cidr.contains(subnet.network()) {
                        Some((i, n, subnet))
                    } else {
                        None
                    }
                });
            found.ok_or_else(|| DiscoveryError::NoRoute {
                cidr: *cidr,
                available: list_subnets(ifaces),
            })?
        }
    };
    if !iface.up {
        return Err(DiscoveryError::Down(iface.name.clone()));
    }
    let mac = iface
        .mac
        .ok_or_else(|| DiscoveryError::NoMac(iface.name.clone()))?;
    let hosts = host_count(range);
    if hosts > MAX_SWEEP_HOSTS {
        return Err(DiscoveryError::TooLarge { range, hosts });
    }
    Ok(SweepPlan {
        iface: iface.name.clone(),
        index: iface.index,
        mac,
        our_ip: our.ip(),
        range,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::controller::discovery) fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    pub(in crate::controller::discovery) fn iface(
        name: &str,
        index: u32,
        nets: &[&str],
    ) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            ipv4: nets.iter().map(|n| net(n)).collect(),
            up: true,
            loopback: false,
        }
    }

    pub(in crate::controller::discovery) fn machine() -> Vec<Interface> {
        let mut lo = iface("lo", 1, &["127.0.0.1/8"]);
        lo.loopback = true;
        lo.mac = None;
        vec![
            lo,
            iface("eth0", 2, &["192.168.1.17/24"]),
            iface("wlan0", 3, &["10.20.0.5/16"]),
        ]
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "eth0".parse::<ScanTarget>().unwrap(),
            ScanTarget::Interface("eth0".into())
        );
        assert_eq!(
            "192.168.1.77/24".parse::<ScanTarget>().unwrap(),
            ScanTarget::Cidr(net("192.168.1.0/24"))
        );
        assert!("192.168.1.0/33".parse::<ScanTarget>().is_err());
        let e = "192.168.1.7".parse::<ScanTarget>().unwrap_err();
        assert!(e.contains("192.168.1.7/24"), "{e}");
        assert!("".parse::<ScanTarget>().is_err());
        assert!("a very long interface name".parse::<ScanTarget>().is_err());
    }

    #[test]
    fn host_addresses_skip_network_and_broadcast() {
        let hosts = host_addresses(net("10.1.2.0/24"));
        assert_eq!(hosts.len(), 254);
        assert_eq!(host_count(net("10.1.2.0/24")), 254);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(hosts[253], Ipv4Addr::new(10, 1, 2, 254));
        assert_eq!(host_addresses(net("10.1.2.4/30")).len(), 2);
        assert_eq!(host_addresses(net("10.1.2.4/31")).len(), 2);
        assert_eq!(
            host_addresses(net("10.1.2.9/32")),
            vec![Ipv4Addr::new(10, 1, 2, 9)]
        );
    }

    #[test]
    fn plan_by_interface() {
        let p = plan(&ScanTarget::Interface("eth0".into()), &machine()).unwrap();
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.our_ip, Ipv4Addr::new(192, 168, 1, 17));
        assert_eq!(p.range, net("192.168.1.0/24"));
        let targets = p.targets();
        assert_eq!(targets.len(), 253, "our own address is not swept");
        assert!(!targets.contains(&p.our_ip));
    }

    #[test]
    fn plan_by_cidr_picks_the_interface_on_that_subnet() {
        // Inside the interface's subnet: sweep just the CIDR.
        let p = plan(&ScanTarget::Cidr(net("10.20.3.0/24")), &machine()).unwrap();
        assert_eq!(p.iface, "wlan0");
        assert_eq!(p.range, net("10.20.3.0/24"));
        assert_eq!(p.our_ip, Ipv4Addr::new(10, 20, 0, 5));
        // Wider than the interface's subnet: sweep only the subnet.
        let p = plan(&ScanTarget::Cidr(net("192.168.0.0/16")), &machine()).unwrap();
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.range, net("192.168.1.0/24"));
    }

    #[test]
    fn plan_errors_name_the_cause() {
        let m = machine();
        let e = plan(&ScanTarget::Interface("eth9".into()), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoInterface { .. }) && e.to_string().contains("eth0"),
            "{e}"
        );
        let e = plan(&ScanTarget::Interface("lo".into()), &m).unwrap_err();
        assert!(matches!(e, DiscoveryError::Loopback(_)), "{e}");
        let e = plan(&ScanTarget::Cidr(net("172.16.0.0/24")), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoRoute { .. })
                && e.to_string().contains("192.168.1.17/24 on eth0"),
            "{e}"
        );
        let e = plan(&ScanTarget::Cidr(net("127.0.0.0/24")), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoRoute { .. }),
            "loopback is never swept: {e}"
        );
        let e = plan(&ScanTarget::Interface("wlan0".into()), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::TooLarge { hosts: 65534, .. }),
            "{e}"
        );
        let mut down = machine();
        down[1].up = false;
        let e = plan(&ScanTarget::Interface("eth0".into()), &down).unwrap_err();
        assert!(matches!(e, DiscoveryError::Down(_)), "{e}");
        let mut bare = machine();
        bare[1].ipv4.clear();
        let e = plan(&ScanTarget::Interface("eth0".into()), &bare).unwrap_err();
        assert!(matches!(e, DiscoveryError::NoIpv4(_)), "{e}");
    }
}
