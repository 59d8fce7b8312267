//! Any bytes as an AdmissionReview body: see `ipmgmt_webhook::fuzzing` for the
//! properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| ipmgmt_webhook::fuzzing::check(body));
