//! The processes a scenario runs and breaks: `confab serve` (on a fresh SQLite data directory
//! or a fresh PostgreSQL database), a private PostgreSQL instance that can be stopped without
//! disturbing anyone else's, and a private Redis.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which database a scenario runs `confab` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Db {
    /// The embedded default: a SQLite file in the data directory.
    Sqlite,
    /// PostgreSQL: a fresh database on `--postgres-url`'s server (or on a private instance).
    Postgres,
}

/// A free TCP port of 127.0.0.1 (free when asked: good enough for a tool run by hand).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh directory under the system's temporary directory, removed on drop unless
/// `RELIABILITY_KEEP` is set (to read the servers' logs afterwards).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "confab-reliability-{label}-{}",
            uuid::Uuid::now_v7()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("RELIABILITY_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `cmd`, failing with its output when it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends SIGTERM to `pid`.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// A fresh PostgreSQL database for one run, dropped at the end.
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Creates a database on the server of `admin_url` (a URL of an existing database).
    pub fn create(admin_url: &str) -> Result<PgDatabase> {
        let name = format!("reliability_{}", uuid::Uuid::now_v7().simple());
        run(Command::new("psql").arg(admin_url).args([
            "-qAt",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ]))
        .context("creating a database (is PostgreSQL running, and psql installed?)")?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            name,
        })
    }

    /// The new database's URL.
    pub fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => format!("{}/{}", self.admin_url, self.name),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args([
                "-qAt",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A `confab serve` process on a port of its own, restartable on the same data.
pub struct Confab {
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    pub port: u16,
    child: Option<Child>,
}

impl Confab {
    /// A server on `dir` (its data directory and log) with `env` besides the defaults every
    /// scenario wants: rate limits off, a fixed encryption key, migrations at start-up.
    pub fn new(bin: &Path, dir: &Path, env: &[(&str, String)]) -> Result<Confab> {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it first with `cargo build --release --bin confab`, \
                 or pass --confab PATH",
                bin.display()
            );
        }
        let mut all: Vec<(String, String)> = vec![
            ("CONFAB_RATE_LIMIT_ENABLED".into(), "false".into()),
            (
                "CONFAB_ENCRYPTION_KEY".into(),
                "cmVsaWFiaWxpdHktc3VpdGUtZW5jcnlwdGlvbi1rZXk=".into(),
            ),
            ("CONFAB_AUTO_MIGRATE".into(), "true".into()),
            (
                "RUST_LOG".into(),
                std::env::var("RELIABILITY_RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        for (k, v) in env {
            all.retain(|(name, _)| name != k);
            all.push(((*k).to_owned(), v.clone()));
        }
        Ok(Confab {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            env: all,
            port: free_port()?,
            child: None,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--data-dir").arg(&self.dir);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn log(&self) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))?)
    }

    /// Starts `serve` and waits until `/readyz` answers 200.
    pub async fn start(&mut self) -> Result<()> {
        let log = self.log()?;
        let child = self
            .command()
            .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting confab serve")?;
        self.child = Some(child);
        self.ready(Duration::from_secs(120)).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self, within: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "confab serve exited ({status}) before it was ready; see {}",
                    self.dir.join("serve.log").display()
                );
            }
            if let Ok(r) = http
                .get(format!("{}/readyz", self.base()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "confab serve was not ready within {within:?}; see {}",
                    self.dir.join("serve.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server with SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id());
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Runs another `confab` subcommand on the same data (`projections rebuild`, ...).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run(self.command().args(args))
    }
}

impl Drop for Confab {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`): the newest under
/// /usr/lib/postgresql, or `$PG_BIN`.
fn pg_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(dir.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: set PG_BIN to the directory holding initdb and pg_ctl")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no PostgreSQL server programs under /usr/lib/postgresql/*/bin: set PG_BIN")
}

/// A PostgreSQL instance of the scenario's own (initdb in a scratch directory, on a free
/// port), so that stopping it disturbs nobody else. As root, it runs as the `postgres` user.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_root: bool,
}

impl PrivatePostgres {
    /// Creates and starts one.
    pub fn start_new(scratch: &Path) -> Result<PrivatePostgres> {
        let dir = scratch.join("pgdata");
        std::fs::create_dir_all(&dir)?;
        let as_root = run(Command::new("id").arg("-u"))?.trim() == "0";
        let pg = PrivatePostgres {
            bin: pg_bin()?,
            dir,
            port: free_port()?,
            as_root,
        };
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(scratch))?;
        }
        pg.pg(
            "initdb",
            &[
                "-D",
                &pg.dir.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )?;
        pg.start()?;
        Ok(pg)
    }

    fn pg(&self, program: &str, args: &[&str]) -> Result<String> {
        let exe = self.bin.join(program);
        if self.as_root {
            run(Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(exe)
                .args(args))
        } else {
            run(Command::new(exe).args(args))
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let dir = self.dir.display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &dir,
                "-l",
                &format!("{dir}/../postgres.log"),
                "-w",
                "-o",
                &format!("-p {} -k {dir} -c listen_addresses=127.0.0.1", self.port),
                "start",
            ],
        )?;
        Ok(())
    }

    /// Stops the server the way a crash would (`-m immediate`: no checkpoint, connections cut).
    pub fn crash(&self) -> Result<()> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )?;
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// A Redis server of the scenario's own, on a free port, without persistence.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start_new() -> Result<PrivateRedis> {
        let mut r = PrivateRedis {
            port: free_port()?,
            child: None,
        };
        r.start().await?;
        Ok(r)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it accepts connections.
    pub async fn start(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not listen on port {}", self.port)
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}
