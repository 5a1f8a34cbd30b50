//! [`KernelLimiter`]: loads the BPF object, attaches `connect4`/`connect6` to a cgroup, writes
//! the settings map from [`KernelLimit`]s and reads buckets and counters back.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use meshlimit_policy::effective::KernelLimit;
use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::limits::{self, DestKeyOrd, Destination};
use crate::shared::{BucketKey, BucketSettings, BucketState, DestCounters, DestKey, counter};
use crate::stats::{Counters, DestinationStats, tokens_at};
use crate::{lock, pins, system};

/// The compiled BPF object (built from `bpf/meshlimit.bpf.c` by `build.rs`).
pub(crate) static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshlimit.bpf.o"));

/// Tuning of a [`KernelLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterOptions {
    /// Buckets kept at most (one per client network namespace and destination); beyond it the
    /// least recently used bucket is evicted and starts full when its client comes back.
    pub bucket_capacity: u32,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            bucket_capacity: 65_536,
        }
    }
}

/// One bucket in the kernel: a client network namespace's view of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketInfo {
    pub address: String,
    pub port: u16,
    pub netns_cookie: u64,
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads) when the bucket was made:
    /// tokens come back at `origin_ns + k * fill_interval`.
    pub origin_ns: u64,
    /// Whole tokens available now.
    pub tokens: u64,
}

/// What a limiter found pinned and took over when it attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Program links that were pinned (and now run this build's programs).
    pub links: usize,
    /// Limited destinations in the pinned settings map (enforced until the next `apply`).
    pub destinations: usize,
    /// Buckets kept, with their tokens.
    pub buckets: usize,
    /// The pinned bucket map's capacity, which stays until the pins are removed.
    pub bucket_capacity: u32,
}

/// The kernel data path: BPF programs attached to one cgroup v2 directory, refusing
/// `connect()` with `EPERM` to limited destinations whose bucket is empty. Holds the cgroup's
/// lock (one limiter per cgroup). Unpinned ([`KernelLimiter::attach_with`]), dropping it
/// detaches the programs and frees the maps; pinned ([`KernelLimiter::attach_pinned`]),
/// dropping it (or the process dying) leaves them enforcing until [`remove_pins`].
pub struct KernelLimiter {
    cgroup: PathBuf,
    pin_dir: Option<PathBuf>,
    adopted: Option<Adopted>,
    settings: HashMap<MapData, DestKey, BucketSettings>,
    state: HashMap<MapData, BucketKey, BucketState>,
    counters: PerCpuArray<MapData, u64>,
    dest_counters: PerCpuHashMap<MapData, DestKey, DestCounters>,
    current: BTreeMap<DestKeyOrd, Destination>,
    // Owns the programs and, unpinned, their links: dropping it detaches them. Declared after
    // the maps so that they are closed first.
    _ebpf: Ebpf,
    // The cgroup directory, open and locked until the limiter is dropped.
    _cgroup_lock: File,
}

impl std::fmt::Debug for KernelLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLimiter")
            .field("cgroup", &self.cgroup)
            .field("limits", &self.current.len())
            .finish()
    }
}

impl KernelLimiter {
    /// Attaches to the cgroup v2 directory `cgroup` (and so to every cgroup below it) with
    /// default options. No destination is limited until [`KernelLimiter::apply`].
    pub fn attach(cgroup: &Path) -> Result<KernelLimiter, KernelError> {
        KernelLimiter::attach_with(cgroup, LimiterOptions::default())
    }

    pub fn attach_with(
        cgroup: &Path,
        options: LimiterOptions,
    ) -> Result<KernelLimiter, KernelError> {
        KernelLimiter::attach_inner(cgroup, options, None)
    }

    /// Attaches with the program links and maps pinned in `pin_dir` (a directory on bpffs,
    /// mounted at `/sys/fs/bpf` if needed; see [`default_pin_dir`]), so that enforcement and
    /// the buckets' tokens survive this process. What is pinned there already is adopted:
    /// the same maps (tokens and counters kept; the destinations they hold stay limited until
    /// the next [`KernelLimiter::apply`]), and this build's programs swapped into the pinned
    /// links without a gap.
    pub fn attach_pinned(
        cgroup: &Path,
        options: LimiterOptions,
        pin_dir: &Path,
    ) -> Result<KernelLimiter, KernelError> {
        KernelLimiter::attach_inner(cgroup, options, Some(pin_dir))
    }

