//! Work off the UI thread: analyses, bundle loading and file dialogs run on their own threads
//! (in the browser, which has none, as futures on the page's event loop) and report through
//! channels that the UI polls once per frame (and that wake it with `request_repaint`).
//! Nothing here blocks the UI thread.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use web_time::Instant;

use seedscope_analysis::job::{AnalysisRequest, JobEnd, JobEvent, run_analysis};

use crate::AppError;
use crate::data::Explorer;

/// `Send` natively, where a task's body moves to a thread; nothing in the browser, where it
/// stays on the page's one thread (and GPU handles are not `Send`).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// `Send` natively, where a task's body moves to a thread; nothing in the browser, where it
/// stays on the page's one thread (and GPU handles are not `Send`).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

/// Progress as a bar shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressInfo {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// Units per second since the start.
    pub rate: f64,
    /// What the units are ("tokens").
    pub unit: &'static str,
    /// A short note (pass, memory).
    pub note: String,
}

impl ProgressInfo {
    /// `done` of `total` tokens, at the rate since `started`.
    pub fn tokens(done: u64, total: u64, started: Instant, note: String) -> Self {
        Self {
            done,
            total,
            rate: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            unit: "tokens",
            note,
        }
    }

    /// Fraction done.
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            (self.done as f64 / self.total as f64) as f32
        }
    }

    /// Seconds left at the current rate.
    pub fn eta_secs(&self) -> Option<f64> {
        (self.rate > 0.0).then(|| (self.total.saturating_sub(self.done)) as f64 / self.rate)
    }
}

enum Msg<T> {
    Log(String),
    Progress(ProgressInfo),
    Done(Result<T, AppError>),
}

/// A running piece of work with a result of type `T`.
pub struct Task<T> {
    /// What it is, for the status bar.
    pub label: String,
    rx: Receiver<Msg<T>>,
    cancel: Arc<AtomicBool>,
    /// The latest progress.
    pub progress: Option<ProgressInfo>,
    /// Log lines so far.
    pub log: Vec<String>,
    /// When it started.
    pub started: Instant,
}

/// What a task's body gets: a way to report and the cancel flag.
pub struct Reporter<T> {
    tx: Sender<Msg<T>>,
    ctx: Option<egui::Context>,
    /// Set when the user cancels.
    pub cancel: Arc<AtomicBool>,
}

impl<T> Clone for Reporter<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            ctx: self.ctx.clone(),
            cancel: self.cancel.clone(),
        }
    }
}

impl<T> Reporter<T> {
    /// Add a log line.
    pub fn log(&self, line: impl Into<String>) {
        let _ = self.tx.send(Msg::Log(line.into()));
        self.wake();
    }

    /// Report progress.
    pub fn progress(&self, p: ProgressInfo) {
        let _ = self.tx.send(Msg::Progress(p));
        self.wake();
    }

    /// Whether the user cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        if let Some(ctx) = &self.ctx {
            ctx.request_repaint();
        }
    }
}

/// How a poll of a task came out.
pub enum Poll<T> {
    /// Still running.
    Running,
    /// Finished.
    Done(Result<T, AppError>),
}

