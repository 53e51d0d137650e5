//! The closer: a process that closes a netfilter socket after a one-shot command has exited.
//!
//! Closing a netfilter socket waits for nf_tables' deferred destroy work, if any, the
//! cleanup after a commit (an RCU grace period, ~8 ms here), though the new rules are live
//! since the commit's ack. A one-shot command hands that wait to a short-lived process
//! holding the last reference. The close also holds the namespace's commit lock while it
//! waits, so the next command's commit would wait for it (back to back, a one-service
//! change took 12-16 ms instead of 1.2-1.8): the closer first waits, holding nothing, until
//! nobody has committed for a grace period (`wait_until_quiet`), and closes then.
//! It is made with `clone(CLONE_VM)`, not `fork`: it shares this process's memory instead
//! of copying its page tables (a fork cost ~0.13 ms after a one-service change of a
//! 50,000-service map, ~0.9 ms after a full apply of it), and the command's own exit then
//! leaves tearing the address space down to the closer as well.
//!
//! The same goes for other files whose close is slow and can wait: records to fsync, and
//! old generations just removed (the last close frees their blocks, ~2.3 ms for 8 MB).
//!
//! Sharing memory means sharing the main thread's thread-local storage too (errno, malloc's
//! caches): the closer allocates nothing and calls no libc function, only raw system calls
//! on the descriptors it was given (`Job`). It gets its own copy of the descriptor table,
//! so it closes its copies of standard input, output and error at once: nobody reading this
//! command's output waits for it.

use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};

/// Files to close (and maybe fsync) before the socket closes, at most.
const MAX_FILES: usize = 16;
const STACK: usize = 16 * 1024;

/// What the closer does, in order: close its copy of the pipe's write end and stdio; wait
/// until the pipe reports end of file (this process closed its copies of everything);
/// close `files`, syncing those marked; wait until the ruleset is quiet; close `sock`.
struct Job {
    read_end: i32,
    write_end: i32,
    files: [(i32, bool); MAX_FILES],
    nfiles: usize,
    sock: i32,
}

/// Hand `sock` and `files` (true: sync it first) to a closer. Returns the files when they
/// could not be handed over (no closer on this architecture, too many files, or clone
/// failed): the caller then closes here. On success the caller must close its own copy of
/// `sock` before it exits, then drop the returned guard, which lets the closer go on.
pub fn hand_over(
    sock: &impl AsRawFd,
    files: Vec<(std::fs::File, bool)>,
) -> Result<Release, Vec<(std::fs::File, bool)>> {
    if !SUPPORTED || files.len() > MAX_FILES {
        return Err(files);
    }
    let Ok((read_end, write_end)) = nix::unistd::pipe() else {
        return Err(files);
    };
    let mut fds = [(-1, false); MAX_FILES];
    for (slot, (f, sync)) in fds.iter_mut().zip(&files) {
        *slot = (f.as_raw_fd(), *sync);
    }
    // Leaked: the closer may outlive this process's last line of Rust, never its memory.
    let job = Box::leak(Box::new(Job {
        read_end: read_end.as_raw_fd(),
        write_end: write_end.as_raw_fd(),
        files: fds,
        nfiles: files.len(),
        sock: sock.as_raw_fd(),
    }));
    let stack = Box::leak(vec![0u128; STACK / 16].into_boxed_slice());
    // Safety: the stack and the job live for the rest of the process (leaked) and beyond it
    // for the closer (the shared memory stays until the closer exits); `close_later` only
    // makes raw system calls. No exit signal: nobody waits for it, init reaps it.
    let pid = unsafe {
        libc::clone(
            close_later,
            stack.as_mut_ptr_range().end.cast(),
            libc::CLONE_VM,
            (job as *mut Job).cast(),
        )
    };
    if pid < 0 {
        return Err(files);
    }
    drop(read_end);
    // The closer has its own descriptors now: this process's copies just close.
    drop(files);
    Ok(Release(write_end.into_raw_fd()))
}

/// Dropped once this process has closed its copy of the socket: the closer goes on.
pub struct Release(i32);

impl Drop for Release {
    fn drop(&mut self) {
        // Safety: the write end is ours alone in this process.
        unsafe { libc::close(self.0) };
    }
}

extern "C" fn close_later(arg: *mut libc::c_void) -> libc::c_int {
    // Safety: `arg` is the leaked Job, never written after the clone.
    let job = unsafe { &*(arg as *const Job) };
    unsafe {
        raw::close(job.write_end);
        for fd in 0..3 {
            raw::close(fd);
        }
        let mut byte = 0u8;
        // Blocks until this process's write end is closed; retried if interrupted.
        while raw::read(job.read_end, &mut byte) == -(libc::EINTR as isize) {}
        for &(fd, sync) in &job.files[..job.nfiles] {
            if sync {
                raw::fsync(fd);
            }
            raw::close(fd);
        }
        wait_until_quiet(BorrowedFd::borrow_raw(job.sock));
        raw::close(job.sock);
    }
    // glibc's clone returns into SYS_exit with this: the closer alone ends.
    0
}

/// At most this many grace periods waited for a quiet ruleset (~8 ms each here): a closer
/// keeps the exited command's memory (~0.3 MB after a one-service change, ~20 MB after a
/// full apply of 50,000 services), and commits may never stop. 100 one-service changes back
/// to back take ~0.3 s here: 8 grace periods left a tenth of them waiting ~10 ms.
const MAX_GRACE_PERIODS: u32 = 32;

