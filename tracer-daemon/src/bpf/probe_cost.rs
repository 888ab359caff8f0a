//! What a probe hit costs on this node: the price the overhead budget puts on each traced
//! allocator call.

/// What each kind of probe hit costs on this node, ns: the trap into the kernel and back
/// (measured at startup with an empty program) plus that kind's program (measured while it runs,
/// see [`super::program_runs`]; the development machines' figures until then).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeCost {
    /// A hit of an empty program.
    pub trap_ns: f64,
    /// An allocator entry's program (every call, sampled or not).
    pub entry_program_ns: f64,
    /// An allocation return's program, where its record is made (in sampled mode with uprobe
    /// sessions, only sampled mallocs return through a probe).
    pub return_program_ns: f64,
    /// A free's program.
    pub free_program_ns: f64,
}

impl Default for ProbeCost {
    fn default() -> Self {
        Self::MEASURED_HERE
    }
}

impl ProbeCost {
    /// Measured on the development machines (BENCHMARKS.md: exact mode adds about 1.5 µs per
    /// malloc/free pair, 0.9–1.45 µs of it the three traps, 152 ns the free's program): what a
    /// node assumes until it has measured its own.
    pub const MEASURED_HERE: Self = Self {
        trap_ns: 350.0,
        entry_program_ns: 100.0,
        return_program_ns: 200.0,
        free_program_ns: 150.0,
    };

    /// From a trap cost measured on this node, with the development machines' program costs.
    pub fn from_trap_ns(trap_ns: f64) -> Self {
        Self {
            trap_ns,
            ..Self::MEASURED_HERE
        }
    }

    /// An allocator entry hit.
    pub fn per_entry_ns(&self) -> f64 {
        self.trap_ns + self.entry_program_ns
    }

    /// An allocation return hit.
    pub fn per_return_ns(&self) -> f64 {
        self.trap_ns + self.return_program_ns
    }

    /// A free hit.
    pub fn per_free_ns(&self) -> f64 {
        self.trap_ns + self.free_program_ns
    }
}

/// Calls timed per calibration round.
const CALIBRATION_CALLS: u32 = 20_000;

/// What the empty program is attached to: a function of this binary that does nothing, and
/// starts with `push %rbp`, an instruction the kernel emulates, as the allocator probes'
/// placement picks (a single-stepped instruction costs about seven times as much here).
#[unsafe(naked)]
pub extern "C" fn tracer_calibration_target(value: u64) -> u64 {
    core::arch::naked_asm!("push rbp", "pop rbp", "mov rax, rdi", "ret")
}

/// Nanoseconds `calls` calls to the target take.
fn time_calls(calls: u32) -> u64 {
    let start = std::time::Instant::now();
    for i in 0..calls {
        let _ = std::hint::black_box(tracer_calibration_target(u64::from(i)));
    }
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The file offset of the calibration target in this process's executable, from
/// /proc/self/maps (no ELF file read: the mapping holding the function's address says it).
fn target_offset() -> Option<(std::path::PathBuf, u64)> {
    let address = tracer_calibration_target as *const () as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mapping = tracer_parse::proc_maps::parse_maps_line(line).ok()?;
        (mapping.start <= address && address < mapping.end && mapping.path.starts_with('/')).then(
            || {
                (
                    std::path::PathBuf::from(mapping.path),
                    address - mapping.start + mapping.file_offset,
                )
            },
        )
    })
}

impl super::Probes {
    /// Measures what a uprobe hit costs on this node: an empty program on a function of this
    /// process, calls timed with and without it (the better of three rounds each). Loads the
    /// benchmark's empty program for it and unloads it after. `None`, logged, when it cannot.
    pub fn calibrate_trap_ns(&mut self) -> Option<f64> {
        let measure = |probes: &mut Self| -> Result<f64, String> {
            probes.load_floor_programs().map_err(|e| e.to_string())?;
            let (binary, offset) =
                target_offset().ok_or("the calibration function is in no file mapping")?;
            let plain = (0..3).map(|_| time_calls(CALIBRATION_CALLS)).min();
            let link = probes
                .attach_uprobe(
                    super::FLOOR_ENTRY_PROGRAM,
                    &binary,
                    offset,
                    std::process::id(),
                    super::uprobe_multi::Placement::Entry,
                )
                .map_err(|e| e.to_string())?;
            let probed = (0..3).map(|_| time_calls(CALIBRATION_CALLS)).min();
            drop(link);
            probes.unload_floor_programs();
            let (Some(plain), Some(probed)) = (plain, probed) else {
                return Err("no rounds".into());
            };
            Ok(probed.saturating_sub(plain) as f64 / f64::from(CALIBRATION_CALLS))
        };
        match measure(self) {
            Ok(trap_ns) if trap_ns > 0.0 => {
                tracing::info!(
                    trap_ns = trap_ns.round(),
                    "measured the cost of a probe hit"
                );
                Some(trap_ns)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot measure the cost of a probe hit; the budget uses the figure measured on the development machines");
                None
            }
        }
    }
}
