//! /proc/PID/maps content: never a panic, every mapping kept is a non-empty range of a file,
//! every malformed line is named by a line number the content has, and a mapping written back
//! as a maps line parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_parse::proc_maps::{self, ExecMapping};

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|byte| *byte == b'\n').count();
    let mut mappings = Vec::new();
    for parsed in proc_maps::exec_mappings(data) {
        match parsed {
            Ok(mapping) => mappings.push(mapping),
            Err(malformed) => assert!(
                (1..=lines).contains(&malformed.line_number),
                "{malformed:?} of {lines} lines"
            ),
        }
    }
    assert!(mappings.len() <= lines, "more mappings than lines");
    for mapping in &mappings {
        assert!(mapping.start < mapping.end, "empty range kept: {mapping:?}");
        assert!(mapping.path.starts_with('/'), "not a file: {mapping:?}");
        assert!(
            !mapping.path.contains('\n'),
            "path spans lines: {mapping:?}"
        );
        let line = format!(
            "{:x}-{:x} r-xp {:08x} fd:01 1234                    {}\n",
            mapping.start, mapping.end, mapping.file_offset, mapping.path
        );
        let reparsed: Vec<ExecMapping> = proc_maps::exec_mappings(line.as_bytes())
            .map(|parsed| parsed.expect("a written mapping parses"))
            .collect();
        assert_eq!(
            reparsed.as_slice(),
            std::slice::from_ref(mapping),
            "{line:?}"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.split('\n') {
            if let Ok(parsed) = proc_maps::parse_maps_line(line) {
                assert!(parsed.start < parsed.end, "{line:?} gave {parsed:?}");
                assert!(!parsed.path.starts_with(' '), "{line:?} gave {parsed:?}");
            }
        }
    }
});
