//! What a probe hit costs on this node: the price the overhead budget puts on each traced
//! allocator call.

/// What one probe hit costs on this node, ns (the trap into the kernel and the program).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeCost {
    /// An allocation: its entry and return probes.
    pub per_allocation_ns: f64,
    /// A free: one probe.
    pub per_free_ns: f64,
}

impl ProbeCost {
    /// Measured on the development machines (BENCHMARKS.md: exact mode adds about 1.5 µs per
    /// malloc/free pair, 0.9–1.45 µs of it the three traps, 152 ns the free's program): what a
    /// node assumes until it has measured its own trap cost.
    pub const MEASURED_HERE: Self = Self {
        per_allocation_ns: 1000.0,
        per_free_ns: 500.0,
    };

    /// From a trap cost measured on this node and the programs' own cost (measured here:
    /// about 450 ns for an allocation's two programs, 150 ns for a free's).
    pub fn from_trap_ns(trap_ns: f64) -> Self {
        Self {
            per_allocation_ns: 2.0 * trap_ns + 450.0,
            per_free_ns: trap_ns + 150.0,
        }
    }
}
