//! The netlink socket: sending one batch, reading every reply to it, and dump requests.

use crate::error::{Error, Result};
use nftnl::nftnl_sys::libc;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

const NLMSG_ERROR: u16 = 2;
/// The kernel's "restart" errno (Linux: 85): a batch refused for a stale generation id.
const ERESTART: i32 = 85;
/// asm-generic/socket.h (Linux ≥ 5.14); not in every libc crate release.
const SO_NETNS_COOKIE: i32 = 71;
const NLMSG_DONE: u16 = 3;
/// The flag of a nested attribute's type (linux/netlink.h): its payload is attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;

/// Large enough for the biggest dump message (64 KiB attribute + headers).
const RECV_BUF: usize = 128 * 1024;

pub struct Netlink {
    sock: mnl::Socket,
    portid: u32,
    seq: u32,
    /// The receive buffer. Allocated zeroed (fresh pages from the kernel, so a kept
    /// socket's buffer holds no memory until a reply lands in it).
    buf: Vec<u8>,
}

/// The top-level attributes of an nf_tables message (`msg`, from its nlmsghdr on: then
/// nfgenmsg, then the attributes).
pub(super) fn attrs(msg: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    super::wire::nested(
        msg.get(std::mem::size_of::<libc::nlmsghdr>() + 4..)
            .unwrap_or_default(),
    )
}

/// The first top-level attribute of type `kind` in message `msg`.
pub(super) fn attr(msg: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(msg).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// The netlink messages packed in `bytes` (a receive buffer): each at least a header long
/// and within the buffer by its own length; a length that breaks either rule is an error
/// and ends the walk. (mnl's iterator trusts the padding after the last message.)
pub fn messages(bytes: &[u8]) -> impl Iterator<Item = std::io::Result<&[u8]>> {
    let header = std::mem::size_of::<libc::nlmsghdr>();
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.get(..4).map_or(0, |b| {
            u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize
        });
        if len < header || len > rest.len() {
            rest = &[];
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a message of {len} bytes in a buffer of {}", bytes.len()),
            )));
        }
        let message = &rest[..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some(Ok(message))
    })
}

