//! The config file (TOML), the durations and listen addresses given as flags. A config that
//! parses yields a selection that compiles or fails cleanly; a listen address round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_parse::{config, listen::Listen, select::Selection};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = config::parse(text) {
        let _ = Selection::new(&config.selection);
        assert_eq!(
            config::parse(text).ok(),
            Some(config),
            "parsing is not deterministic"
        );
    }
    match text.parse::<Listen>() {
        Ok(Listen::Unix(path)) => assert!(path.is_absolute(), "{text:?} gave {path:?}"),
        Ok(Listen::Tcp(address)) => {
            let written = format!("tcp:{address}");
            assert_eq!(
                written.parse::<Listen>(),
                Ok(Listen::Tcp(address)),
                "{text:?}"
            );
        }
        Err(_) => {}
    }
    let _ = humantime::parse_duration(text);
});