    fn attach_inner(
        cgroup: &Path,
        options: LimiterOptions,
        pin_dir: Option<&Path>,
    ) -> Result<KernelLimiter, KernelError> {
        if !system::has_bpf_privileges() {
            return Err(KernelError::NotPermitted);
        }
        system::check_cgroup2(cgroup)?;
        let cgroup_dir = File::open(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        lock::acquire(cgroup, &cgroup_dir)?;

        let mut pinned_capacity = None;
        if let Some(dir) = pin_dir {
            pins::prepare(dir)?;
            pinned_capacity = pins::check_pinned_maps(dir)?;
        }
        let map_pins: Vec<(&str, PathBuf)> = pin_dir
            .map(|dir| {
                pins::MAPS
                    .iter()
                    .map(|(name, _, _)| (*name, dir.join(name)))
                    .collect()
            })
            .unwrap_or_default();
        let mut ebpf = load_object(
            &[("STATE", options.bucket_capacity.max(1)), ("TEST_STATE", 1)],
            &map_pins,
        )?;
        let mut adopted_links = 0;
        for (name, what) in [
            ("connect4", "cgroup/connect4"),
            ("connect6", "cgroup/connect6"),
        ] {
            let program_error = |source| KernelError::Program {
                program: name,
                what,
                source: Box::new(source),
            };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| program_error(aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(program_error)?;
            program.load().map_err(program_error)?;
            let link_pin = pin_dir.map(|dir| dir.join(name));
            match &link_pin {
                Some(path) if path.exists() => {
                    let pin_error = |source: std::io::Error| KernelError::Pinned {
                        path: path.clone(),
                        reason: source.to_string(),
                    };
                    let link = pins::open(path).map_err(pin_error)?;
                    // A pin directory given for another cgroup must not move its programs.
                    let attached_to = pins::link_cgroup_id(link.as_fd()).map_err(pin_error)?;
                    let ours = cgroup_dir.metadata().map(|m| m.ino()).unwrap_or(0);
                    if attached_to != ours {
                        return Err(KernelError::Pinned {
                            path: path.clone(),
                            reason: format!(
                                "it is attached to cgroup id {attached_to}, not to {} (id {ours})",
                                cgroup.display()
                            ),
                        });
                    }
                    let fd = program.fd().map_err(program_error)?;
                    pins::update_link(link.as_fd(), fd.as_fd()).map_err(pin_error)?;
                    adopted_links += 1;
                }
                _ => {
                    let id = program
                        .attach(&cgroup_dir, CgroupAttachMode::Single)
                        .map_err(program_error)?;
                    if let Some(path) = &link_pin {
                        let link = FdLink::try_from(program.take_link(id).map_err(program_error)?)
                            .map_err(|err| KernelError::Pinned {
                                path: path.clone(),
                                reason: err.to_string(),
                            })?;
                        // The pin holds the link from now on; our descriptor closes here.
                        link.pin(path).map_err(|err| KernelError::Pinned {
                            path: path.clone(),
                            reason: err.to_string(),
                        })?;
                    }
                }
            }
        }

        let mut limiter = KernelLimiter {
            cgroup: cgroup.to_owned(),
            pin_dir: pin_dir.map(Path::to_owned),
            adopted: None,
            settings: take_map(&mut ebpf, "SETTINGS")?,
            state: take_map(&mut ebpf, "STATE")?,
            counters: take_map(&mut ebpf, "COUNTERS")?,
            dest_counters: take_map(&mut ebpf, "DEST_COUNTERS")?,
            current: BTreeMap::new(),
            _ebpf: ebpf,
            _cgroup_lock: cgroup_dir,
        };
        if let Some(capacity) = pinned_capacity {
            limiter.adopt_settings()?;
            limiter.adopted = Some(Adopted {
                links: adopted_links,
                destinations: limiter.current.len(),
                buckets: limiter.state.keys().count(),
                bucket_capacity: capacity,
            });
        }
        Ok(limiter)
    }

    /// Takes the pinned settings map as what is applied, so that the next `apply` keeps
    /// destinations whose settings are unchanged (with their buckets) and removes the others.
    fn adopt_settings(&mut self) -> Result<(), KernelError> {
        for entry in self.settings.iter() {
            let (key, settings) = entry.map_err(map_error("SETTINGS"))?;
            let destination = Destination {
                service: String::new(),
                ip: key.ip(),
                port: key.port,
                settings,
            };
            self.current.insert(DestKeyOrd(key), destination);
        }
        Ok(())
    }

    /// Where the programs' links and maps are pinned; `None` when they live only as long as
    /// this limiter.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// What was found pinned and adopted at attach; `None` if nothing was (or unpinned).
    pub fn adopted(&self) -> Option<Adopted> {
        self.adopted
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Makes `limits` the whole set of limited destinations: adds new ones, rewrites changed
    /// settings (buckets keep their tokens, clamped to the new maximum) and removes the rest
    /// (their limit lifts at once and their buckets are dropped). An invalid set changes nothing.
    /// Returns how many destinations are limited now.
    pub fn apply(&mut self, limits: &[KernelLimit]) -> Result<usize, KernelError> {
        let wanted = limits::validate(limits).map_err(KernelError::Limits)?;
        let plan = limits::plan(&self.current, &wanted);

        for key in &plan.remove {
            self.settings
                .remove(&key.0)
                .or_else(ignore_missing)
                .map_err(map_error("SETTINGS"))?;
            self.current.remove(key);
            self.drop_buckets(&key.0)?;
            self.dest_counters
                .remove(&key.0)
                .or_else(ignore_missing)
                .map_err(map_error("DEST_COUNTERS"))?;
        }
        for key in &plan.add {
            let cpus = aya::util::nr_cpus()
                .map_err(|(_, err)| map_error("DEST_COUNTERS")(MapError::from(err)))?;
            let zeros = PerCpuValues::try_from(vec![DestCounters::default(); cpus])
                .map_err(|err| map_error("DEST_COUNTERS")(MapError::from(err)))?;
            self.dest_counters
                .insert(key.0, zeros, 0)
                .map_err(map_error("DEST_COUNTERS"))?;
        }
        for key in plan.add.iter().chain(&plan.change) {
            let entry = &wanted[key];
            self.settings
                .insert(key.0, entry.settings, 0)
                .map_err(map_error("SETTINGS"))?;
            self.current.insert(*key, entry.clone());
        }
        // Same settings, maybe a new service name.
        self.current = wanted;
        Ok(self.current.len())
    }

    /// Per destination: connections allowed and limited, and tokens available now.
    pub fn stats(&self) -> Result<Vec<DestinationStats>, KernelError> {
        let now = system::monotonic_now_ns();
        let mut buckets: StdHashMap<DestKey, (u64, u64)> = StdHashMap::new();
        for (key, state) in self.bucket_states()? {
            let Some(entry) = self.current.get(&DestKeyOrd(key.dest)) else {
                continue;
            };
            let tokens = tokens_at(&state, entry.settings.max_tokens, now);
            let slot = buckets.entry(key.dest).or_insert((u64::MAX, 0));
            slot.0 = slot.0.min(tokens);
            slot.1 += 1;
        }
        let mut rows = Vec::with_capacity(self.current.len());
        for (key, entry) in &self.current {
            let per_cpu = match self.dest_counters.get(&key.0, 0) {
                Ok(values) => values
                    .iter()
                    .fold(DestCounters::default(), |sum, c| DestCounters {
                        allowed: sum.allowed + c.allowed,
                        limited: sum.limited + c.limited,
                    }),
                Err(MapError::KeyNotFound) => DestCounters::default(),
                Err(err) => return Err(map_error("DEST_COUNTERS")(err)),
            };
            let (tokens, clients) = buckets
                .get(&key.0)
                .copied()
                .unwrap_or((entry.settings.max_tokens, 0));
            rows.push(DestinationStats {
                service: entry.service.clone(),
                address: entry.ip.to_string(),
                port: entry.port,
                total: per_cpu.allowed + per_cpu.limited,
                allowed: per_cpu.allowed,
                limited: per_cpu.limited,
                tokens_available: tokens,
                clients,
                max_tokens: entry.settings.max_tokens,
                tokens_per_fill: entry.settings.tokens_per_fill,
                fill_interval_ns: entry.settings.fill_interval_ns,
            });
        }
        Ok(rows)
    }

    /// Totals over every CPU and destination since attach.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let sum = |index: u32| -> Result<u64, KernelError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(map_error("COUNTERS"))?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            allowed: sum(counter::ALLOWED)?,
            limited: sum(counter::LIMITED)?,
            untracked: sum(counter::UNTRACKED)?,
            errors: sum(counter::ERRORS)?,
        })
    }

