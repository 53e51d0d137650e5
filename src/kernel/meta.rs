//! What svcnat records on its own table, so the kernel itself says what is installed, even
//! without the state directory: the generation number, the digest of the map it came from,
//! and the sysctls svcnat switched on (userdata of the `generation` set's element); and
//! that the table is svcnat's at all (the table's comment, `OWNER_COMMENT`).
//!
//! Stored as userdata TLVs (type, length, value) of private types; nft interprets only type
//! 0 (a comment) and prints the table unchanged.

/// The comment svcnat gives every table it creates (`nft list` shows it): svcnat changes a
/// table only when it carries this comment, or svcnat's bookkeeping set (tables made by
/// versions before the comment), so that `[settings] table = "firewalld"` can never touch
/// another program's table.
pub const OWNER_COMMENT: &str = "managed by svcnat";

/// The table userdata nft writes for `comment "TEXT"`: TLV type 0, the text with its NUL.
pub fn comment_udata(text: &str) -> Vec<u8> {
    let mut out = vec![0, text.len() as u8 + 1];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    out
}

/// Whether a table's userdata is svcnat's mark.
pub fn is_owner_mark(udata: &[u8]) -> bool {
    udata == comment_udata(OWNER_COMMENT)
}

const GENERATION: u8 = 0xf1;
const DIGEST: u8 = 0xf2;
const ENABLED_SYSCTLS: u8 = 0xf0;
const FORWARD_ACCEPT: u8 = 0xf3;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMeta {
    pub generation: Option<u64>,
    pub digest: Option<String>,
    pub enabled_sysctls: Vec<String>,
    /// svcnat keeps its accept in Docker's DOCKER-USER chain (`settings.forward_accept`),
    /// to remove when it no longer should.
    pub forward_accept: bool,
}

fn put(out: &mut Vec<u8>, ty: u8, value: &str) {
    let v = &value.as_bytes()[..value.len().min(255)];
    out.push(ty);
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

/// One field of the record; the iptables backend keeps the same fields as `word=value` in a
/// rule comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Generation,
    Digest,
    EnabledSysctls,
    ForwardAccept,
}

impl Field {
    fn of_type(ty: u8) -> Option<Field> {
        match ty {
            GENERATION => Some(Field::Generation),
            DIGEST => Some(Field::Digest),
            ENABLED_SYSCTLS => Some(Field::EnabledSysctls),
            FORWARD_ACCEPT => Some(Field::ForwardAccept),
            _ => None,
        }
    }

    /// The field's name in the iptables backend's comment.
    pub fn of_word(word: &str) -> Option<Field> {
        match word {
            "generation" => Some(Field::Generation),
            "digest" => Some(Field::Digest),
            "sysctls" => Some(Field::EnabledSysctls),
            "forward_accept" => Some(Field::ForwardAccept),
            _ => None,
        }
    }
}

impl TableMeta {
    /// Set `field` from its text; an unreadable generation number reads as none.
    pub fn set(&mut self, field: Field, value: &str) {
        match field {
            Field::Generation => self.generation = value.parse().ok(),
            Field::Digest => self.digest = Some(value.to_owned()),
            Field::EnabledSysctls => {
                self.enabled_sysctls = value
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            Field::ForwardAccept => self.forward_accept = value == "1",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(g) = self.generation {
            put(&mut out, GENERATION, &g.to_string());
        }
        if let Some(d) = &self.digest {
            put(&mut out, DIGEST, d);
        }
        if !self.enabled_sysctls.is_empty() {
            put(&mut out, ENABLED_SYSCTLS, &self.enabled_sysctls.join(","));
        }
        if self.forward_accept {
            put(&mut out, FORWARD_ACCEPT, "1");
        }
        out
    }

    pub fn decode(udata: &[u8]) -> TableMeta {
        let mut meta = TableMeta::default();
        let mut i = 0;
        while i + 2 <= udata.len() {
            let (ty, len) = (udata[i], udata[i + 1] as usize);
            let Some(value) = udata.get(i + 2..i + 2 + len) else {
                break;
            };
            if let Some(field) = Field::of_type(ty) {
                meta.set(field, &String::from_utf8_lossy(value));
            }
            i += 2 + len;
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_types_skipped() {
        let m = TableMeta {
            generation: Some(42),
            digest: Some("sha256:abcd".into()),
            enabled_sysctls: vec![
                "net.ipv4.ip_forward".into(),
                "net.ipv4.conf.all.route_localnet".into(),
            ],
            forward_accept: true,
        };
        let mut bytes = vec![0, 3, b'h', b'i', b'!'];
        bytes.extend(m.encode());
        assert_eq!(TableMeta::decode(&bytes), m);
        assert_eq!(TableMeta::decode(&[]), TableMeta::default());
        assert_eq!(
            TableMeta::decode(&[GENERATION, 200, b'1']),
            TableMeta::default()
        );
    }
}
