//! The library behind the `mirage` tool: the configuration of a unikernel
//! (`mirage.toml`), the wiring generated from it for each target, and its
//! device graph.

pub mod config;
pub mod describe;
pub mod generate;
pub mod trim;
