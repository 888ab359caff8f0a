//! Evidence before (and at) an OOM kill: the memory-limit watch decides when to snapshot a
//! container's leak report, the store keeps snapshots on the node across restarts, and pprof
//! exports them for `go tool pprof`.

pub mod model;
pub mod pprof;
pub mod store;
pub mod watch;
