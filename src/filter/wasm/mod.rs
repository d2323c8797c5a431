//! User filters as WebAssembly components (`filters-wit/filter.wit`,
//! `audit-forwarder:filter@0.2.x`), run with wasmtime.
//!
//! - One engine per process, with epoch interruption: a ticker thread bumps
//!   the epoch every [`TICK`], so a call's deadline is `timeout / TICK`
//!   ticks.
//! - Each component is compiled once and the compiled form cached on disk,
//!   keyed by the component's SHA-256 and the engine's compatibility hash
//!   (a Python filter compiles in seconds; loading the cached one takes
//!   milliseconds).
//! - Sandbox: WASI with no preopened directories, no environment, no
//!   arguments, no network; stdout/stderr go to the log. Memory is capped
//!   per instance; a call has a deadline.
//! - One instance per filter, reused across calls; after a trap the next
//!   call gets a fresh instance (configured again).
//! - The file is watched (stat at most every [`RELOAD_CHECK`]); a changed
//!   file is loaded, configured, and swapped in between batches; a bad one
//!   is rejected and the old one kept.

mod abi;
mod stdio;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, error, info, warn};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "filters-wit",
        world: "audit-filter",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

pub use abi::{Batch, Row};

use bindings::audit_forwarder::filter::types::LogLevel;
pub use bindings::audit_forwarder::filter::types::{
    BatchResult, Event, Field, Needs, Span, Verdict,
};

/// The WIT package this host implements (guests of any 0.2.x load).
pub const WIT_PACKAGE: &str = "audit-forwarder:filter@0.2.0";
/// Epoch tick.
pub const TICK: Duration = Duration::from_millis(5);
/// How often a filter's file is checked for a new version.
pub const RELOAD_CHECK: Duration = Duration::from_millis(500);

/// Why a filter could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("filter {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("filter {path}: not a valid WebAssembly component: {msg}")]
    Compile { path: PathBuf, msg: String },
    #[error(
        "filter {path}: built against {found}; this audit-forwarder implements {WIT_PACKAGE} (rebuild the filter against filters-wit/)"
    )]
    Version { path: PathBuf, found: String },
    #[error("filter {path}: cannot instantiate: {msg}")]
    Instantiate { path: PathBuf, msg: String },
    #[error("filter {path}: configure() rejected the config: {msg}")]
    Configure { path: PathBuf, msg: String },
}

/// Why one call failed. The caller applies `on_error`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("did not return within {0:?} (epoch deadline)")]
    Timeout(Duration),
    #[error("hit the memory limit of {0} bytes")]
    Memory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {got} verdicts for {want} events")]
    WrongCount { got: usize, want: usize },
    #[error("could not be instantiated again: {0}")]
    Reinstantiate(String),
}

impl CallError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Memory(_) => "memory",
            CallError::Trap(_) => "trap",
            CallError::WrongCount { .. } => "verdict_count",
            CallError::Reinstantiate(_) => "instantiate",
        }
    }
}

/// Everything needed to load one filter.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names the filter in logs and metrics (the file stem by default).
    pub name: String,
    pub path: PathBuf,
    /// The `config` table, as a JSON object.
    pub config: String,
    /// Deadline of one `filter-batch` call.
    pub timeout: Duration,
    /// Linear memory cap of the instance.
    pub max_memory: usize,
    /// Where compiled components are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// The process-wide engine, with its epoch ticker.
pub fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let e = match wasmtime::Engine::new(&c) {
            Ok(e) => e,
            // The configuration is fixed and valid; fall back to defaults
            // with interruption rather than aborting.
            Err(err) => {
                error!(error = %err, "wasmtime engine configuration rejected; using defaults");
                let mut c = wasmtime::Config::new();
                c.epoch_interruption(true);
                wasmtime::Engine::new(&c).unwrap_or_default()
            }
        };
        let weak = e.weak();
        let _ = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(TICK);
                }
            });
        e
    })
}

fn linker() -> Result<&'static Linker<State>, String> {
    static LINKER: OnceLock<Result<Linker<State>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| {
            let mut l = Linker::<State>::new(engine());
            // Language runtimes (Python, JavaScript) import WASI; what they
            // can reach is decided by the WasiCtx (nothing but clocks,
            // random and the log).
            wasmtime_wasi::p2::add_to_linker_sync(&mut l).map_err(|e| e.to_string())?;
            bindings::AuditFilter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
                &mut l,
                |s| s,
            )
            .map_err(|e| e.to_string())?;
            Ok(l)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Per-instance host state.
