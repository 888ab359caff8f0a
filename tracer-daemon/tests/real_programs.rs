//! Real programs from Debian, checked against their own accounting: memcached's slab pages and
//! hash table against `stats slabs` / `stats`, Redis (with jemalloc) against `INFO memory` and
//! `MEMORY STATS` down to the byte where Redis counts the same thing, and back to its baseline
//! after FLUSHALL; and glibc named through its debug package (libc6-dbg), with a leak made
//! through `strdup` shown at `strdup` and its caller. `cargo xtask setup` installs memcached,
//! redis-server and libc6-dbg.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic with a message on the first surprise"
)]

mod support;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const MIB: u64 = 1024 * 1024;

/// A server started here, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            return stream;
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every stack of a process, as (functions innermost first, bytes, count).
fn stacks(report: &Value, pid: u32) -> Vec<(Vec<String>, u64, u64)> {
    process(report, pid)["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stack| {
            let (bytes, count) = bytes_count(stack);
            (functions(stack), bytes, count)
        })
        .collect()
}

// ---- memcached ----

/// memcached's `stats` or `stats slabs`, as name -> value.
fn memcached_stats(connection: &mut BufReader<TcpStream>, command: &str) -> HashMap<String, u64> {
    connection
        .get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .unwrap();
    let mut stats = HashMap::new();
    loop {
        let mut line = String::new();
        let _ = connection.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line == "END" {
            return stats;
        }
        let mut words = line.split_whitespace().skip(1);
        if let (Some(name), Some(value)) = (words.next(), words.next())
            && let Ok(value) = value.parse()
        {
            let _ = stats.insert(name.to_owned(), value);
        }
    }
}

fn memcached_sets(connection: &mut BufReader<TcpStream>, prefix: &str, count: usize, size: usize) {
    let value = vec![b'x'; size];
    for batch in (0..count).collect::<Vec<_>>().chunks(100) {
        let mut request = Vec::new();
        for i in batch {
            request.extend(format!("set {prefix}{i:08} 0 0 {size}\r\n").as_bytes());
            request.extend(&value);
            request.extend(b"\r\n");
        }
        connection.get_mut().write_all(&request).unwrap();
        for _ in batch {
            let mut line = String::new();
            let _ = connection.read_line(&mut line).unwrap();
            assert_eq!(line.trim_end(), "STORED");
        }
    }
}

#[test]
fn memcached_slab_pages_and_hash_table_equal_its_own_stats() {
    require_root();
    let port = free_port();
    // No preallocation (-L would carve pages out of one big block without malloc), no LRU
    // threads moving pages, and a small hash table that must grow once under the load.
    let memcached = Server(
        Command::new("memcached")
            .args([
                "-u",
                "nobody",
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-m",
                "64",
                "-t",
                "1",
            ])
            .args(["-p", &port.to_string()])
            .args(["-o", "hashpower=12,no_lru_crawler,no_lru_maintainer"])
            .stdout(Stdio::null())
            .spawn()
            .expect("memcached (installed by cargo xtask setup)"),
    );
    let pid = memcached.0.id();
    let mut connection = BufReader::new(connect(port));
    let mut trace = Trace::start(&[pid], &["--interval", "300ms", "--top", "200"]);
    // 7,000 small items pass 1.5 x 2^12: the table doubles to 2^13 buckets.
    memcached_sets(&mut connection, "small", 7_000, 100);
    memcached_sets(&mut connection, "medium", 2_000, 1_000);
    memcached_sets(&mut connection, "large", 200, 10_000);
    memcached_sets(&mut connection, "huge", 2, 600_000);
    let deadline = Instant::now() + TIMEOUT;
    let stats = loop {
        let stats = memcached_stats(&mut connection, "stats");
        if stats["hash_power_level"] == 13 && stats["hash_is_expanding"] == 0 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the hash table never grew: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let slabs = memcached_stats(&mut connection, "stats slabs");
    let total_malloced = slabs["total_malloced"];
    let hash_bytes = stats["hash_bytes"];
    eprintln!("[figure] memcached: total_malloced {total_malloced} B, hash_bytes {hash_bytes} B");
    let report = trace.report_after(now_ms());
    let stacks = stacks(&report, pid);
    // memcached is stripped: slab pages are the stacks whose every allocation is one 1 MiB page.
    let pages: (u64, u64) = stacks
        .iter()
        .filter(|(_, bytes, count)| *count > 0 && *bytes == count * MIB)
        .fold((0, 0), |(b, c), (_, bytes, count)| (b + bytes, c + count));
    assert_eq!(
        pages,
        (total_malloced, total_malloced / MIB),
        "slab pages against stats slabs: {report:#}"
    );
    // The grown table: one calloc of hash_bytes (the old one, from before the tracer attached,
    // was freed once the items moved).
    let tables: Vec<_> = stacks
        .iter()
        .filter(|(_, bytes, count)| *count == 1 && *bytes == hash_bytes)
        .collect();
    assert_eq!(
        tables.len(),
        1,
        "one stack holds the hash table: {report:#}"
    );
}

// ---- Redis ----

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).as_bytes());
        out.extend(*arg);
        out.extend(b"\r\n");
    }
    out
}

