//! Seccomp policies as reviewable data.
//!
//! A [`Policy`] is a list of allowed system calls, each with its argument
//! conditions and the reason it is needed. Anything not on the list kills
//! the process with `SIGSYS`. The tenders build their policy once every
//! descriptor is known, so conditions can name the exact descriptors.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use crate::{Exit, fatal};

/// One argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// 32-bit argument `n` (a descriptor or an `int`) equals the value.
    Int(u8, u64),
    /// 64-bit argument `n` equals the value.
    Eq(u8, u64),
    /// 64-bit argument `n` is at most the value.
    Le(u8, u64),
    /// 64-bit argument `n` has none of these bits set.
    NoBits(u8, u64),
}

/// One allowed call: all its conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// System call number.
    pub nr: i64,
    /// Conditions (none: any arguments).
    pub args: Vec<Arg>,
    /// Why the tender needs it.
    pub why: &'static str,
}

/// An allowlist.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// The allowed calls.
    pub allow: Vec<Allow>,
}

impl Policy {
    /// Allows `nr` with any arguments.
    pub fn any(&mut self, nr: i64, why: &'static str) -> &mut Self {
        self.allow.push(Allow { nr, args: Vec::new(), why });
        self
    }

    /// Allows `nr` when every condition holds.
    pub fn when(&mut self, nr: i64, args: &[Arg], why: &'static str) -> &mut Self {
        self.allow.push(Allow { nr, args: args.to_vec(), why });
        self
    }

    /// Compiles the policy to BPF.
    pub fn compile(&self) -> Result<BpfProgram, Exit> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let mut unconditional = Vec::new();
        for a in &self.allow {
            if a.args.is_empty() {
                unconditional.push(a.nr);
                continue;
            }
            let conds = a
                .args
                .iter()
                .map(|c| match *c {
                    Arg::Int(n, v) => SeccompCondition::new(n, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v),
                    Arg::Eq(n, v) => SeccompCondition::new(n, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
                    Arg::Le(n, v) => SeccompCondition::new(n, SeccompCmpArgLen::Qword, SeccompCmpOp::Le, v),
                    Arg::NoBits(n, bits) => {
                        SeccompCondition::new(n, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(bits), 0)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fatal!("seccomp: {e}"))?;
            rules.entry(a.nr).or_default().push(SeccompRule::new(conds).map_err(|e| fatal!("seccomp: {e}"))?);
        }
        for nr in unconditional {
            // An empty rule list matches any arguments, and wins over conditions.
            rules.insert(nr, Vec::new());
        }
        let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, TargetArch::x86_64)
            .map_err(|e| fatal!("seccomp: {e}"))?;
        filter.try_into().map_err(|e: seccompiler::BackendError| fatal!("seccomp: {e}"))
    }

    /// Installs the policy on this thread (`all_threads`: and every other
    /// thread of the process, with `SECCOMP_FILTER_FLAG_TSYNC`). Sets
    /// `no_new_privs` first.
    pub fn apply(&self, all_threads: bool) -> Result<(), Exit> {
        let prog = self.compile()?;
        let r =
            if all_threads { seccompiler::apply_filter_all_threads(&prog) } else { seccompiler::apply_filter(&prog) };
        r.map_err(|e| fatal!("seccomp(SECCOMP_SET_MODE_FILTER) failed: {e}"))
    }
}
