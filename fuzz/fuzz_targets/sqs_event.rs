//! `cargo fuzz run sqs_event`: see `bems_fuzz::sqs_event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bems_fuzz::sqs_event(data));
