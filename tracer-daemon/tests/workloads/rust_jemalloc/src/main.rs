//! Ground truth (between "go" and "done"):
//!   leak_buffers   leaks 20 x 3000 bytes (Vec<u8> buffers, forgotten)
//!   leak_zeroed    leaks 10 x 800 bytes (zeroed Vec<u64> buffers of 100, forgotten)
//!   churn          leaks nothing (2000 boxed buffers made and dropped)
//! The same harness protocol as the C workloads: "ready <pid>", wait for "go", "done <pid>",
//! wait for "exit".

use std::{hint::black_box, io::BufRead as _};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn wait_for(word: &str) {
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(line) if line.starts_with(word) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    std::process::exit(0);
}

fn say(word: &str) {
    println!("{word} {}", std::process::id());
}

#[inline(never)]
fn leak_buffers() {
    for i in 0..20u8 {
        let mut buffer = Vec::<u8>::with_capacity(3000);
        buffer.push(i);
        std::mem::forget(black_box(buffer));
    }
}

#[inline(never)]
fn leak_zeroed() {
    for _ in 0..10 {
        let buffer = vec![0u64; 100];
        std::mem::forget(black_box(buffer));
    }
}

#[inline(never)]
fn churn() {
    for i in 0..2000usize {
        let boxed = vec![1u8; 32 + i % 512].into_boxed_slice();
        black_box(&boxed);
    }
}

fn main() {
    say("ready");
    wait_for("go");
    leak_buffers();
    leak_zeroed();
    churn();
    say("done");
    wait_for("exit");
}
