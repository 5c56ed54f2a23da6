//! The MD5s of many bodies at once, one body per SIMD lane.
//!
//! One MD5 is a chain: each 64-byte block needs the state the last one left, so a single
//! body cannot go faster than one core's scalar MD5 (about 800 MB/s here). Many independent
//! bodies can: the same step of [`LANES`] bodies is the same arithmetic on [`LANES`] words,
//! which the compiler turns into vector instructions (SSE2 is in every x86-64, so this needs
//! no `unsafe` and no CPU detection). This is how `md5-simd` (MinIO) and Intel's ISA-L
//! `md5_mb` hash many objects at once.
//!
//! A lane that finishes its body takes the next one; bodies go longest first, so the lanes
//! run out at about the same time, and once fewer than a quarter of the lanes have work the
//! rest is finished one body at a time (a single body as the md-5 crate hashes it).

/// Bodies hashed side by side: 8 keeps each of the four state words in two SSE registers.
const LANES: usize = 16;

/// The per-step shift amounts of RFC 1321.
const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// The per-step constants of RFC 1321 (`floor(abs(sin(i + 1)) * 2^32)`).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The state before the first block.
const IV: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// The message word step `i` adds.
const fn word(i: usize) -> usize {
    match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    }
}

/// One step on every lane: `a = b + (a + f(b, c, d) + k + m) <<< s`.
#[inline(always)]
fn step<const L: usize>(
    [a, b, c, d]: [&mut [u32; L]; 4],
    m: &[u32; L],
    k: u32,
    s: u32,
    f: impl Fn(u32, u32, u32) -> u32,
) {
    for l in 0..L {
        let sum = a[l]
            .wrapping_add(f(b[l], c[l], d[l]))
            .wrapping_add(k)
            .wrapping_add(m[l]);
        a[l] = b[l].wrapping_add(sum.rotate_left(s));
    }
}

