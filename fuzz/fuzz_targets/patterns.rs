//! `cargo fuzz run patterns`: see `bems_fuzz::patterns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bems_fuzz::patterns(data));
