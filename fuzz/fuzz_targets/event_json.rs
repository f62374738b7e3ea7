//! `cargo fuzz run event_json`: see `bems_fuzz::event_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bems_fuzz::event_json(data));
