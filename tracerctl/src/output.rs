//! How results are printed: a table for people or JSON for scripts, chosen on the command line.

use std::io::Write as _;

use clap::{Args, ValueEnum};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts (one object per report when watching).
    Json,
}

/// The output flags, and the printing they choose.
#[derive(Debug, Args)]
pub(crate) struct Printer {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Show every frame of a stack in tables (by default the C library's frames below `main`
    /// or a thread's start are folded).
    #[arg(long, global = true)]
    full_stacks: bool,
}

impl Printer {
    /// Whether tables show every frame of a stack.
    pub(crate) fn full_stacks(&self) -> bool {
        self.full_stacks
    }

    /// Prints `value` as one line of JSON, or as the table `table` makes of it; flushed, so a
    /// watch shows each report as it comes.
    pub(crate) fn print<T: serde::Serialize>(
        &self,
        value: &T,
        table: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match self.output {
            Output::Json => {
                serde_json::to_writer(&mut out, value)?;
                writeln!(out)?;
            }
            Output::Table => write!(out, "{}", table(value))?,
        }
        out.flush()?;
        Ok(())
    }
}
