//! The bottom of the netlink wire format, shared by the encoders and decoders above it.

use nftnl::nftnl_sys::libc;

/// An attribute's bytes as libnftnl's getters return them (a pointer and its length),
/// copied; none where it is unset (a null pointer).
///
/// # Safety
/// `p` is null or points to `len` readable bytes.
pub(super) unsafe fn attr_bytes(p: *const libc::c_void, len: u32) -> Vec<u8> {
    if p.is_null() {
        Vec::new()
    } else {
        // SAFETY: the caller's promise above; the bytes are copied before it returns.
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec()
    }
}
