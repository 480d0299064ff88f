//! `feed-hub`: Sprout's feed hub demo.
//!
//! - `feed-hub serve` runs the local feed server (N RSS feeds on 127.0.0.1, each answered
//!   after a delay, 100 ms by default).
//! - `feed-hub run` starts that server in-process, enqueues one `fetch_feed` job per
//!   feed on a broker, waits for every result and reports feeds per second from the
//!   first fetch the server saw to the last result the broker holds. It talks to a
//!   running `sprout worker` on the same broker, or starts one (`--spawn-worker`).
//!
//! See README.md for the story and the numbers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sprout::client::Client;
use sprout::model::Job;
use sprout::model::{ResultRecord, State};

mod server;

use server::ServerOptions;

/// mimalloc, as in the `sprout` binary: the feed server allocates per request, and the
/// run's CPU (worker and feed server together) is what the feed hub measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sprout's feed hub demo: a local feed server and a fetch_feed load generator.
#[derive(Debug, Parser)]
#[command(name = "feed-hub", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve feeds until interrupted.
    Serve(ServeArgs),
    /// Serve feeds, enqueue one fetch_feed job per feed, wait, report feeds/s.
    Run(RunArgs),
}

/// The feed server's options.
#[derive(Debug, Args, Clone)]
struct FeedArgs {
    /// Number of feeds (`/feed/0.xml` … `/feed/<N-1>.xml`).
    #[arg(short = 'n', long, default_value_t = 1000)]
    feeds: u64,
    /// Delay before each answer, in milliseconds (the "remote site" latency).
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
    /// Items per feed.
    #[arg(long, default_value_t = 20)]
    items: u32,
}

impl FeedArgs {
    fn options(&self) -> ServerOptions {
        ServerOptions {
            feeds: self.feeds,
            delay: Duration::from_millis(self.delay_ms),
            items: self.items,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    #[command(flatten)]
    feeds: FeedArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    feeds: FeedArgs,
    /// Broker URL shared with the worker. Default: `sqlite:sprout.db`, or a fresh
    /// temporary file with `--spawn-worker`.
    #[arg(short, long, env = "SPROUT_BROKER")]
    broker: Option<String>,
    /// Start `sprout worker` from this binary for the run (and stop it after).
    #[arg(long)]
    spawn_worker: Option<PathBuf>,
    /// Pool of the spawned worker.
    #[arg(short = 'P', long, default_value = "async")]
    pool: String,
    /// Concurrency of the spawned worker.
    #[arg(short = 'c', long, default_value_t = 1000)]
    concurrency: usize,
    /// Task directory of the spawned worker.
    #[arg(long, default_value = "target/tasks")]
    tasks: PathBuf,
    /// Task name to enqueue.
    #[arg(long, default_value = "fetch_feed")]
    task: String,
    /// Feeds fetched (from a separate server, untimed) before the measured run, so worker
    /// start-up and cold instance slots are not in the figure. Default: the concurrency,
    /// one full wave, so every instance slot the run uses has run a job before (as in a
    /// worker that has been up a while: a slot's first job also pays its page faults,
    /// ~60 µs per slot here). 0 = measure from cold.
    #[arg(long)]
    warmup: Option<u64>,
    /// An extra argument for the worker started by `--spawn-worker` (repeatable), e.g.
    /// `--worker-arg=--prewarm=fetch_feed`.
    #[arg(long, allow_hyphen_values = true)]
    worker_arg: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Serve(args) => serve(args).await,
            Cmd::Run(args) => run(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = server::start(args.listen, args.feeds.options()).await?;
    eprintln!(
        "serving {} feeds on http://{}/feed/<0..{}>.xml with a {} ms delay (Ctrl-C stops)",
        args.feeds.feeds, server.addr, args.feeds.feeds, args.feeds.delay_ms
    );
    tokio::signal::ctrl_c().await?;
    eprintln!("served {} requests", server.stats.requests());
    Ok(())
}

/// Kills the spawned worker and removes the temporary broker on every exit path.
struct Spawned {
    child: Option<Child>,
    temp_db: Option<PathBuf>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(db) = &self.temp_db {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let n = args.feeds.feeds;
    anyhow::ensure!(n > 0, "--feeds must be at least 1");
    let mut spawned = Spawned {
        child: None,
        temp_db: None,
    };
    let broker = match (&args.broker, &args.spawn_worker) {
        (Some(url), _) => url.clone(),
        (None, Some(_)) => {
            let db = std::env::temp_dir().join(format!("feed-hub-{}.db", std::process::id()));
            spawned.temp_db = Some(db.clone());
            format!("sqlite:{}", db.display())
        }
        (None, None) => sprout::connect::DEFAULT_BROKER_URL.to_string(),
    };
    let client = Client::connect(&broker)
        .await
        .with_context(|| format!("cannot open broker {broker}"))?;
    if let Some(bin) = &args.spawn_worker {
        let child = Command::new(bin)
            .args([
                "worker",
                "-P",
                &args.pool,
                "-c",
                &args.concurrency.to_string(),
            ])
            .arg("--tasks")
            .arg(&args.tasks)
            .args(["--broker", &broker])
            .args(&args.worker_arg)
            .env_remove("SPROUT_LOG")
            .env("SPROUT_LOG", "warn")
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        spawned.child = Some(child);
    }
    let warmup = args.warmup.unwrap_or(args.concurrency as u64);
    if warmup > 0 {
        let warm = server::start("127.0.0.1:0".parse()?, args.feeds.options()).await?;
        let batch = Batch::send(&client, &warm, warmup, &args.task).await?;
        batch.wait(&client, &mut spawned, &args, &broker).await?;
    }
    let server = server::start("127.0.0.1:0".parse()?, args.feeds.options()).await?;
    if !args.json {
        eprintln!(
            "feed server on http://{}: {n} feeds, {} ms delay; broker {broker}",
            server.addr, args.feeds.delay_ms
        );
    }
    let sent = Instant::now();
    let batch = Batch::send(&client, &server, n, &args.task).await?;
    let enqueue_secs = sent.elapsed().as_secs_f64();
    let Outcomes {
        ok,
        failed,
        first_error,
        last_stored,
        ..
    } = batch.wait(&client, &mut spawned, &args, &broker).await?;
    let done = Instant::now();
    let (first_fetch, first_fetch_wall) = server
        .stats
        .first_request()
        .context("the feed server saw no request")?;
    // The same span, ending when the last result was stored rather than read back.
    let stored_secs = last_stored
        .and_then(|at| (at - first_fetch_wall).to_std().ok())
        .map(|d| d.as_secs_f64());
    let secs = done.duration_since(first_fetch).as_secs_f64();
    let rate = n as f64 / secs.max(1e-9);
    let limit = args.concurrency as f64 / (args.feeds.delay_ms.max(1) as f64 / 1000.0);
    let pickup = first_fetch.duration_since(sent).as_secs_f64();
    // Where the time went: requests arriving (jobs starting and connecting) versus
    // the last request's delay plus reading the results back.
    let last_fetch = server.stats.last_request().unwrap_or(first_fetch);
    let arrivals = last_fetch.duration_since(first_fetch).as_secs_f64();
    let tail = done.duration_since(last_fetch).as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "feeds": n,
                "delay_ms": args.feeds.delay_ms,
                "concurrency": args.concurrency,
                "pool": args.pool,
                "ok": ok,
                "failed": failed,
                "seconds": secs,
                "feeds_per_second": rate,
                "limit_per_second": limit,
                "enqueue_seconds": enqueue_secs,
                "first_fetch_after_seconds": pickup,
                "requests_arrived_over_seconds": arrivals,
                "last_request_to_done_seconds": tail,
                "first_fetch_to_last_stored_seconds": stored_secs,
                "server_requests": server.stats.requests(),
                "server_connections": server.stats.connections(),
                "first_error": first_error,
            })
        );
    } else {
        eprintln!(
            "enqueued {n} jobs in {enqueue_secs:.3} s; first fetch {pickup:.3} s after; \
             {} requests on {} connections, arriving over {arrivals:.3} s; \
             last request -> last result {tail:.3} s",
            server.stats.requests(),
            server.stats.connections()
        );
        println!(
            "{n} feeds: first fetch -> last result {secs:.3} s = {rate:.0} feeds/s \
             ({ok} ok, {failed} failed); limit at -c {} and {} ms: {limit:.0} feeds/s",
            args.concurrency, args.feeds.delay_ms
        );
        if let Some(e) = first_error {
            eprintln!("first failure: {e}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {n} fetches failed");
    }
    Ok(())
}

/// One fetch_feed job per feed of a server, enqueued.
struct Batch {
    jobs: Vec<Job>,
}

/// How a batch ended.
#[derive(Default)]
struct Outcomes {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    /// When the newest result was stored (the worker's own timestamp).
    last_stored: Option<chrono::DateTime<chrono::Utc>>,
    /// Some results were still unfinished at the deadline.
    timed_out: bool,
}

impl Outcomes {
    /// Counts one finished job.
    fn add(&mut self, record: ResultRecord) {
        self.last_stored = self.last_stored.max(Some(record.updated_at));
        if record.state == State::Success {
            self.ok += 1;
        } else {
            self.failed += 1;
            self.first_error.get_or_insert_with(|| {
                record
                    .error
                    .map(|e| format!("{}: {}", e.kind, e.message))
                    .unwrap_or_default()
            });
        }
    }

