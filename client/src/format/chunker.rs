//! Content-defined chunking of a file into chunks (the unit of deduplication)
//! with FastCDC (2020), streaming from a reader.
//!
//! One [`Chunker`] serves a whole backup: its window (twice the largest chunk)
//! is allocated once and reused for every file, so chunking a small file costs
//! one read and one copy, not a fresh zeroed buffer. The cut points are those
//! of `fastcdc::v2020::StreamCDC` with the same sizes and seed (each cut is
//! taken over the next `MAX_CHUNK` bytes, or what is left of the file), so
//! snapshots chunked before stay deduplicated against.

use std::io::Read;

use fastcdc::v2020::{cut_gear, get_gear_with_seed, logarithm2, Normalization, MASKS};

/// Smallest chunk (except a file's last).
pub const MIN_CHUNK: u32 = 512 * 1024;
/// Average chunk.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 8 * 1024 * 1024;

const MAX: usize = MAX_CHUNK as usize;
/// The window: room for one largest chunk ahead of a partly consumed one.
const WINDOW: usize = 2 * MAX;

/// One chunk of a file.
#[derive(Debug)]
pub struct Chunk {
    /// Where the chunk starts in the file (only the tests need it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The cut parameters and the reusable read window.
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    window: Vec<u8>,
}

impl Chunker {
    /// A chunker with our sizes, its cut points seeded by the tenant's key.
    pub fn new(seed: u64) -> Self {
        let bits = logarithm2(AVG_CHUNK);
        let normalization = Normalization::Level1.bits();
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Self {
            gear,
            gear_ls,
            mask_s: MASKS[(bits + normalization) as usize],
            mask_l: MASKS[(bits - normalization) as usize],
            window: Vec::new(),
        }
    }

    /// The chunks of `source`, in order.
    pub fn chunks<R: Read>(&mut self, source: R) -> Chunks<'_, R> {
        if self.window.len() < WINDOW {
            self.window = vec![0; WINDOW];
        }
        Chunks {
            chunker: self,
            source,
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
        }
    }

    fn cut(&self, data: &[u8]) -> usize {
        let (_, count) = cut_gear(
            data,
            MIN_CHUNK as usize,
            AVG_CHUNK as usize,
            MAX,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        count
    }
}

/// Iterates over the chunks of one source; see [`Chunker::chunks`].
pub struct Chunks<'a, R: Read> {
    chunker: &'a mut Chunker,
    source: R,
    /// The unconsumed bytes are `window[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// Where `window[start]` is in the source.
    offset: u64,
}

impl<R: Read> Chunks<'_, R> {
    /// Reads until a largest chunk is buffered or the source ends.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > self.chunker.window.len() - MAX {
            self.chunker.window.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end - self.start < MAX {
            match self.source.read(&mut self.chunker.window[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<'_, R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        if self.start == self.end {
            return None;
        }
        let available = &self.chunker.window[self.start..self.end];
        let count = self.chunker.cut(available).max(1).min(available.len());
        let chunk = Chunk {
            offset: self.offset,
            data: available[..count].to_vec(),
        };
        self.start += count;
        self.offset += count as u64;
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn chunks(data: &[u8], seed: u64) -> Vec<Chunk> {
        Chunker::new(seed)
            .chunks(data)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Yields at most `step` bytes per read, as pipes and network files may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_match_fastcdc_stream_chunker() {
        // Snapshots written with fastcdc's own streaming chunker must keep
        // deduplicating: the cut points may not move.
        let mut data = random(40 * 1024 * 1024, 3);
        // A long run of zeros forces maximum-size chunks.
        data[5_000_000..25_000_000].fill(0);
        let reference: Vec<(u64, usize)> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
            Normalization::Level1,
            7,
        )
        .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
        .collect();
        assert!(reference.iter().any(|&(_, len)| len == MAX));
        let mut chunker = Chunker::new(7);
        for step in [usize::MAX, 100_000, 4096] {
            let ours: Vec<(u64, usize)> = chunker
                .chunks(Trickle { data: &data, step })
                .map(|c| c.map(|c| (c.offset, c.data.len())).unwrap())
                .collect();
            assert_eq!(ours, reference, "reads of at most {step} bytes");
        }
    }

    #[test]
    fn one_chunker_serves_many_sources() {
        let mut chunker = Chunker::new(5);
        let big = random(9 * 1024 * 1024, 4);
        let big_chunks: usize = chunker.chunks(&big[..]).count();
        assert!(big_chunks >= 2);
        // Nothing of the previous source leaks into the next.
        let small: Vec<Chunk> = chunker
            .chunks(&b"tiny"[..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].data, b"tiny");
        assert_eq!(chunker.chunks(&[][..]).count(), 0);
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let data = random(12 * 1024 * 1024, 1);
        let found = chunks(&data, 5);
        assert!(found.len() >= 3, "{} chunks", found.len());
        let mut expected_offset = 0u64;
        for (i, chunk) in found.iter().enumerate() {
            assert_eq!(chunk.offset, expected_offset);
            assert!(chunk.data.len() <= MAX_CHUNK as usize);
            if i + 1 < found.len() {
                assert!(chunk.data.len() >= MIN_CHUNK as usize);
            }
            let start = chunk.offset as usize;
            assert_eq!(chunk.data, data[start..start + chunk.data.len()]);
            expected_offset += chunk.data.len() as u64;
        }
        assert_eq!(expected_offset, data.len() as u64);
        assert!(chunks(&[], 5).is_empty());
    }

    #[test]
    fn same_input_same_chunks_and_shifted_input_realigns() {
        let data = random(10 * 1024 * 1024, 2);
        let a: Vec<Vec<u8>> = chunks(&data, 5).into_iter().map(|c| c.data).collect();
        let b: Vec<Vec<u8>> = chunks(&data, 5).into_iter().map(|c| c.data).collect();
        assert_eq!(a, b);

        let mut shifted = b"a few inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let c: Vec<Vec<u8>> = chunks(&shifted, 5).into_iter().map(|c| c.data).collect();
        let shared = a.iter().filter(|chunk| c.contains(chunk)).count();
        assert!(
            shared + 1 >= a.len(),
            "only {shared} of {} chunks survive a shift",
            a.len()
        );
    }
}