/// One RESP reply, as text (arrays flattened with newlines).
fn reply(connection: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let _ = connection.read_line(&mut line).unwrap();
    let line = line.trim_end().to_owned();
    match line.as_bytes().first() {
        Some(b'$') => {
            let len: i64 = line[1..].parse().unwrap();
            if len < 0 {
                return String::new();
            }
            let mut data = vec![0; usize::try_from(len).unwrap() + 2];
            connection.read_exact(&mut data).unwrap();
            String::from_utf8_lossy(&data[..data.len() - 2]).into_owned()
        }
        Some(b'*') => {
            let len: i64 = line[1..].parse().unwrap();
            (0..len.max(0))
                .map(|_| reply(connection))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => line[1..].to_owned(),
    }
}

fn redis(connection: &mut BufReader<TcpStream>, args: &[&[u8]]) -> String {
    connection.get_mut().write_all(&resp(args)).unwrap();
    reply(connection)
}

fn used_memory(connection: &mut BufReader<TcpStream>) -> u64 {
    let info = redis(connection, &[b"INFO", b"memory"]);
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

/// `MEMORY STATS` db.0 overhead.hashtable.main.
fn main_hashtable_overhead(connection: &mut BufReader<TcpStream>) -> u64 {
    let stats = redis(connection, &[b"MEMORY", b"STATS"]);
    let lines: Vec<&str> = stats.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "overhead.hashtable.main")
        .unwrap_or_else(|| panic!("no overhead.hashtable.main in {stats}"));
    lines[at + 1].parse().unwrap()
}

/// The first frame of a stack that is not Redis's allocation wrapper (zmalloc and kin).
fn caller_of_zmalloc(functions: &[String]) -> &str {
    functions
        .iter()
        .map(String::as_str)
        .find(|f| {
            !(f.starts_with("zmalloc")
                || f.starts_with("ztry")
                || f.starts_with("zcalloc")
                || f.starts_with("zrealloc")
                || *f == "?")
        })
        .unwrap_or("?")
}

fn bytes_by_caller(report: &Value, pid: u32) -> HashMap<String, (u64, u64)> {
    let mut by_caller: HashMap<String, (u64, u64)> = HashMap::new();
    for (functions, bytes, count) in stacks(report, pid) {
        let entry = by_caller
            .entry(caller_of_zmalloc(&functions).to_owned())
            .or_default();
        entry.0 += bytes;
        entry.1 += count;
    }
    by_caller
}

#[test]
fn redis_with_jemalloc_matches_its_own_accounting_and_returns_to_baseline_after_flushall() {
    const KEYS: u64 = 50_000;
    require_root();
    let port = free_port();
    let redis_server = Server(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Per-command latency histograms and slowlog entries would be allocations the load
            // did not ask for.
            .args([
                "--latency-tracking",
                "no",
                "--slowlog-log-slower-than",
                "-1",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by cargo xtask setup)"),
    );
    let pid = redis_server.0.id();
    let mut connection = BufReader::new(connect(port));
    assert_eq!(redis(&mut connection, &[b"PING"]), "PONG");
    let mut trace = Trace::start(&[pid], &["--interval", "300ms", "--top", "50"]);
    let before_load = trace.report_after(now_ms());
    let baseline_bytes = process(&before_load, pid)["outstanding_bytes"]
        .as_u64()
        .unwrap();
    let used_before = used_memory(&mut connection);
    let value = vec![b'v'; 100];
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut request = Vec::new();
        for i in batch {
            request.extend(resp(&[b"SET", format!("key:{i:08}").as_bytes(), &value]));
        }
        connection.get_mut().write_all(&request).unwrap();
        for _ in batch {
            assert_eq!(reply(&mut connection), "OK");
        }
    }
    // Wait for the main table's incremental rehash to finish (both tables count until then).
    let deadline = Instant::now() + TIMEOUT;
    let overhead = loop {
        let overhead = main_hashtable_overhead(&mut connection);
        let slots = overhead.saturating_sub(40 * KEYS) / 8;
        if slots.is_power_of_two() {
            break overhead;
        }
        assert!(
            Instant::now() < deadline,
            "the rehash never settled: {overhead}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let used_after = used_memory(&mut connection);
    let report = trace.report_after(now_ms());
    let process_report = process(&report, pid);
    assert!(
        process_report["allocator"]
            .as_str()
            .unwrap()
            .contains("libjemalloc"),
        "Redis allocates with jemalloc: {process_report:#}"
    );
    let by_caller = bytes_by_caller(&report, pid);
    eprintln!("[figure] redis: by caller {by_caller:?}");
    // Where Redis counts the same thing, the bytes are equal.
    assert_eq!(
        by_caller.get("dictAddRaw").map(|b| b.0),
        Some(24 * KEYS),
        "dictEntry"
    );
    assert_eq!(
        by_caller.get("createObject").map(|b| b.0),
        Some(16 * KEYS),
        "robj"
    );
    let table = by_caller.get("_dictExpand").map_or(0, |b| b.0);
    assert_eq!(
        24 * KEYS + 16 * KEYS + table,
        overhead,
        "dictEntry + robj + table against MEMORY STATS overhead.hashtable.main"
    );
    // used_memory counts jemalloc's rounded sizes: at least what was asked for, at most a
    // quarter more (plus up to 15 B for the smallest classes).
    let traced = process_report["outstanding_bytes"].as_u64().unwrap() - baseline_bytes;
    let count = process_report["outstanding_count"].as_u64().unwrap();
    let used = used_after - used_before;
    eprintln!("[figure] redis: traced {traced} B in {count} allocations, used_memory +{used} B");
    let slack = 64 * 1024;
    assert!(
        traced <= used + slack,
        "traced {traced} B > used_memory growth {used} B"
    );
    assert!(
        used <= traced + traced / 4 + 15 * count + slack,
        "used_memory growth {used} B past jemalloc's rounding of {traced} B"
    );
    // The top stacks name Redis's own functions.
    let top: Vec<String> = stacks(&report, pid)
        .into_iter()
        .take(3)
        .map(|(functions, _, _)| caller_of_zmalloc(&functions).to_owned())
        .collect();
    assert!(
        top.iter().all(|f| f != "?" && !f.contains(".so")),
        "top call sites are named: {top:?}"
    );

    assert_eq!(redis(&mut connection, &[b"FLUSHALL"]), "OK");
    let report = trace.report_after(now_ms());
    let by_caller = bytes_by_caller(&report, pid);
    for caller in ["dictAddRaw", "createObject", "_dictExpand", "_sdsnewlen"] {
        assert_eq!(
            by_caller.get(caller).map_or(0, |b| b.0),
            0,
            "{caller} after FLUSHALL"
        );
    }
    let after = process(&report, pid)["outstanding_bytes"].as_u64().unwrap();
    eprintln!(
        "[figure] redis: outstanding before load {baseline_bytes} B, after FLUSHALL {after} B"
    );
    assert!(
        after <= baseline_bytes + slack,
        "after FLUSHALL {after} B against {baseline_bytes} B before the load"
    );
}

// ---- glibc with its debug package ----

#[test]
fn libc_frames_are_named_with_libc6_dbg_and_a_strdup_leak_shows_strdup_and_its_caller() {
    require_root();
    assert!(
        std::path::Path::new("/usr/share/doc/libc6-dbg").exists(),
        "libc6-dbg is installed by cargo xtask setup"
    );
    let mut workload = Workload::start(&workload("strdup_leak"), &[]);
    let pid = workload.pid;
    let mut trace = Trace::start(&[pid], &[]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    // glibc's strdup is __strdup with a public alias; its debug info names the function.
    let stacks: Vec<_> = ["strdup", "__strdup"]
        .into_iter()
        .flat_map(|name| stacks_from(&report, pid, name))
        .collect();
    assert_eq!(stacks.len(), 1, "one stack from strdup: {report:#}");
    let stack = stacks[0];
    let names = functions(stack);
    assert_eq!(
        names.get(1).map(String::as_str),
        Some("remember_name"),
        "{names:?}"
    );
    // 100 names of "name-NNN" (8 bytes and the terminating zero).
    assert_eq!(bytes_count(stack), (900, 100), "{report:#}");
    assert!(
        names.iter().any(|f| f.starts_with("__libc_start")),
        "libc's own frames below main are named: {names:?}"
    );
    assert!(
        !names.iter().any(|f| f.starts_with("libc.so.6+")),
        "no libc frame is left as module+offset: {names:?}"
    );
    workload.finish();
}
