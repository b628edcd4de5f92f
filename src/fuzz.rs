//! Mutation fuzzing for the decoders of untrusted bytes, run by `cargo test`: valid samples are
//! flipped, cut, stretched and spliced by a seeded generator (so a failure replays), and the
//! decoder must answer each case with a value or an error, never a panic.

/// xorshift64*: small, seeded, good enough to explore byte mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of a sample taken from `samples`.
pub fn mutate(samples: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut b = samples[rng.below(samples.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            // Flip a byte.
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            // A random byte.
            1 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            // Cut the tail.
            2 => b.truncate(at),
            // A length or count field pushed to an extreme.
            3 if b.len() >= at + 4 => {
                let v: [u8; 4] = match rng.below(3) {
                    0 => [0x7f, 0xff, 0xff, 0xff],
                    1 => [0xff, 0xff, 0xff, 0xff],
                    _ => [0x00, 0x00, 0x7f, 0xff],
                };
                b[at..at + 4].copy_from_slice(&v);
            }
            // Insert random bytes.
            4 => {
                let n = rng.below(8);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, ins);
            }
            // Splice in part of another sample.
            5 => {
                let other = &samples[rng.below(samples.len())];
                let from = rng.below(other.len() + 1);
                b.splice(at..at, other[from..].iter().copied().take(16));
            }
            // Drop a byte.
            _ if at < b.len() => {
                b.remove(at);
            }
            _ => {}
        }
    }
    b
}

/// Cases per decoder in `cargo test`.
pub const CASES: usize = 100_000;

/// Cases per decoder in this run: `CASES`, times `TOTES_CDC_FUZZ_FACTOR` (`make fuzz`).
pub fn cases() -> usize {
    let factor = std::env::var("TOTES_CDC_FUZZ_FACTOR")
        .ok()
        .and_then(|f| f.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    CASES.saturating_mul(factor)
}

/// A table of the types the decoders' samples use (`public.t`: id, name, at, tags, data,
/// amount, day), keyed by `id`.
pub fn sample_table() -> std::sync::Arc<crate::event::TableSchema> {
    use crate::event::{Column, TableSchema, ValueKind};
    let column = |name: &str, oid: u32| Column {
        name: name.into(),
        type_oid: oid,
        type_mod: -1,
        type_name: String::new(),
        kind: ValueKind::builtin(oid).unwrap_or(ValueKind::Text),
    };
    std::sync::Arc::new(TableSchema {
        oid: 0,
        schema: "public".into(),
        name: "t".into(),
        columns: vec![
            column("id", 23),
            column("name", 25),
            column("at", 1114),
            column("tags", 1009),
            column("data", 17),
            column("amount", 1700),
            column("day", 1082),
        ],
        key: vec![0],
        keyless: false,
    })
}