struct State {
    name: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::audit_forwarder::filter::types::Host for State {}

impl bindings::audit_forwarder::filter::host::Host for State {
    fn log(&mut self, level: LogLevel, message: String) {
        let m = stdio::clip(&message, 4096);
        let f = &*self.name;
        match level {
            LogLevel::Debug => debug!(filter = f, "{m}"),
            LogLevel::Info => info!(filter = f, "{m}"),
            LogLevel::Warn => warn!(filter = f, "{m}"),
            LogLevel::Error => error!(filter = f, "{m}"),
        }
    }
}

/// Caps linear memory and remembers that the cap was hit.
struct Limiter {
    max: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A compiled component and where it came from.
struct Compiled {
    component: Component,
    stamp: Stamp,
    sha256: String,
}

/// What identifies a version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// The executable that compiles components (this program), when known.
static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Compile components that are not cached yet in a child process running
/// `exe filter compile`: compiling touches ~11 MB (cranelift's code and
/// heap) that a process keeps resident afterwards. Set by `main`; without
/// it (or if the child fails) components are compiled in-process.
pub fn compile_with(exe: PathBuf) {
    let _ = COMPILER.set(exe);
}

/// `filter compile`: compiles the component at `wasm` (`-`: standard
/// input) for this build's engine into `out` (written atomically).
pub fn compile_to(wasm: &Path, out: &Path) -> Result<(), LoadError> {
    let read = if wasm == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map(|_| b)
    } else {
        std::fs::read(wasm)
    };
    let bytes = read.map_err(|source| LoadError::Read {
        path: wasm.to_path_buf(),
        source,
    })?;
    let compiled = precompile(wasm, &bytes)?;
    write_cache(out, &compiled).map_err(|source| LoadError::Read {
        path: out.to_path_buf(),
        source,
    })
}

/// Compiles a component's bytes for this build's engine.
fn precompile(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    engine()
        .precompile_component(bytes)
        .map_err(|err| LoadError::Compile {
            path: path.to_path_buf(),
            msg: format!("{err:#}"),
        })
}

/// Runs `filter compile` in a child on `bytes` (exactly what was hashed
/// for the cache name, sent on its stdin: the file may be replaced
/// meanwhile); true if it wrote `out`.
fn compile_in_child(exe: &Path, wasm: &Path, bytes: &[u8], out: &Path) -> bool {
    use std::io::Write;
    use std::process::Stdio;
    let r = std::process::Command::new(exe)
        .args([
            "--log-level",
            "warn",
            "filter",
            "compile",
            "--wasm",
            "-",
            "--out",
        ])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            // The child reads all of stdin before it writes anything.
            let sent = child.stdin.take().map(|mut i| i.write_all(bytes));
            let o = child.wait_with_output()?;
            sent.transpose()?;
            Ok(o)
        });
    match r {
        Ok(o) if o.status.success() && out.is_file() => true,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            warn!(path = %wasm.display(), status = %o.status, error = %err.trim(),
                "compiling the filter in a child process failed; compiling in-process");
            false
        }
        Err(err) => {
            warn!(path = %wasm.display(), error = %err,
                "cannot start a child process to compile the filter; compiling in-process");
            false
        }
    }
}