/// Wait until a close of the netfilter socket `sock` would not wait: until no commit, by
/// anyone, happened for a whole RCU grace period, so that nf_tables' destroy work queued by
/// the last one has run. Holds nothing meanwhile, where the close would hold the
/// namespace's commit lock for as long (see `Netlink::close`). Each grace period is
/// `membarrier(MEMBARRIER_CMD_GLOBAL)`, the kernel's `synchronize_rcu`; a commit is seen by
/// the ruleset's generation id moving. Any refusal (a seccomp filter, `nohz_full`, an
/// unanswered request) ends the wait: the close then waits as before. Raw system calls
/// only: the closer shares errno and malloc with the exited command. Returns how many
/// grace periods it waited.
pub fn wait_until_quiet(sock: BorrowedFd<'_>) -> u32 {
    let Some(mut seen) = ruleset_genid(sock, 0) else {
        return 0;
    };
    for round in 1..=MAX_GRACE_PERIODS {
        // Safety: no pointers.
        if !SUPPORTED || unsafe { raw::membarrier_global() } < 0 {
            return round - 1;
        }
        match ruleset_genid(sock, round) {
            Some(now) if now != seen => seen = now,
            _ => return round,
        }
    }
    MAX_GRACE_PERIODS
}

/// The ruleset's generation id, asked on the netfilter socket `sock` (NFT_MSG_GETGEN) as
/// request `round`, with raw system calls. The kernel answers while the request is
/// written, so the answer is read without waiting: None if it is not there.
pub fn ruleset_genid(sock: BorrowedFd<'_>, round: u32) -> Option<u32> {
    if !SUPPORTED {
        return None;
    }
    const NLMSG_HDR: usize = 16;
    const SEQ: u32 = 0x636c_6f00;
    let (sock, seq_sent) = (sock.as_raw_fd(), SEQ.wrapping_add(round));
    let gen_type = |msg: i32| ((libc::NFNL_SUBSYS_NFTABLES << 8) | msg) as u16;
    // nlmsghdr (length, type, flags, seq, port) and nfgenmsg (family, version, resource).
    let mut req = [0u8; NLMSG_HDR + 4];
    req[0..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&gen_type(libc::NFT_MSG_GETGEN).to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq_sent.to_ne_bytes());
    // Safety (here and below): raw system calls on a descriptor borrowed for the call and
    // on buffers of this frame.
    if unsafe { raw::write(sock, &req) } != req.len() as isize {
        return None;
    }
    let mut buf = [0u32; 128];
    // Replies left unread before ours (none expected) are passed over.
    for _ in 0..4 {
        let got = unsafe { raw::recv_nowait(sock, &mut buf) };
        if got <= 0 {
            return None;
        }
        // Safety: u32 words seen as the bytes `recv` wrote.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), got as usize) };
        let mut at = 0;
        while at + NLMSG_HDR <= bytes.len() {
            let word =
                |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            let len = word(at) as usize;
            let (kind, seq) = ((word(at + 4) & 0xffff) as u16, word(at + 8));
            if len < NLMSG_HDR || at + len > bytes.len() {
                return None;
            }
            if seq == seq_sent {
                if kind != gen_type(libc::NFT_MSG_NEWGEN) {
                    return None;
                }
                return super::netlink::newgen_id(&bytes[at..at + len]);
            }
            at += len.next_multiple_of(4);
        }
    }
    None
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SUPPORTED: bool = true;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SUPPORTED: bool = false;

/// System calls without libc's wrappers, which would write errno in the shared TLS.
mod raw {
    pub unsafe fn close(fd: i32) -> isize {
        unsafe { call(libc::SYS_close, fd as usize, 0, 0) }
    }
    pub unsafe fn read(fd: i32, byte: &mut u8) -> isize {
        unsafe { call(libc::SYS_read, fd as usize, byte as *mut u8 as usize, 1) }
    }
    pub unsafe fn fsync(fd: i32) -> isize {
        unsafe { call(libc::SYS_fsync, fd as usize, 0, 0) }
    }
    pub unsafe fn write(fd: i32, bytes: &[u8]) -> isize {
        unsafe {
            call(
                libc::SYS_write,
                fd as usize,
                bytes.as_ptr() as usize,
                bytes.len(),
            )
        }
    }
    pub unsafe fn recv_nowait(fd: i32, buf: &mut [u32]) -> isize {
        let (ptr, len) = (buf.as_mut_ptr() as usize, std::mem::size_of_val(buf));
        let flags = libc::MSG_DONTWAIT as usize;
        unsafe { call6(libc::SYS_recvfrom, [fd as usize, ptr, len, flags, 0, 0]) }
    }
    pub unsafe fn membarrier_global() -> isize {
        unsafe {
            call(
                libc::SYS_membarrier,
                libc::MEMBARRIER_CMD_GLOBAL as usize,
                0,
                0,
            )
        }
    }

    unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        unsafe { call6(n, [a, b, c, 0, 0, 0]) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn call6(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn call6(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack),
            );
        }
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn call6(_: libc::c_long, _: [usize; 6]) -> isize {
        unreachable!("no closer on this architecture")
    }
}
