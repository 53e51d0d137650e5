//! The closer: a process that closes a netfilter socket after a one-shot command has exited.
//!
//! Closing a netfilter socket after a commit waits for nf_tables' deferred destroy work (an
//! RCU grace period, ~8 ms here), though the new rules are live since the commit's ack. A
//! one-shot command hands that wait to a short-lived process holding the last reference.
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

use std::os::fd::{AsRawFd, IntoRawFd};

/// Files to close (and maybe fsync) before the socket closes, at most.
const MAX_FILES: usize = 16;
const STACK: usize = 16 * 1024;

/// What the closer does, in order: close its copy of the pipe's write end and stdio; wait
/// until the pipe reports end of file (this process closed its copies of everything);
/// close `files`, syncing those marked; close `sock` (the wait).
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
        raw::close(job.sock);
    }
    // glibc's clone returns into SYS_exit with this: the closer alone ends.
    0
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

    #[cfg(target_arch = "x86_64")]
    unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        let ret: isize;
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a, in("rsi") b, in("rdx") c,
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        let ret: isize;
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a as isize => ret,
                in("x1") b, in("x2") c,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn call(_: libc::c_long, _: usize, _: usize, _: usize) -> isize {
        unreachable!("no closer on this architecture")
    }
}