    /// Counts one job whose stored result cannot be read back, as failed.
    fn unreadable(&mut self, reason: String) {
        self.failed += 1;
        self.first_error.get_or_insert(reason);
    }
}

impl Batch {
    async fn send(
        client: &Client,
        server: &server::FeedServer,
        n: u64,
        task: &str,
    ) -> anyhow::Result<Batch> {
        let jobs: Vec<Job> = (0..n)
            .map(|i| Job::new(task, vec![server.feed_url(i).into()], Default::default()))
            .collect();
        for chunk in jobs.chunks(1000) {
            client.send_many(chunk).await?;
        }
        Ok(Batch { jobs })
    }

    /// Reads every result back (`Client::wait_many`: oldest-first windows, one round
    /// trip per window), watching that the spawned worker stays up.
    async fn wait(
        &self,
        client: &Client,
        spawned: &mut Spawned,
        args: &RunArgs,
        broker: &str,
    ) -> anyhow::Result<Outcomes> {
        let ids: Vec<String> = self.jobs.iter().map(|job| job.id.clone()).collect();
        let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
        let read = client.wait_many(&ids, timeout);
        tokio::pin!(read);
        let records = loop {
            tokio::select! {
                records = &mut read => break records?,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(child) = spawned.child.as_mut()
                        && let Some(status) = child.try_wait()?
                    {
                        bail!("the worker exited early: {status}");
                    }
                }
            }
        };
        let mut out = Outcomes::default();
        for record in records {
            match record {
                Ok(Some(record)) if record.state.is_terminal() => out.add(record),
                Ok(_) => out.timed_out = true,
                Err(e) => out.unreadable(e.to_string()),
            }
        }
        if out.timed_out {
            bail!(
                "timed out after {:.0} s with {} of {} results (is a worker consuming {broker}?)",
                args.timeout,
                out.ok + out.failed,
                self.jobs.len()
            );
        }
        Ok(out)
    }
}
