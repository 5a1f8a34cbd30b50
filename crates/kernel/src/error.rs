//! What can go wrong between userspace and the kernel, in words an operator can act on.

use std::path::PathBuf;

use crate::limits::LimitError;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "not enough privileges to load eBPF programs: run as root, or with CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN)"
    )]
    NotPermitted,
    #[error("no cgroup v2 hierarchy is mounted (looked for a cgroup2 entry in /proc/mounts)")]
    NoCgroupV2,
    #[error("{path} is not a directory of a cgroup v2 hierarchy")]
    NotCgroupV2 { path: PathBuf },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the kernel refused the BPF object and has no BTF (/sys/kernel/btf/vmlinux is \
         missing): use a kernel built with CONFIG_DEBUG_INFO_BTF: {source}"
    )]
    NoBtf { source: Box<aya::EbpfError> },
    #[error(
        "the kernel refused the BPF object (it needs Linux 5.10 or later with cgroup \
         connect hooks, LRU hash maps, BPF atomics and bpf_get_netns_cookie): {source}"
    )]
    Load { source: Box<aya::EbpfError> },
    #[error("the kernel refused program {program} ({what}): {source}")]
    Program {
        program: &'static str,
        what: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {map} is missing or of the wrong type: {source}")]
    MapShape {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("invalid limits: {}", join(.0))]
    Limits(Vec<LimitError>),
    #[error(
        "another meshlimit process{} enforces kernel limits on cgroup {}: only one may; stop \
         it first",
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        .cgroup.display()
    )]
    CgroupBusy {
        cgroup: PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot pin in {path}: {source}")]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot adopt the pinned {path}: {reason}; remove the pins with `meshlimit agent \
         --detach` first"
    )]
    Pinned { path: PathBuf, reason: String },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(std::io::Error),
}

fn join(problems: &[LimitError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
