//! The bottom of the netlink wire format, shared by the encoders and decoders above it:
//! attributes (type, length, value, padded to 4 bytes), read in safe Rust. A reader never
//! trusts a length: an attribute that does not fit ends the list it is in.

/// The attributes packed in `payload` (a message's after its headers, or a nested
/// attribute's): (type without its flags, payload).
pub fn nested(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = payload.get(at..at + 4)?;
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        let value = payload.get(at + 4..at + len.max(4))?;
        at += len.next_multiple_of(4).max(4);
        Some((kind, value))
    })
}

/// The first attribute of type `kind` in `payload`.
pub fn find(payload: &[u8], kind: u16) -> Option<&[u8]> {
    nested(payload).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A big-endian u32 (netlink's byte order for nf_tables numbers).
pub fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// A big-endian u64.
pub fn be64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// A string attribute: up to its first NUL (the kernel sends one), lossily as UTF-8.
pub fn text(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// The bytes of a data attribute (`struct nft_data`: nested NFTA_DATA_VALUE).
pub fn data_value(nested_data: &[u8]) -> Vec<u8> {
    find(nested_data, 1).map(<[u8]>::to_vec).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_that_do_not_fit_end_the_list() {
        // type 1 "ab\0" (len 7, padded to 8), then type 2 claiming 64 bytes.
        let mut b = vec![7, 0, 1, 0, b'a', b'b', 0, 0];
        b.extend([64, 0, 2, 0, 1, 2, 3, 4]);
        let all: Vec<_> = nested(&b).collect();
        assert_eq!(all, [(1, &b"ab\0"[..])]);
        assert_eq!(text(find(&b, 1).unwrap()), "ab");
        assert_eq!(find(&b, 2), None);
        assert_eq!(be32(&[0, 0, 1, 0]), Some(256));
        assert_eq!(be32(&[1]), None);
    }
}
