#![no_main]
//! Netlink dump replies → the decoder's model (`svcnat::fuzz::netlink_dump`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnat::fuzz::netlink_dump(data));