    /// Every bucket the kernel keeps now (at most the configured capacity).
    pub fn buckets(&self) -> Result<Vec<BucketInfo>, KernelError> {
        let now = system::monotonic_now_ns();
        Ok(self
            .bucket_states()?
            .into_iter()
            .map(|(key, state)| {
                let max = self
                    .current
                    .get(&DestKeyOrd(key.dest))
                    .map_or(u64::MAX, |e| e.settings.max_tokens);
                BucketInfo {
                    address: key.dest.ip().to_string(),
                    port: key.dest.port,
                    netns_cookie: key.netns_cookie,
                    origin_ns: state.origin_ns,
                    tokens: tokens_at(&state, max, now),
                }
            })
            .collect())
    }

    fn bucket_states(&self) -> Result<Vec<(BucketKey, BucketState)>, KernelError> {
        let mut out = Vec::new();
        for key in self.state.keys() {
            let key = key.map_err(map_error("STATE"))?;
            // A bucket evicted meanwhile is simply gone.
            match self.state.get(&key, 0) {
                Ok(state) => out.push((key, state)),
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(map_error("STATE")(err)),
            }
        }
        Ok(out)
    }

    fn drop_buckets(&mut self, dest: &DestKey) -> Result<(), KernelError> {
        let keys: Vec<BucketKey> = self
            .state
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.dest == *dest)
            .collect();
        for key in keys {
            self.state
                .remove(&key)
                .or_else(ignore_missing)
                .map_err(map_error("STATE"))?;
        }
        Ok(())
    }
}

