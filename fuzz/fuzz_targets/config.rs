//! `config.toml`: whatever the file holds, the gateway reports problems and
//! never panics while reading it.
#![no_main]

use edgegate::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("/etc/edgegate"));
    }
});
