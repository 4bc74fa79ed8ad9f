//! Content-defined chunking of a file into chunks (the unit of deduplication)
//! with FastCDC (2020), streaming from a reader: at most one maximum-size
//! chunk is held in memory, never the whole file.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

/// Smallest chunk (except a file's last).
pub const MIN_CHUNK: u32 = 512 * 1024;
/// Average chunk.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 8 * 1024 * 1024;

/// One chunk of a file.
#[derive(Debug)]
pub struct Chunk {
    /// Where the chunk starts in the file.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Splits what `source` yields into chunks; iterate to read them in order.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// A chunker with our sizes, its cut points seeded by the tenant's key.
    pub fn new(source: R, seed: u64) -> Self {
        Self {
            inner: StreamCDC::with_level_and_seed(
                source,
                MIN_CHUNK,
                AVG_CHUNK,
                MAX_CHUNK,
                Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(chunk) => Some(Ok(Chunk {
                offset: chunk.offset,
                data: chunk.data,
            })),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(fastcdc::v2020::Error::Empty) => None,
            Err(fastcdc::v2020::Error::Other(e)) => Some(Err(std::io::Error::other(e))),
        }
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
        Chunker::new(data, seed).collect::<Result<_, _>>().unwrap()
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
