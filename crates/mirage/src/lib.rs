//! The library behind the `mirage` tool: the configuration of a unikernel
//! (`mirage.toml`), the wiring generated from it for each target, its
//! device graph, and the template of `mirage new`.

pub mod config;
pub mod describe;
pub mod diagnose;
pub mod generate;
pub mod template;
pub mod trim;
