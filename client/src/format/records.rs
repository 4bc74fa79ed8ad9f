//! Files of records: a 7-byte magic, a version byte, then records, each a
//! u32 LE length and a postcard encoding. The file metadata cache and the
//! resume journal are such files; each decides what a damaged one means.

use std::io::BufRead;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest record read back.
const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;

/// The header of a file of `magic` records at `version`.
pub fn header(magic: &[u8; 7], version: u8) -> [u8; 8] {
    let mut head = [0u8; 8];
    head[..7].copy_from_slice(magic);
    head[7] = version;
    head
}

/// Appends `record`, length first, to `out`.
pub fn encode<T: Serialize>(record: &T, out: &mut Vec<u8>) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(record).map_err(std::io::Error::other)?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_RECORD_BYTES)
        .ok_or_else(|| std::io::Error::other("a record larger than 64 MiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// A record that could not be read: a torn or corrupt tail, or a length
/// beyond the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Damaged;

/// Reads the records after a checked header.
pub struct Reader<R> {
    reader: R,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> Reader<R> {
    /// `None` when `reader` does not start with the header of `magic` and
    /// `version` (another format, or an empty or torn file).
    pub fn open(mut reader: R, magic: &[u8; 7], version: u8) -> Option<Self> {
        let mut head = [0u8; 8];
        reader.read_exact(&mut head).ok()?;
        (head == header(magic, version)).then_some(Self {
            reader,
            buf: Vec::new(),
            done: false,
        })
    }

    fn read_one<T: DeserializeOwned>(&mut self) -> Option<Result<T, Damaged>> {
        // A clean end has no byte of a next length; a torn one has some.
        match self.reader.fill_buf() {
            Ok([]) => return None,
            Ok(_) => {}
            Err(_) => return Some(Err(Damaged)),
        }
        let mut len = [0u8; 4];
        if self.reader.read_exact(&mut len).is_err() {
            return Some(Err(Damaged));
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD_BYTES {
            return Some(Err(Damaged));
        }
        self.buf.resize(len as usize, 0);
        if self.reader.read_exact(&mut self.buf).is_err() {
            return Some(Err(Damaged));
        }
        Some(postcard::from_bytes(&self.buf).map_err(|_| Damaged))
    }

    /// The next record; after the first damaged one, nothing more.
    pub fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, Damaged>> {
        if self.done {
            return None;
        }
        let next = self.read_one();
        self.done = !matches!(next, Some(Ok(_)));
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 7] = b"OFTESTS";

    fn file(records: &[(u32, String)]) -> Vec<u8> {
        let mut bytes = header(MAGIC, 3).to_vec();
        for record in records {
            encode(record, &mut bytes).unwrap();
        }
        bytes
    }

    fn read_all(bytes: &[u8]) -> Option<Vec<Result<(u32, String), Damaged>>> {
        let mut reader = Reader::open(bytes, MAGIC, 3)?;
        let mut out = Vec::new();
        while let Some(record) = reader.next() {
            out.push(record);
        }
        Some(out)
    }

    #[test]
    fn records_come_back_and_damage_ends_them() {
        let records = vec![(1, "one".to_string()), (2, "two".to_string())];
        let bytes = file(&records);
        let clean = read_all(&bytes).unwrap();
        assert_eq!(clean, records.iter().cloned().map(Ok).collect::<Vec<_>>());

        // A torn tail, in the length or in the record: the first comes
        // back, then one Damaged, then nothing.
        for cut in [bytes.len() - 1, bytes.len() - 6, bytes.len() - 8] {
            let torn = read_all(&bytes[..cut]).unwrap();
            assert_eq!(
                torn,
                vec![Ok(records[0].clone()), Err(Damaged)],
                "cut at {cut}"
            );
        }
        // A length beyond the limit.
        let mut huge = file(&records[..1]);
        huge.extend_from_slice(&(MAX_RECORD_BYTES + 1).to_le_bytes());
        assert_eq!(read_all(&huge).unwrap().last(), Some(&Err(Damaged)));

        // Another magic or version, or no header at all.
        assert!(Reader::open(&bytes[..], b"OFOTHER", 3).is_none());
        assert!(Reader::open(&bytes[..], MAGIC, 4).is_none());
        assert!(Reader::open(&bytes[..5], MAGIC, 3).is_none());
        assert_eq!(read_all(&header(MAGIC, 3)).unwrap(), vec![]);
    }
}
