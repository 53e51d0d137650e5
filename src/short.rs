//! `Short`: a string inline when short, for the values repeated once per service.

use std::fmt;

/// A short string held inline up to `Short::INLINE` bytes, else as a String. What a map
/// repeats for every service is mostly short: a listen address and a target (an IPv4
/// address and port always fit), a service's name in a DNAT element. Reading 50,000
/// services and building their elements then allocates none of those (a String each was
/// an allocation, a copy and a free per service and value).
#[derive(Clone)]
pub enum Short {
    Inline { len: u8, bytes: [u8; Short::INLINE] },
    Heap(String),
}

impl Short {
    pub const INLINE: usize = 30;

    pub fn new(s: &str) -> Short {
        match s.len() {
            n if n <= Short::INLINE => {
                let mut bytes = [0; Short::INLINE];
                bytes[..n].copy_from_slice(s.as_bytes());
                Short::Inline {
                    len: n as u8,
                    bytes,
                }
            }
            _ => Short::Heap(s.to_owned()),
        }
    }
}

impl std::ops::Deref for Short {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Short::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("the bytes of a whole &str, copied in `new`"),
            Short::Heap(s) => s,
        }
    }
}

impl fmt::Debug for Short {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq<&str> for Short {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl Short {
    pub fn as_str(&self) -> &str {
        self
    }
}

impl PartialEq for Short {
    fn eq(&self, other: &Short) -> bool {
        **self == **other
    }
}

impl Eq for Short {}

impl std::hash::Hash for Short {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl PartialOrd for Short {
    fn partial_cmp(&self, other: &Short) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Short {
    fn cmp(&self, other: &Short) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_read_back_as_written_inline_or_not() {
        for text in [
            "",
            "8080",
            "172.30.195.80:80",
            &"x".repeat(Short::INLINE),
            &"y".repeat(Short::INLINE + 1),
            "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535",
            "hôte-é.example:80",
        ] {
            let short = Short::new(text);
            assert_eq!(&*short, text);
            assert_eq!(
                matches!(short, Short::Inline { .. }),
                text.len() <= Short::INLINE,
                "{text}"
            );
            assert_eq!(format!("{short:?}"), format!("{text:?}"));
        }
    }

    #[test]
    fn equal_and_ordered_as_their_text() {
        let (a, b) = (Short::new("abc"), Short::new(&"abd".repeat(20)));
        assert_eq!(a, Short::new("abc"));
        assert!(a < b);
        assert_eq!(b.cmp(&a), std::cmp::Ordering::Greater);
        let hash = |s: &Short| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(s)
        };
        assert_eq!(hash(&b), hash(&Short::new(&"abd".repeat(20))));
    }
}