impl<T: Send + 'static> Task<T> {
    /// A task, its reporter, not yet running.
    fn new(label: String, ctx: Option<egui::Context>) -> (Self, Reporter<T>) {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let reporter = Reporter {
            tx,
            ctx,
            cancel: cancel.clone(),
        };
        let task = Self {
            label,
            rx,
            cancel,
            progress: None,
            log: Vec::new(),
            started: Instant::now(),
        };
        (task, reporter)
    }

    /// Run the future `body` makes: natively on a new thread that blocks on it, in the browser
    /// on the page's event loop (so it must yield, e.g. await GPU reads, to keep the page
    /// responsive). `ctx` is woken on every report.
    pub fn spawn_async<F, Fut>(
        label: impl Into<String>,
        ctx: Option<egui::Context>,
        body: F,
    ) -> Self
    where
        F: FnOnce(Reporter<T>) -> Fut + MaybeSend + 'static,
        Fut: Future<Output = Result<T, AppError>> + 'static,
    {
        #[cfg(not(target_arch = "wasm32"))]
        {
            Self::spawn(label, ctx, move |rep| pollster::block_on(body(rep.clone())))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let (task, reporter) = Self::new(label.into(), ctx);
            wasm_bindgen_futures::spawn_local(async move {
                let result = body(reporter.clone()).await;
                let _ = reporter.tx.send(Msg::Done(result));
                reporter.wake();
            });
            task
        }
    }

    /// Run `body` on a new thread (in the browser: on the event loop, after this frame); `ctx`
    /// is woken on every report.
    #[cfg(target_arch = "wasm32")]
    pub fn spawn(
        label: impl Into<String>,
        ctx: Option<egui::Context>,
        body: impl FnOnce(&Reporter<T>) -> Result<T, AppError> + Send + 'static,
    ) -> Self {
        Self::spawn_async(label, ctx, move |rep| async move { body(&rep) })
    }

    /// Run `body` on a new thread; `ctx` is woken on every report.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn spawn(
        label: impl Into<String>,
        ctx: Option<egui::Context>,
        body: impl FnOnce(&Reporter<T>) -> Result<T, AppError> + Send + 'static,
    ) -> Self {
        let label = label.into();
        let (task, reporter) = Self::new(label.clone(), ctx);
        let spawned = std::thread::Builder::new().name(label).spawn(move || {
            // A panic in the body (a bug) reaches the UI as an error, not a dead channel.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&reporter)))
                .unwrap_or_else(|p| {
                    Err(AppError::Other(
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "the task failed".into()),
                    ))
                });
            let _ = reporter.tx.send(Msg::Done(result));
            reporter.wake();
        });
        if let Err(e) = spawned {
            // Report through the same channel shape: a task that is already done.
            let (tx, rx) = channel();
            let _ = tx.send(Msg::Done(Err(AppError::Other(format!(
                "could not start a thread: {e}"
            )))));
            return Self { rx, ..task };
        }
        task
    }

    /// Take what arrived; `Done` once, at the end.
    pub fn poll(&mut self) -> Poll<T> {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Log(l) => self.log.push(l),
                Msg::Progress(p) => self.progress = Some(p),
                Msg::Done(r) => return Poll::Done(r),
            }
        }
        Poll::Running
    }

    /// Ask the task to stop (it stops at its next check).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether cancel was asked.
    pub fn is_cancelling(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// The result of an analysis task: the bundle opened, or where its checkpoint is.
pub enum AnalysisDone {
    /// Written and opened.
    Opened(Box<Explorer>),
    /// Cancelled with a checkpoint; starting the same analysis again resumes.
    Interrupted(PathBuf),
    /// Cancelled where there are no checkpoints (the browser).
    Cancelled,
}

/// Forwards an analysis job's events to a task's reporter: log lines, and progress with the
/// rate since the first report (a resumed run's earlier tokens do not count).
pub struct JobForwarder<'a, T> {
    rep: &'a Reporter<T>,
    started: Instant,
    first: Option<u64>,
    pass: Option<usize>,
    timing_logged: Instant,
}

impl<'a, T> JobForwarder<'a, T> {
    /// Start forwarding to `rep`.
    pub fn new(rep: &'a Reporter<T>) -> Self {
        Self {
            rep,
            started: Instant::now(),
            first: None,
            pass: None,
            timing_logged: Instant::now(),
        }
    }

    /// Forward one event.
    pub fn event(&mut self, e: JobEvent) {
        match e {
            JobEvent::Log(l) => self.rep.log(l),
            JobEvent::Planned(_) => {}
            JobEvent::Progress(p) => {
                let (total, done) = (p.total(), p.done());
                let base = *self.first.get_or_insert(done - p.tokens);
                if self.pass != Some(p.pass) {
                    self.pass = Some(p.pass);
                    self.rep.log(format!(
                        "pass {}/{} after {:.1} s",
                        p.pass + 1,
                        p.passes,
                        self.started.elapsed().as_secs_f64()
                    ));
                }
                // Where the time goes, every minute and at the end of a pass.
                if self.timing_logged.elapsed().as_secs() >= 60 || p.tokens == p.tokens_per_pass {
                    self.timing_logged = Instant::now();
                    let t = p.timing;
                    self.rep.log(format!(
                        "pass {}: {} of {} tokens; forward {:.1} s, statistics {:.1} s, \
                         accumulation {:.1} s, waiting for the device {:.1} s",
                        p.pass + 1,
                        p.tokens,
                        p.tokens_per_pass,
                        t.forward,
                        t.statistics,
                        t.accumulate,
                        t.wait
                    ));
                }
                self.rep.progress(ProgressInfo {
                    done,
                    total,
                    rate: (done - base) as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
                    unit: "tokens",
                    note: format!(
                        "pass {}/{}, {:.0} MiB",
                        p.pass + 1,
                        p.passes,
                        p.memory_bytes as f64 / (1 << 20) as f64
                    ),
                });
            }
        }
    }
}

/// Run an analysis and open its bundle, on a thread.
pub fn spawn_analysis(request: AnalysisRequest, ctx: Option<egui::Context>) -> Task<AnalysisDone> {
    let label = format!("analysing into {}", request.out.display());
    Task::spawn(label, ctx, move |rep| {
        let mut forward = JobForwarder::new(rep);
        let end = run_analysis(&request, rep.cancel.clone(), |e| forward.event(e))?;
        match end {
            JobEnd::Written(dir) => Ok(AnalysisDone::Opened(Box::new(Explorer::open(&dir)?))),
            JobEnd::Interrupted(c) => Ok(AnalysisDone::Interrupted(c)),
        }
    })
}

/// Open a bundle on a thread.
pub fn spawn_open(dir: PathBuf, ctx: Option<egui::Context>) -> Task<Option<Box<Explorer>>> {
    Task::spawn(format!("opening {}", dir.display()), ctx, move |_| {
        Explorer::open(&dir).map(|ex| Some(Box::new(ex)))
    })
}

/// What a file dialog should pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A folder (bundle or model directory).
    Folder,
    /// A file.
    File,
    /// A file to save, with this default name.
    Save(&'static str),
}