/// Reads, checks and compiles (or loads from the cache) a component.
fn compile(spec: &Spec) -> Result<Compiled, LoadError> {
    let path = &spec.path;
    let st = stamp(path);
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let e = engine();
    let cache = spec.cache_dir.as_ref().map(|d| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        e.precompile_compatibility_hash().hash(&mut h);
        d.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    });
    let t0 = Instant::now();
    let mut component = None;
    let mut source = "cache";
    if let (Some(c), Some(exe)) = (&cache, COMPILER.get())
        && !c.is_file()
        && compile_in_child(exe, path, &bytes, c)
    {
        source = "child";
    }
    if let Some(c) = cache.as_ref().filter(|c| c.is_file()) {
        // SAFETY: the file was written by `precompile_component` of an
        // engine with the same compatibility hash (it is in the name), into
        // the state directory that only this process writes.
        match unsafe { Component::deserialize_file(e, c) } {
            Ok(comp) => component = Some(comp),
            Err(err) => {
                warn!(cache = %c.display(), error = %err, "cached compiled filter unusable; compiling again")
            }
        }
    }
    let component = match component {
        Some(c) => c,
        None => {
            source = "in-process";
            let compiled = precompile(path, &bytes)?;
            if let Some(c) = &cache
                && let Err(err) = write_cache(c, &compiled)
            {
                warn!(cache = %c.display(), error = %err, "cannot cache the compiled filter");
            }
            // SAFETY: produced just now by this engine.
            unsafe { Component::deserialize(e, &compiled) }.map_err(|err| LoadError::Compile {
                path: path.clone(),
                msg: format!("{err:#}"),
            })?
        }
    };
    check_version(path, &component)?;
    info!(filter = %spec.name, path = %path.display(), sha256 = %&sha256[..12], compiled = source,
        ms = t0.elapsed().as_millis() as u64, "filter component loaded");
    Ok(Compiled {
        component,
        stamp: st.unwrap_or(Stamp {
            mtime: None,
            len: 0,
            ino: 0,
        }),
        sha256,
    })
}