/// Removes what a pinned limiter left in `pin_dir`, which lifts its limits: refused while a
/// limiter holds `cgroup`. True if anything was pinned there.
pub fn remove_pins(cgroup: &Path, pin_dir: &Path) -> Result<bool, KernelError> {
    let cgroup_dir = File::open(cgroup).map_err(|source| KernelError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    lock::acquire(cgroup, &cgroup_dir)?;
    pins::remove(pin_dir)
}

/// Loads the embedded object, creating its maps (programs are loaded by the caller).
/// Maps named in `pinned` are opened from their pin if it exists, else made and pinned there.
pub(crate) fn load_object(
    max_entries: &[(&str, u32)],
    pinned: &[(&str, PathBuf)],
) -> Result<Ebpf, KernelError> {
    let mut loader = EbpfLoader::new();
    for (map, entries) in max_entries {
        loader.map_max_entries(map, *entries);
    }
    for (map, path) in pinned {
        loader.map_pin_path(map, path.as_path());
    }
    loader.load(BPF_OBJECT).map_err(|source| {
        if is_permission_error(&source) {
            KernelError::NotPermitted
        } else if !system::has_kernel_btf() {
            KernelError::NoBtf {
                source: Box::new(source),
            }
        } else {
            KernelError::Load {
                source: Box::new(source),
            }
        }
    })
}

fn is_permission_error(err: &aya::EbpfError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::PermissionDenied;
        }
        source = err.source();
    }
    false
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| KernelError::MapShape {
        map: name,
        source: Box::new(MapError::InvalidName {
            name: name.to_owned(),
        }),
    })?;
    T::try_from(map).map_err(|source| KernelError::MapShape {
        map: name,
        source: Box::new(source),
    })
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map {
        map,
        source: Box::new(source),
    }
}

fn ignore_missing(err: MapError) -> Result<(), MapError> {
    match err {
        MapError::KeyNotFound => Ok(()),
        MapError::SyscallError(ref call) if call.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => Err(other),
    }
}