/// One 64-byte block of each of `L` bodies: `x[w][lane]` is word `w` of that lane's block.
/// Every operation is the same on each lane, in loops the compiler vectorises; the 64 steps
/// are unrolled so that each shift and constant is fixed.
#[inline(always)]
fn compress<const L: usize>(state: &mut [[u32; L]; 4], x: &[[u32; L]; 16]) {
    let [mut a, mut b, mut c, mut d] = *state;
    macro_rules! steps {
        ($f:expr, $($i:literal)*) => {$(
            // The state words rotate one place each step: a, d, c, b take the role of a.
            match $i % 4 {
                0 => step([&mut a, &mut b, &mut c, &mut d], &x[word($i)], K[$i], S[$i], $f),
                1 => step([&mut d, &mut a, &mut b, &mut c], &x[word($i)], K[$i], S[$i], $f),
                2 => step([&mut c, &mut d, &mut a, &mut b], &x[word($i)], K[$i], S[$i], $f),
                _ => step([&mut b, &mut c, &mut d, &mut a], &x[word($i)], K[$i], S[$i], $f),
            }
        )*};
    }
    let f = |b: u32, c: u32, d: u32| d ^ (b & (c ^ d));
    let g = |b: u32, c: u32, d: u32| c ^ (d & (b ^ c));
    let h = |b: u32, c: u32, d: u32| b ^ c ^ d;
    let i = |b: u32, c: u32, d: u32| c ^ (b | !d);
    steps!(f, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    steps!(g, 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    steps!(h, 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47);
    steps!(i, 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
    for l in 0..L {
        state[0][l] = state[0][l].wrapping_add(a[l]);
        state[1][l] = state[1][l].wrapping_add(b[l]);
        state[2][l] = state[2][l].wrapping_add(c[l]);
        state[3][l] = state[3][l].wrapping_add(d[l]);
    }
}

/// One body's place in a lane: its full blocks come from the body, the last one or two
/// (the rest of its bytes, `0x80`, zeros, its length in bits) from `tail`.
struct Job<'a> {
    index: usize,
    body: &'a [u8],
    tail: [u8; 128],
    /// Blocks in all, and blocks done.
    blocks: usize,
    done: usize,
}

impl<'a> Job<'a> {
    fn new(index: usize, body: &'a [u8]) -> Self {
        let full = body.len() / 64;
        let rest = &body[full * 64..];
        let mut tail = [0u8; 128];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let tail_blocks = if rest.len() < 56 { 1 } else { 2 };
        let bits = (body.len() as u64).wrapping_mul(8).to_le_bytes();
        tail[tail_blocks * 64 - 8..tail_blocks * 64].copy_from_slice(&bits);
        Job {
            index,
            body,
            tail,
            blocks: full + tail_blocks,
            done: 0,
        }
    }

    fn block(&self) -> &[u8] {
        let full = self.body.len() / 64;
        match self.done.checked_sub(full) {
            None => &self.body[self.done * 64..self.done * 64 + 64],
            Some(t) => &self.tail[t * 64..t * 64 + 64],
        }
    }
}

fn digest(state: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Hashes `job`'s remaining blocks alone, from `state`: a body not begun by the md-5 crate
/// (its assembly is faster than one lane of [`compress`]), the rest of one begun by one lane.
fn finish_alone(mut job: Job<'_>, state: [u32; 4]) -> [u8; 16] {
    if job.done == 0 {
        use md5::Digest;
        return md5::Md5::digest(job.body).into();
    }
    let mut s = state.map(|w| [w]);
    while job.done < job.blocks {
        let mut x = [[0u32; 1]; 16];
        for (w, word) in x.iter_mut().zip(job.block().chunks_exact(4)) {
            w[0] = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        }
        compress::<1>(&mut s, &x);
        job.done += 1;
    }
    digest(s.map(|[w]| w))
}

/// The MD5 of each of `bodies`, in order.
pub fn md5_many(bodies: &[&[u8]]) -> Vec<[u8; 16]> {
    let mut out = vec![[0u8; 16]; bodies.len()];
    // Longest first: the lanes then run dry at about the same time.
    let mut order: Vec<usize> = (0..bodies.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(bodies[i].len()));
    let mut queue = order.into_iter().map(|i| Job::new(i, bodies[i]));
    let mut lanes: [Option<Job>; LANES] = std::array::from_fn(|_| None);
    let mut state = [[0u32; LANES]; 4];
    fn start<'a>(
        lanes: &mut [Option<Job<'a>>],
        state: &mut [[u32; LANES]; 4],
        l: usize,
        job: Job<'a>,
    ) {
        lanes[l] = Some(job);
        for (s, iv) in state.iter_mut().zip(IV) {
            s[l] = iv;
        }
    }
    for l in 0..LANES {
        match queue.next() {
            Some(job) => start(&mut lanes, &mut state, l, job),
            None => break,
        }
    }
    let mut queued = bodies.len().saturating_sub(LANES);
    let mut x = [[0u32; LANES]; 16];
    loop {
        let busy = lanes.iter().filter(|j| j.is_some()).count();
        // A step costs the same however many lanes are busy: with fewer than a quarter of
        // them it is slower than hashing what is left one body at a time.
        if queued == 0 && busy < LANES / 4 {
            break;
        }
        for (l, job) in lanes.iter().enumerate() {
            if let Some(job) = job {
                for (w, word) in job.block().chunks_exact(4).enumerate() {
                    x[w][l] = u32::from_le_bytes(word.try_into().expect("4 bytes"));
                }
            }
        }
        compress::<LANES>(&mut state, &x);
        for l in 0..LANES {
            let Some(job) = lanes[l].as_mut() else {
                continue;
            };
            job.done += 1;
            if job.done == job.blocks {
                out[job.index] = digest([state[0][l], state[1][l], state[2][l], state[3][l]]);
                lanes[l] = None;
                if let Some(next) = queue.next() {
                    queued -= 1;
                    start(&mut lanes, &mut state, l, next);
                }
            }
        }
    }
    for (l, job) in lanes.into_iter().enumerate() {
        if let Some(job) = job {
            let index = job.index;
            out[index] = finish_alone(job, [state[0][l], state[1][l], state[2][l], state[3][l]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    #[test]
    fn every_length_and_mix_matches_md5() {
        let noise = crate::testkit::noise(300_000, 3);
        // Every tail shape (0..=129 bytes), block edges, and a few long bodies among short.
        let mut lens: Vec<usize> = (0..=129).collect();
        lens.extend([191, 192, 193, 4096, 65_535, 65_536, 200_003, 300_000]);
        for count in [0, 1, 3, LANES - 1, LANES, LANES + 1, lens.len()] {
            let bodies: Vec<&[u8]> = lens
                .iter()
                .cycle()
                .skip(count * 7)
                .take(count)
                .enumerate()
                .map(|(k, &n)| &noise[k..k + n.min(noise.len() - k)])
                .collect();
            let got = md5_many(&bodies);
            for (b, g) in bodies.iter().zip(&got) {
                assert_eq!(g[..], Md5::digest(b)[..], "{} bytes of {count}", b.len());
            }
        }
    }

    proptest::proptest! {
        /// Any number of bodies of any lengths (often equal, often one block apart, some
        /// long) come out as MD5 computes each alone.
        #[test]
        fn any_bodies_match_md5_one_at_a_time(
            lens in proptest::collection::vec(
                proptest::prop_oneof![0usize..200, 0usize..5000, proptest::prelude::Just(64), proptest::prelude::Just(55), proptest::prelude::Just(56)],
                0..40,
            ),
            seed in 0u64..1000,
        ) {
            let noise = crate::testkit::noise(lens.iter().sum::<usize>() + 1, seed);
            let mut at = 0;
            let bodies: Vec<&[u8]> = lens
                .iter()
                .map(|&n| {
                    at += n;
                    &noise[at - n..at]
                })
                .collect();
            let got = md5_many(&bodies);
            proptest::prop_assert_eq!(got.len(), bodies.len());
            for (b, g) in bodies.iter().zip(got) {
                proptest::prop_assert_eq!(&g[..], &Md5::digest(b)[..]);
            }
        }
    }
}
