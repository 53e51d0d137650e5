#![no_main]
//! Map text → check → resolve → both renders (`svcnat::fuzz::map_text`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| svcnat::fuzz::map_text(data));
