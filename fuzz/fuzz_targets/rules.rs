//! `cargo fuzz run rules`: see `bems_fuzz::rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bems_fuzz::rules(data));
