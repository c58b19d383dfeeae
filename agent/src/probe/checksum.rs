//! Internet checksum (RFC 1071) arithmetic, including the inverse step that Paris
//! traceroute needs: choosing a payload word so that a checksum comes out at a chosen value.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Unfolded one's-complement accumulator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum(u64);

impl Sum {
    pub fn new() -> Self {
        Sum(0)
    }

    /// Adds `bytes` as big-endian 16-bit words; an odd trailing byte is padded with zero.
    /// Callers only ever add odd-length slices last, as RFC 1071 requires.
    pub fn add_bytes(mut self, bytes: &[u8]) -> Self {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            self.0 += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u64::from(*last) << 8;
        }
        self
    }

    pub fn add_u16(mut self, w: u16) -> Self {
        self.0 += u64::from(w);
        self
    }

    pub fn add_u32(self, w: u32) -> Self {
        self.add_u16((w >> 16) as u16).add_u16(w as u16)
    }

    /// The folded 16-bit one's-complement sum.
    pub fn fold(self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum to transmit: the complement of the folded sum.
    pub fn checksum(self) -> u16 {
        !self.fold()
    }
}

/// One's-complement addition of two folded words.
pub fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// IPv4 pseudo-header for UDP/TCP checksums.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> Sum {
    Sum::new()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u16(u16::from(proto))
        .add_u16(len)
}

/// IPv6 pseudo-header (RFC 8200 §8.1) for UDP, TCP and ICMPv6 checksums.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> Sum {
    Sum::new()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u32(len)
        .add_u16(u16::from(next_header))
}

/// Given the folded sum `partial` of everything a checksum covers, with the checksum field
/// and one free 16-bit word both zero, returns the word to put in the free slot so that
/// the checksum field can carry `wanted` and the packet still verifies.
///
/// A packet verifies when the folded sum of all its words (checksum field included) is
/// 0xffff, so `partial + w + wanted = 0xffff` in one's-complement arithmetic.
pub fn compensate(partial: u16, wanted: u16) -> u16 {
    !ones_add(partial, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The worked example from RFC 1071 §3: the folded sum is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::new().add_bytes(&data).fold(), 0xddf2);
        assert_eq!(Sum::new().add_bytes(&data).checksum(), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(Sum::new().add_bytes(&[0xab]).fold(), 0xab00);
    }

    #[test]
    fn compensation_yields_wanted_checksum() {
        for partial in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            for wanted in [1u16, 0x8000, 0xbeef, 0xfffe, 0xffff] {
                let w = compensate(partial, wanted);
                let total = ones_add(ones_add(partial, w), wanted);
                assert_eq!(total, 0xffff, "partial {partial:#x} wanted {wanted:#x}");
            }
        }
    }
}
