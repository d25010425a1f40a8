//! Postgres's extended hash of byte strings (`hash_bytes_extended`, Bob Jenkins' lookup3 as
//! `src/common/hashfn.c` has it) with seed 0, and the two SQL functions built on it that place
//! uuid and text keys: `uuid_hash_extended(k, 0)` and `hashtextextended(k, 0)` (deterministic
//! collations hash the bytes). Ported so the proxy and the shards agree on every key's point.

/// lookup3's `mix`.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// lookup3's `final`.
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Little-endian 32-bit word of up to four bytes (missing high bytes are zero).
fn word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))
}

/// `hash_bytes_extended(k, len, 0)` on a little-endian machine, as the signed `bigint` SQL returns.
/// In the tail, the lowest byte of `c` is left out (lookup3 reserves it for the length).
pub fn hash_bytes_extended(k: &[u8]) -> i64 {
    let init = 0x9e37_79b9u32
        .wrapping_add(k.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    let n = rest.len();
    a = a.wrapping_add(word(&rest[..n.min(4)]));
    if n > 4 {
        b = b.wrapping_add(word(&rest[4..n.min(8)]));
    }
    if n > 8 {
        c = c.wrapping_add(word(&rest[8..n]) << 8);
    }
    final_mix(&mut a, &mut b, &mut c);
    (((b as u64) << 32) | c as u64) as i64
}

/// Postgres's `uuid_hash_extended(k, 0)`.
pub fn uuid_hash_extended(k: &[u8; 16]) -> i64 {
    hash_bytes_extended(k)
}

/// Postgres's `hashtextextended(k, 0)` under a deterministic collation: the UTF-8 bytes hashed.
pub fn hashtextextended(k: &str) -> i64 {
    hash_bytes_extended(k.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT v, hashtextextended(v, 0)` on PostgreSQL 15 (UTF-8 database).
    const PG_TEXT: &[(&str, i64)] = &[
        ("", -6939563903564495251),
        ("a", 3591986179850072241),
        ("ab", 2833316173711343549),
        ("abc", -6747756470228489321),
        ("abcd", -1038429303365892052),
        ("hello", 3449563369152288809),
        ("tenant-42", 2308422559236963683),
        ("abcdefghijk", 3112909444737856467),
        ("abcdefghijkl", -7556637188122330412),
        ("abcdefghijklm", 8871624171452417744),
        ("Grüße, Jürgen", 4200340676926717690),
        (
            "a much longer text key than twelve bytes, spanning several blocks",
            2357228376457967676,
        ),
    ];

    /// `SELECT v, uuid_hash_extended(v::uuid, 0)` on PostgreSQL 15.
    const PG_UUID: &[(&str, i64)] = &[
        ("00000000000000000000000000000000", -6859010066814654381),
        ("a0eebc999c0b4ef8bb6d6bb9bd380a11", 7543054272012930821),
        ("ffffffffffffffffffffffffffffffff", 293445543803463785),
        ("018f3a5e7c1d7b2a9c3e0123456789ab", 6185605345005726671),
    ];

    #[test]
    fn text_hashes_match_postgres() {
        for &(v, h) in PG_TEXT {
            assert_eq!(hashtextextended(v), h, "{v:?}");
        }
    }

    #[test]
    fn uuid_hashes_match_postgres() {
        for &(hex, h) in PG_UUID {
            let mut k = [0u8; 16];
            for (i, b) in k.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            assert_eq!(uuid_hash_extended(&k), h, "{hex}");
        }
    }
}