fn write_cache(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut t = tempfile::NamedTempFile::new_in(dir)?;
    t.write_all(bytes)?;
    t.as_file().sync_all()?;
    t.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A component exporting another version of the filter interface gets an
/// error naming both versions rather than a linker message.
fn check_version(path: &Path, c: &Component) -> Result<(), LoadError> {
    let ty = c.component_type();
    let exports: Vec<String> = ty.exports(engine()).map(|(n, _)| n.to_string()).collect();
    let ours = "audit-forwarder:filter/filter@";
    if exports
        .iter()
        .any(|n| n.strip_prefix(ours).is_some_and(|v| v.starts_with("0.2.")))
    {
        return Ok(());
    }
    let found = exports
        .iter()
        .find(|n| n.starts_with(ours))
        .map(|n| n.replacen("/filter@", "@", 1))
        .unwrap_or_else(|| {
            format!(
                "no {ours}… export (exports: {})",
                if exports.is_empty() {
                    "none".to_string()
                } else {
                    exports.join(", ")
                }
            )
        });
    Err(LoadError::Version {
        path: path.to_path_buf(),
        found,
    })
}

/// A live instance.
struct Instance {
    store: Store<State>,
    /// `filter-batch`, type-checked against [`abi::Batch`] (which lowers
    /// events in bulk) at instantiation.
    filter_batch: wasmtime::component::Func,
    /// What `configure` said the filter reads.
    needs: Needs,
}

fn instantiate(spec: &Spec, c: &Component) -> Result<Instance, LoadError> {
    let linker = linker().map_err(|msg| LoadError::Instantiate {
        path: spec.path.clone(),
        msg,
    })?;
    let name: Arc<str> = spec.name.as_str().into();
    let wasi = WasiCtx::builder()
        .stdout(stdio::LogOutput::new(name.clone(), "stdout"))
        .stderr(stdio::LogOutput::new(name.clone(), "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let mut store = Store::new(
        engine(),
        State {
            name,
            wasi,
            table: ResourceTable::new(),
            limits: Limiter {
                max: spec.max_memory,
                hit: false,
            },
        },
    );
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    // Instantiation runs the guest's start code (language runtimes).
    store.set_epoch_deadline(ticks(spec.timeout.max(Duration::from_secs(10))));
    let err = |e: wasmtime::Error| LoadError::Instantiate {
        path: spec.path.clone(),
        msg: format!("{e:#}"),
    };
    let bindings = bindings::AuditFilter::instantiate(&mut store, c, linker).map_err(err)?;
    store.set_epoch_deadline(ticks(spec.timeout.max(Duration::from_secs(10))));
    match bindings
        .audit_forwarder_filter_filter()
        .call_configure(&mut store, &spec.config)
    {
        Ok(Ok(needs)) => {
            let filter_batch = *bindings
                .audit_forwarder_filter_filter()
                .func_filter_batch()
                .func();
            filter_batch
                .typed::<(Batch<'static>,), (BatchResult,)>(&store)
                .map_err(|e| LoadError::Instantiate {
                    path: spec.path.clone(),
                    msg: format!("{e:#}"),
                })?;
            Ok(Instance {
                store,
                filter_batch,
                needs,
            })
        }
        Ok(Err(msg)) => Err(LoadError::Configure {
            path: spec.path.clone(),
            msg,
        }),
        Err(e) => Err(LoadError::Configure {
            path: spec.path.clone(),
            msg: format!("trapped: {e:#}"),
        }),
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

/// One loaded filter: its compiled component and (lazily) an instance.
pub struct WasmFilter {
    spec: Spec,
    compiled: Compiled,
    instance: Option<Instance>,
    /// What the last configured instance reads.
    needs: Needs,
    last_check: Instant,
}

impl WasmFilter {
    /// Compiles (or loads from the cache), instantiates and configures.
    pub fn load(spec: Spec) -> Result<Self, LoadError> {
        let compiled = compile(&spec)?;
        let instance = instantiate(&spec, &compiled.component)?;
        Ok(WasmFilter {
            spec,
            compiled,
            needs: instance.needs,
            instance: Some(instance),
            last_check: Instant::now(),
        })
    }

    /// Whether the filter reads `event.json` (as its `configure` said).
    pub fn needs_json(&self) -> bool {
        self.needs.contains(Needs::JSON)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn sha256(&self) -> &str {
        &self.compiled.sha256
    }

    /// Runs one batch. Exactly one verdict per event, or an error.
    pub fn call(&mut self, batch: Batch<'_>) -> Result<BatchResult, CallError> {
        let want = batch.events.len();
        let mut inst = match self.instance.take() {
            Some(i) => i,
            None => {
                let i = instantiate(&self.spec, &self.compiled.component)
                    .map_err(|e| CallError::Reinstantiate(e.to_string()))?;
                self.needs = i.needs;
                i
            }
        };
        inst.store.data_mut().limits.hit = false;
        inst.store.set_epoch_deadline(ticks(self.spec.timeout));
        // SAFETY: the signature was checked by `typed` at instantiation;
        // lifetimes do not change it.
        let f = unsafe {
            wasmtime::component::TypedFunc::<(Batch<'_>,), (BatchResult,)>::new_unchecked(
                inst.filter_batch,
            )
        };
        let r = f.call(&mut inst.store, (batch,)).map(|(r,)| r);
        match r {
            Ok(v) if v.verdicts.len() == want => {
                self.instance = Some(inst);
                Ok(v)
            }
            Ok(v) => {
                // The instance is fine; its answer is not.
                self.instance = Some(inst);
                Err(CallError::WrongCount {
                    got: v.verdicts.len(),
                    want,
                })
            }
            Err(e) => {
                // The instance is dropped: the next call gets a fresh one.
                let hit = inst.store.data().limits.hit;
                Err(if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    CallError::Timeout(self.spec.timeout)
                } else if hit {
                    CallError::Memory(self.spec.max_memory)
                } else {
                    CallError::Trap(stdio::clip(&format!("{e:#}"), 1024))
                })
            }
        }
    }

    /// Swaps in a new version of the file if it changed (checked at most
    /// every [`RELOAD_CHECK`]). `Some(Ok(()))`: reloaded; `Some(Err)`:
    /// rejected, the old version keeps running; `None`: unchanged.
    pub fn maybe_reload(&mut self) -> Option<Result<(), LoadError>> {
        if self.last_check.elapsed() < RELOAD_CHECK {
            return None;
        }
        self.last_check = Instant::now();
        let now = stamp(&self.spec.path)?;
        if now == self.compiled.stamp {
            return None;
        }
        let r = compile(&self.spec).and_then(|c| {
            if c.sha256 == self.compiled.sha256 {
                // Touched, same content.
                self.compiled.stamp = c.stamp;
                return Ok(None);
            }
            let i = instantiate(&self.spec, &c.component)?;
            Ok(Some((c, i)))
        });
        match r {
            Ok(None) => None,
            Ok(Some((c, i))) => {
                info!(filter = %self.spec.name, old = %&self.compiled.sha256[..12], new = %&c.sha256[..12],
                    "filter reloaded: the next batch uses the new version");
                self.compiled = c;
                self.needs = i.needs;
                self.instance = Some(i);
                Some(Ok(()))
            }
            Err(e) => {
                // Do not retry the same broken file until it changes again.
                self.compiled.stamp = now;
                Some(Err(e))
            }
        }
    }
}
