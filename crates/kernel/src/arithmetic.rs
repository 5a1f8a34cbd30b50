//! Runs the BPF program's token arithmetic with injected time: the `arithmetic` program is a
//! `sched_cls` copy of the connect path's bucket logic (same code, its own bucket map), driven
//! through `BPF_PROG_TEST_RUN` with the time and settings in the test packet. This is how the
//! kernel arithmetic is checked against the userspace engine without sockets or waiting.
// The BPF_PROG_TEST_RUN syscall: the kernel boundary.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;
use aya::programs::SchedClassifier;

use crate::error::KernelError;
use crate::limiter::load_object;
use crate::shared::{ArithmeticInput, BucketSettings};
use crate::system;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The kernel's bucket arithmetic, callable with any time. Each `bucket` id is an independent
/// bucket that starts full at its first check, as a connect bucket does.
pub struct ArithmeticProbe {
    ebpf: Ebpf,
}

impl ArithmeticProbe {
    pub fn load() -> Result<ArithmeticProbe, KernelError> {
        if !system::has_bpf_privileges() {
            return Err(KernelError::NotPermitted);
        }
        // Only the probe's own map matters; keep the connect path's maps tiny.
        let mut ebpf = load_object(&[("STATE", 1), ("SETTINGS", 1), ("DEST_COUNTERS", 1)], &[])?;
        let program_error = |source| KernelError::Program {
            program: "arithmetic",
            what: "sched_cls copy of the bucket logic",
            source: Box::new(source),
        };
        let program: &mut SchedClassifier = ebpf
            .program_mut("arithmetic")
            .ok_or_else(|| program_error(aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(program_error)?;
        program.load().map_err(program_error)?;
        Ok(ArithmeticProbe { ebpf })
    }

    /// Takes one token from bucket `bucket` at `now_ns` (monotonic nanoseconds) if it has one.
    pub fn check(
        &mut self,
        bucket: u64,
        settings: BucketSettings,
        now_ns: u64,
    ) -> Result<bool, KernelError> {
        let input = ArithmeticInput {
            ethernet: [0; 14],
            _pad: [0; 2],
            now_ns,
            bucket,
            settings,
        };
        match self.run(&input)? {
            0 => Ok(false),
            1 => Ok(true),
            3 => Err(KernelError::TestRun(std::io::Error::other(
                "no bucket could be tracked",
            ))),
            4 => Err(KernelError::TestRun(std::io::Error::other(
                "the program refused the settings",
            ))),
            5 => Err(KernelError::TestRun(std::io::Error::other(
                "no compare-and-swap succeeded",
            ))),
            other => Err(KernelError::TestRun(std::io::Error::other(format!(
                "unexpected return value {other}"
            )))),
        }
    }

    fn run(&mut self, input: &ArithmeticInput) -> Result<u32, KernelError> {
        let program: &SchedClassifier = self
            .ebpf
            .program("arithmetic")
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| {
                KernelError::TestRun(std::io::Error::other("arithmetic program missing"))
            })?;
        let fd = program
            .fd()
            .map_err(|err| KernelError::TestRun(std::io::Error::other(err.to_string())))?
            .as_fd()
            .as_raw_fd();
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: size_of::<ArithmeticInput>() as u32,
            data_in: std::ptr::from_ref(input) as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        // SAFETY: attr is a valid `bpf_attr.test` prefix whose data_in points at `input`, which
        // outlives the call; the kernel reads data_size_in bytes from it and writes only attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                std::ptr::from_mut(&mut attr),
                size_of::<TestRunAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(KernelError::TestRun(std::io::Error::last_os_error()));
        }
        Ok(attr.retval)
    }
}
