//! A stable hash for names that must not change between builds or machines.

/// FNV-1a, 64 bits: stable across builds, so a key keeps its shard and a table its mirror name
/// across restarts.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