/// The generation id in a NEWGEN message: NFTA_GEN_ID (1), a big-endian u32.
pub(super) fn newgen_id(msg: &[u8]) -> Option<u32> {
    attrs(msg)
        .find(|(kind, payload)| *kind == 1 && payload.len() == 4)
        .map(|(_, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
}

/// One reply message, copied out of the receive buffer.
pub struct Msg(Vec<u8>);

impl Msg {
    /// A copy of one message, when `bytes` holds it whole: its header's length covers at
    /// least the header and nfgenmsg, and no more than `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Option<Msg> {
        let min = std::mem::size_of::<libc::nlmsghdr>() + 4;
        if bytes.len() < min {
            return None;
        }
        let len = Header::of(bytes).len;
        (min..=bytes.len())
            .contains(&len)
            .then(|| Msg(bytes[..len].to_vec()))
    }

    /// The message type (subsystem in the high byte, message in the low one).
    pub fn kind(&self) -> u16 {
        Header::of(self.bytes()).kind
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The fields of a `struct nlmsghdr` svcnat reads, from its bytes (host byte order).
struct Header {
    len: usize,
    kind: u16,
    seq: u32,
    portid: u32,
}

impl Header {
    /// `bytes` starts with a whole header: `messages` yields only such messages.
    fn of(bytes: &[u8]) -> Header {
        let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Header {
            len: u32_at(0) as usize,
            kind: u16::from_ne_bytes([bytes[4], bytes[5]]),
            seq: u32_at(8),
            portid: u32_at(12),
        }
    }
}

/// A request to the nf_tables subsystem: nlmsghdr, nfgenmsg (`family`), then one string
/// attribute per `(type, value)`, each NUL-terminated and padded to 4 bytes as netlink
/// wants. All svcnat's dump requests name a table (and a set, or a chain) this way.
pub(super) fn request(
    msg_type: i32,
    flags: i32,
    seq: u32,
    family: u8,
    attrs: &[(u16, &str)],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    for (attr, value) in attrs {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        put_attr(&mut body, *attr, &v);
    }
    let kind = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | msg_type as u16;
    message(kind, flags, seq, family, &body)
}

/// One netfilter netlink message: nlmsghdr (`kind`: subsystem << 8 | message, NLM_F_REQUEST
/// and `flags`), nfgenmsg (`family`, version 0, res_id 0), then `attrs` as encoded.
pub fn message(kind: u16, flags: i32, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    let total = (20 + attrs.len()) as u32;
    m.extend_from_slice(&total.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | flags) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // portid: the kernel fills it in
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// Append one attribute (type, then `value`, padded to 4 bytes) to `out`.
pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn nl_error(bytes: &[u8]) -> (u32, i32) {
    // struct nlmsgerr { int error; struct nlmsghdr msg; }: error, then the failing header.
    let hdr = std::mem::size_of::<libc::nlmsghdr>();
    let code = i32::from_ne_bytes(bytes[hdr..hdr + 4].try_into().expect("4 bytes"));
    let seq = u32::from_ne_bytes(
        bytes[hdr + 4 + 8..hdr + 4 + 12]
            .try_into()
            .expect("4 bytes"),
    );
    (seq, code)
}

/// Raise a socket buffer to `size`: the `*Force` option (root or CAP_NET_ADMIN) lifts the
/// rmem/wmem_max cap; without the capability, the plain one stays within it.
fn set_buf<Force, Plain>(fd: BorrowedFd, force: Force, plain: Plain, size: usize)
where
    Force: nix::sys::socket::SetSockOpt<Val = usize>,
    Plain: nix::sys::socket::SetSockOpt<Val = usize>,
{
    if nix::sys::socket::setsockopt(&fd, force, &size).is_err() {
        let _ = nix::sys::socket::setsockopt(&fd, plain, &size);
    }
}

impl Netlink {
    /// Open a netfilter netlink socket in the calling thread's network namespace (it stays
    /// bound to that namespace afterwards).
    pub fn open() -> Result<Netlink> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(|e| {
            Error::Netlink(format!(
                "cannot open a netfilter socket: {e} (svcnat needs root or CAP_NET_ADMIN)"
            ))
        })?;
        let portid = sock.portid();
        Ok(Netlink {
            sock,
            portid,
            seq: 1,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The socket's netlink port id: the kernel's notifications of this socket's commits
    /// carry it.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Receive into the buffer; `Ok(None)` when `dont_wait` and nothing is queued.
    fn recv(&mut self, dont_wait: bool) -> std::result::Result<Option<usize>, nix::Error> {
        use nix::sys::socket::MsgFlags;
        let flags = if dont_wait {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        let buf = &mut self.buf[..];
        match nix::sys::socket::recv(self.sock.as_raw_fd(), buf, flags) {
            Ok(n) => Ok(Some(n)),
            Err(nix::Error::EAGAIN) if dont_wait => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.sock`, which outlives the borrow and closes
        // it only when dropped (mnl::Socket has no `AsFd` of its own).
        unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) }
    }

    /// The ruleset's generation id: it changes with every committed transaction, by anyone.
    pub fn genid(&mut self) -> Result<u32> {
        let mut genid = None;
        self.dump(libc::NFT_MSG_GETGEN, 0, &[], |m: &Msg| {
            genid = genid.or(newgen_id(m.bytes()));
            Ok(())
        })?;
        genid.ok_or_else(|| {
            Error::Netlink("the kernel did not report the ruleset generation".into())
        })
    }

    /// The kernel's cookie of this socket's network namespace: unique for the boot, never
    /// reused (unlike inode numbers), so it names the namespace's state directory.
    pub fn netns_cookie(&self) -> Option<u64> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` (8) bytes into `cookie`, a live u64, and
        // updates `len`; nix has no option for SO_NETNS_COOKIE.
        let rc = unsafe {
            libc::getsockopt(
                self.fd().as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cookie)
    }

    /// Send the whole transaction in one `sendmsg` (the kernel applies a batch only if it
    /// arrives in one piece) and read every reply. With `genid`, the batch begins with it
    /// (NFNL_BATCH_GENID): if anyone committed since that id was read, the kernel refuses the
    /// whole batch with ERESTART instead of applying it on top of a changed ruleset. The kernel processes the batch inside
    /// `sendmsg`, so when it returns all replies are queued: errors for failing messages, and
    /// on kernels ≥ 6.10 acks for the batch begin and end (nftnl sets NLM_F_ACK on them
    /// there). Any error fails the call and names the object it belongs to.
    pub fn commit(
        &mut self,
        batch: &nftnl::FinalizedBatch,
        objects: &[String],
        genid: Option<u32>,
    ) -> Result<usize> {
        let seqs = batch.sequence_numbers();
        // With begin/end acks the range holds them too: objects sit between.
        let acked_ends = seqs.len() == objects.len() + 2;
        let first_object = if acked_ends {
            seqs.start + 1
        } else {
            seqs.start
        };
        let raw_pages: Vec<&[u8]> = batch.iter().collect();
        // nftnl wrote a plain batch-begin message (header + nfgenmsg) at the very start;
        // send our own begin, with the genid attribute, in its place.
        let begin_len = std::mem::size_of::<libc::nlmsghdr>() + 4;
        let mut begin = Vec::new();
        let mut pages: Vec<IoSlice> = Vec::with_capacity(raw_pages.len() + 1);
        match genid {
            Some(id) => {
                let first = raw_pages[0];
                begin.extend_from_slice(&((begin_len + 8) as u32).to_ne_bytes());
                begin.extend_from_slice(&first[4..begin_len]);
                begin.extend_from_slice(&8u16.to_ne_bytes());
                begin.extend_from_slice(&(libc::NFNL_BATCH_GENID as u16).to_ne_bytes());
                begin.extend_from_slice(&id.to_be_bytes());
                pages.push(IoSlice::new(&begin));
                pages.push(IoSlice::new(&first[begin_len..]));
                pages.extend(raw_pages[1..].iter().map(|p| IoSlice::new(p)));
            }
            None => pages.extend(raw_pages.iter().map(|p| IoSlice::new(p))),
        }
        let total: usize = pages.iter().map(|p| p.len()).sum();
        use nix::sys::socket::sockopt::{RcvBuf, RcvBufForce, SndBuf, SndBufForce};
        set_buf(self.fd(), SndBufForce, SndBuf, total + 64 * 1024);
        set_buf(self.fd(), RcvBufForce, RcvBuf, 4 * 1024 * 1024);

        let kernel = nix::sys::socket::NetlinkAddr::new(0, 0);
        let sent = nix::sys::socket::sendmsg(
            self.fd().as_raw_fd(),
            &pages,
            &[],
            nix::sys::socket::MsgFlags::empty(),
            Some(&kernel),
        )
        .map_err(|e| Error::Netlink(format!("sending the batch ({total} bytes) failed: {e}")))?;
        if sent != total {
            return Err(Error::Netlink(format!(
                "sent {sent} of {total} bytes of the batch"
            )));
        }

        let mut first_error: Option<(u32, i32)> = None;
        let mut end_acked = false;
        let end_seq = seqs.end - 1;
        loop {
            let n = match self.recv(true) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    return Err(Error::Netlink(format!(
                        "reading the kernel's replies failed: {e}"
                    )));
                }
            };
            let bytes = &self.buf[..n];
            for m in messages(bytes) {
                let m = m.map_err(|e| Error::Netlink(format!("malformed reply: {e}")))?;
                if Header::of(m).kind != NLMSG_ERROR {
                    continue;
                }
                let (seq, code) = nl_error(m);
                // The begin message carries seq 0 on kernels that do not ack it.
                if code == -ERESTART && (seq == seqs.start || seq == 0) {
                    return Err(Error::Stale);
                }
                if !seqs.contains(&seq) {
                    return Err(Error::Netlink(format!(
                        "reply for sequence number {seq}, outside this batch's {seqs:?}"
                    )));
                }
                if code == 0 {
                    end_acked |= seq == end_seq;
                } else if first_error.is_none() {
                    first_error = Some((seq, code));
                }
            }
        }
        if let Some((seq, code)) = first_error {
            let errno = nix::errno::Errno::from_raw(-code);
            let object = seq
                .checked_sub(first_object)
                .and_then(|i| objects.get(i as usize))
                .cloned()
                .unwrap_or_else(|| format!("batch message {seq}"));
            return Err(Error::KernelRejected {
                hint: hint_for(errno),
                object,
                errno,
            });
        }
        if acked_ends && !end_acked {
            return Err(Error::Netlink(
                "the kernel did not acknowledge the end of the batch; the ruleset may be unchanged"
                    .into(),
            ));
        }
        Ok(objects.len())
    }

    /// A dump request naming its table (and set) by the string attributes `attrs`; `each`
    /// sees every reply message. Returns Ok(false) when the kernel answers ENOENT (nothing
    /// there).
    pub fn dump(
        &mut self,
        msg_type: i32,
        flags: i32,
        attrs: &[(u16, &str)],
        each: impl FnMut(&Msg) -> Result<()>,
    ) -> Result<bool> {
        self.seq += 1;
        let req = request(
            msg_type,
            flags | libc::NLM_F_ACK,
            self.seq,
            libc::NFPROTO_INET as u8,
            attrs,
        );
        self.dump_with(&req, each)
    }

    /// The next sequence number, for a request built with `message`.
    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Send the request `req` (built with `message`, carrying this socket's latest
    /// sequence number) and hand each reply to `each` until the kernel says it is done.
    pub fn dump_with(
        &mut self,
        req: &[u8],
        mut each: impl FnMut(&Msg) -> Result<()>,
    ) -> Result<bool> {
        let seq = Header::of(req).seq;
        self.sock
            .send(req)
            .map_err(|e| Error::Netlink(format!("sending a dump request failed: {e}")))?;
        loop {
            let n = self
                .recv(false)
                .map_err(|e| Error::Netlink(format!("reading a dump failed: {e}")))?
                .unwrap_or(0);
            let bytes = &self.buf[..n];
            for m in messages(bytes) {
                let m = m.map_err(|e| Error::Netlink(format!("malformed reply: {e}")))?;
                let h = Header::of(m);
                if h.seq != seq || h.portid != self.portid {
                    continue;
                }
                match h.kind {
                    NLMSG_DONE => return Ok(true),
                    NLMSG_ERROR => {
                        let (_, code) = nl_error(m);
                        return match code {
                            0 => Ok(true),
                            c if -c == libc::ENOENT => Ok(false),
                            c if -c == libc::EPERM => Err(Error::Netlink(
                                "reading netfilter needs the CAP_NET_ADMIN capability in this network namespace: run as root, or give the container cap_add: [NET_ADMIN]".into(),
                            )),
                            c => Err(Error::Netlink(format!(
                                "dump request failed: {}",
                                nix::errno::Errno::from_raw(-c)
                            ))),
                        };
                    }
                    _ => each(&Msg(m.to_vec()))?,
                }
            }
        }
    }

    /// Send `requests` (each built with `message` and NLM_F_ACK, numbered from `first_seq`
    /// up) in sends of a few at a time, and return the errno of each one the kernel
    /// refused, by its index. The kernel handles the messages of one send in order and
    /// acks each.
    pub fn send_acked(&mut self, requests: &[Vec<u8>]) -> Result<Vec<(usize, i32)>> {
        const PER_SEND: usize = 64;
        let mut refused = Vec::new();
        for (chunk_no, chunk) in requests.chunks(PER_SEND).enumerate() {
            let seqs: Vec<u32> = chunk.iter().map(|r| Header::of(r).seq).collect();
            let bytes: Vec<u8> = chunk.concat();
            self.sock.send(&bytes).map_err(|e| {
                Error::Netlink(format!("sending {} request(s) failed: {e}", chunk.len()))
            })?;
            let mut pending = chunk.len();
            while pending > 0 {
                let n = self
                    .recv(false)
                    .map_err(|e| Error::Netlink(format!("reading acks failed: {e}")))?
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                for m in messages(&self.buf[..n]) {
                    let m = m.map_err(|e| Error::Netlink(format!("malformed reply: {e}")))?;
                    let h = Header::of(m);
                    if h.kind != NLMSG_ERROR || h.portid != self.portid {
                        continue;
                    }
                    let (seq, code) = nl_error(m);
                    if let Some(i) = seqs.iter().position(|s| *s == seq) {
                        pending -= 1;
                        if code != 0 {
                            refused.push((chunk_no * PER_SEND + i, -code));
                        }
                    }
                }
            }
        }
        Ok(refused)
    }
}

fn hint_for(errno: nix::errno::Errno) -> Option<String> {
    use nix::errno::Errno;
    match errno {
        Errno::EPERM => Some("run as root or with CAP_NET_ADMIN in that namespace".into()),
        Errno::EOPNOTSUPP | Errno::ENOENT => Some(
            "the kernel may lack nf_tables NAT support (modules nf_tables, nft_nat, nft_fib_inet, nft_numgen)"
                .into(),
        ),
        Errno::EBUSY => Some("another program is changing svcnat's table; try again".into()),
        _ => None,
    }
}

impl Netlink {
    /// Discard replies left unread in a kept socket (a dump abandoned on an error), so
    /// that the next request reads only its own.
    pub fn drain(&mut self) {
        while let Ok(Some(n)) = self.recv(true) {
            if n == 0 {
                break;
            }
        }
    }
}
