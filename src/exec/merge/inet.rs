//! `inet` and `cidr` values as Postgres orders them (`network_cmp`): IPv4 before IPv6; within a
//! family by the network part both share (the leading bits up to the smaller prefix length),
//! then the shorter prefix first, then the whole address. Decoded from the binary form (family,
//! prefix length, is-cidr flag, address length, address) or from the text Postgres writes
//! (`10.0.0.7`, `10.0.0.0/8`, `2001:db8::1/64`).

use std::cmp::Ordering;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::MergeError;

/// Postgres's family codes on the wire (`PGSQL_AF_INET`, `PGSQL_AF_INET6`): IPv4 sorts first.
const FAMILY_V4: u8 = 2;
const FAMILY_V6: u8 = 3;

/// One address with its prefix length; IPv4 addresses use the first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inet {
    family: u8,
    bits: u8,
    addr: [u8; 16],
}

fn invalid(detail: String) -> MergeError {
    MergeError::InvalidValue {
        type_name: "inet",
        detail,
    }
}

impl Inet {
    fn max_bits(&self) -> u8 {
        if self.family == FAMILY_V4 {
            32
        } else {
            128
        }
    }

    /// Postgres's `network_cmp`.
    pub fn compare(&self, other: &Inet) -> Ordering {
        if self.family != other.family {
            return self.family.cmp(&other.family);
        }
        leading_bits(&self.addr, &other.addr, self.bits.min(other.bits))
            .then(self.bits.cmp(&other.bits))
            .then_with(|| leading_bits(&self.addr, &other.addr, self.max_bits()))
    }

    /// Bytes equal exactly for values `network_cmp` calls equal.
    pub fn canonical_key(&self) -> Vec<u8> {
        let len = usize::from(self.max_bits() / 8);
        let mut v = vec![self.family, self.bits];
        v.extend_from_slice(&self.addr[..len]);
        v
    }
}

/// Compares the first `n` bits of two addresses (`bitncmp`).
fn leading_bits(a: &[u8; 16], b: &[u8; 16], n: u8) -> Ordering {
    let whole = usize::from(n / 8);
    let order = a[..whole].cmp(&b[..whole]);
    let rest = n % 8;
    if order != Ordering::Equal || rest == 0 {
        return order;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask).cmp(&(b[whole] & mask))
}

/// The binary form: family, prefix length, is-cidr flag, address length, address bytes.
pub fn decode_binary(b: &[u8]) -> Result<Inet, MergeError> {
    let [family, bits, _cidr, len, addr @ ..] = b else {
        return Err(invalid(format!("binary value of {} bytes", b.len())));
    };
    let want = match *family {
        FAMILY_V4 => 4,
        FAMILY_V6 => 16,
        other => return Err(invalid(format!("unknown address family {other}"))),
    };
    if usize::from(*len) != want || addr.len() != want || u32::from(*bits) > want as u32 * 8 {
        return Err(invalid("address length does not match its family".into()));
    }
    let mut out = [0u8; 16];
    out[..want].copy_from_slice(addr);
    Ok(Inet {
        family: *family,
        bits: *bits,
        addr: out,
    })
}

/// The text form: an IPv4 or IPv6 address with an optional `/prefix` (all bits without one).
pub fn parse_text(b: &[u8]) -> Result<Inet, MergeError> {
    let text = std::str::from_utf8(b).map_err(|_| invalid("text value is not UTF-8".into()))?;
    let bad = || invalid(format!("{text:?} is not an address"));
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let mut addr = [0u8; 16];
    let family = if let Ok(v4) = address.parse::<Ipv4Addr>() {
        addr[..4].copy_from_slice(&v4.octets());
        FAMILY_V4
    } else {
        let v6 = address.parse::<Ipv6Addr>().map_err(|_| bad())?;
        addr = v6.octets();
        FAMILY_V6
    };
    let max = if family == FAMILY_V4 { 32 } else { 128 };
    let bits = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?
        }
        Some(_) => return Err(bad()),
    };
    Ok(Inet { family, bits, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Inet {
        parse_text(s.as_bytes()).unwrap()
    }

    /// Each list is in Postgres's `ORDER BY` of inet (checked against Postgres 15): IPv4 first,
    /// the common network part, then the shorter prefix, then the whole address.
    #[test]
    fn orders_as_network_cmp() {
        let sorted = [
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.0.7/16",
            "10.0.0.0",
            "10.0.0.5",
            "10.0.6.20",
            "10.0.6.27",
            "10.1.0.0/16",
            "192.168.1.0/24",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::/32",
            "2001:db8::1",
        ];
        let mut shuffled: Vec<Inet> = sorted.iter().rev().map(|s| net(s)).collect();
        shuffled.sort_by(|a, b| a.compare(b));
        let want: Vec<Inet> = sorted.iter().map(|s| net(s)).collect();
        assert_eq!(shuffled, want);
    }

    #[test]
    fn binary_and_text_agree() {
        let mut b = vec![FAMILY_V4, 24, 1, 4];
        b.extend_from_slice(&[192, 168, 1, 0]);
        assert_eq!(decode_binary(&b).unwrap(), net("192.168.1.0/24"));
        let mut v6 = vec![FAMILY_V6, 128, 0, 16];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(decode_binary(&v6).unwrap(), net("2001:db8::1"));
        assert!(decode_binary(&b[..7]).is_err());
        for bad in ["10.0.0.1/33", "10.0.0", "x", "::1/129", "10.0.0.1/"] {
            assert!(parse_text(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
