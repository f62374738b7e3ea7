//! `cargo fuzz run envelope`: see `bems_fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bems_fuzz::envelope(data));
