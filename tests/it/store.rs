//! The outcome store fails loudly: a read-only state volume stops start-up, a full one is counted and
//! recovers when space comes back. Real file systems: a small tmpfs mounted for the test (needs root,
//! which CI and the development machines are; a test that cannot mount fails, it never skips).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers;
use crate::helpers::{TestApp, job, metric};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct TmpFs {
    dir: tempfile::TempDir,
}

impl TmpFs {
    fn mount(size: &str) -> TmpFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        TmpFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Retried for a moment: a store just dropped may still be closing its files on its own thread.
    fn remount_read_only(&self) {
        for _ in 0..50 {
            let status = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(self.path())
                .status()
                .unwrap();
            if status.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("could not remount {} read-only", self.path().display());
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn errors() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["op"]).unwrap()
}

/// herald as an unprivileged user (root writes through permission bits) on a state directory of
/// read-only files: it used to start, report ready and fail every record write.
#[test]
fn a_read_only_state_directory_stops_start_up_naming_state_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    // A store as an earlier run left it, then made read-only.
    drop(herald::store::Store::local(&state, errors()).unwrap());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in std::fs::read_dir(&state).unwrap() {
        // The store's writer thread may still be closing: SQLite removes its -wal and -shm files then.
        match std::fs::set_permissions(file.unwrap().path(), std::fs::Permissions::from_mode(0o444)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.unwrap(),
        }
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    let writable = dir.path().join("writable");
    std::fs::create_dir(&writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_herald"),
            "serve",
        ])
        .current_dir(&writable);
    assert_start_refused(setpriv, &state);
}

/// Starts `herald serve` as `command` on `state` and expects exit code 2 naming `state.path`; returns
/// what it printed. A herald that starts anyway would serve forever: `timeout` ends it (exit 124).
fn assert_start_refused(command: Command, state: &Path) -> String {
    let mut timeout = Command::new("timeout");
    timeout.arg("20").arg(command.get_program()).args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        timeout.current_dir(dir);
    }
    let out = timeout
        .env("HERALD_STATE__PATH", state)
        .env("HERALD_HTTP__ADDR", "127.0.0.1:0")
        .env(
            "HERALD_TEMPLATES__DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
        )
        .env("HERALD_AMQP__JOBS_QUEUE", "test.readonly-store.jobs")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("state.path"), "{stderr}");
    stderr
}

/// A state file that is not a database, or a damaged database (issue 31: it was reported "not writable"),
/// stops start-up saying it is malformed and naming the file.
#[test]
fn a_malformed_state_file_stops_start_up_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("outcomes.sqlite"), [0xA5u8; 8192]).unwrap();
    // A store an earlier run left, with records, then every page after the first two damaged.
    let damaged = dir.path().join("damaged");
    drop(herald::store::Store::local(&damaged, errors()).unwrap());
    let file = damaged.join("outcomes.sqlite");
    let conn = rusqlite::Connection::open(&file).unwrap();
    for i in 0..2000 {
        conn.execute(
            "INSERT INTO outcomes (id, at, event) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("job-{i}"), i, "e".repeat(200)],
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 16 * 4096, "{} bytes", bytes.len());
    for page in bytes.chunks_mut(4096).skip(2) {
        page[..64].fill(0xFF);
    }
    std::fs::write(&file, bytes).unwrap();
    for state in [garbage, damaged] {
        let mut herald = Command::new(env!("CARGO_BIN_EXE_herald"));
        herald.arg("serve");
        let stderr = assert_start_refused(herald, &state);
        let named = format!("{} is malformed", state.join("outcomes.sqlite").display());
        assert!(stderr.contains(&named), "{stderr}");
        assert!(!stderr.contains("not writable"), "{stderr}");
    }
}

/// Issue 31: the state files removed under a running herald (`rm` in `state.path`) went unnoticed, and
/// the restart after started with no records. Noticed within seconds: counted in
/// `herald_store_errors_total{op="files"}` (rising, about once a second, until a restart), one error
/// naming the file, and `/readyz` false; jobs are still delivered meanwhile.
#[tokio::test]
async fn state_files_deleted_under_a_running_herald_are_counted_logged_and_unready() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = helpers::free_port();
    let mut broker = helpers::Broker::new(|c| {
        c.state.path = state.clone();
        c.http.addr = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let herald = helpers::HeraldProcess::start(&helpers::process_env(&broker.config));
    let readyz = || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let lost = || async move {
        metric(
            &helpers::metrics_at(port).await,
            "herald_store_errors_total{op=\"files\"}",
        )
    };
    let first = job("sms");
    broker.publish(&first).await;
    assert_eq!(broker.next_outcome(20).await["job_id"], first["id"]);
    assert_eq!(readyz().await.0, 200);
    assert_eq!(lost().await, 0.0);

    for file in ["outcomes.sqlite", "outcomes.sqlite-wal", "outcomes.sqlite-shm"] {
        std::fs::remove_file(state.join(file)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lost().await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never counted:\n{}",
            herald.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("outcome store files deleted"), "{body}");
    let logs = herald.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("a state file was deleted or replaced"))
        .unwrap_or_else(|| panic!("no error logged:\n{logs}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&state.join("outcomes.sqlite").display().to_string()),
        "{line}"
    );

    let counted = lost().await;
    let second = job("sms");
    broker.publish(&second).await;
    assert_eq!(broker.next_outcome(20).await["job_id"], second["id"]);
    helpers::eventually(std::time::Duration::from_secs(10), "still rising", || async move {
        lost().await > counted
    })
    .await;
    assert_eq!(readyz().await.0, 503, "until a restart");
    let logs = herald.logs();
    assert_eq!(
        logs.matches("a state file was deleted or replaced").count(),
        1,
        "logged once:\n{logs}"
    );
}

/// The same on a read-only mount.
#[test]
fn a_read_only_state_volume_stops_start_up_naming_state_path() {
    let fs = TmpFs::mount("4m");
    let state: PathBuf = fs.path().join("state");
    drop(herald::store::Store::local(&state, errors()).unwrap());
    fs.remount_read_only();
    let mut herald = Command::new(env!("CARGO_BIN_EXE_herald"));
    herald.arg("serve");
    assert_start_refused(herald, &state);
}

#[tokio::test]
async fn a_full_state_volume_is_counted_and_recovers_when_space_comes_back() {
    let fs = TmpFs::mount("2m");
    let state = fs.path().join("state");
    let mut app = TestApp::spawn(|c| c.state.path = state.clone()).await;
    let first = job("sms");
    app.publish(&first).await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");

    // Fill the volume: the next job is delivered, but its record cannot be written, and its event waits
    // for it: an event out without its record would let a replay of the job be sent again.
    let filler = fs.path().join("filler");
    let free = fs2_free(fs.path());
    std::fs::write(&filler, vec![0u8; free as usize]).ok();
    let during = job("sms");
    app.publish(&during).await;
    app.wait_metric("herald_store_errors_total{op=\"put\"}", 1.0).await;
    assert!(
        app.try_next_event(1).await.is_none(),
        "an event left without its record"
    );

    // Space is back: the record is written, the event follows, and a replay is a duplicate, not a send.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(app.next_outcome(20).await["job_id"], during["id"]);
    let reply = app.publish_and_wait(&during).await;
    assert_eq!(reply["error"]["code"], "duplicate", "{reply}");
    let after = job("sms");
    app.publish(&after).await;
    assert_eq!(app.next_outcome(20).await["job_id"], after["id"]);
    let sent = helpers::outbox_counts(&app.outbox);
    assert_eq!(sent.get(during["id"].as_str().unwrap()), Some(&1), "{sent:?}");
    // The WAL stays bounded: the volume is not left full.
    assert!(fs2_free(fs.path()) > 512 * 1024, "state volume still full");
    app.stop().await;
}

/// Free bytes on the file system holding `path` (`df`, to need no extra crate).
fn fs2_free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Marking a batch committed never waits on Redis: the broker's commit loop calls it, and a Redis that
/// does not answer (here a port that accepts and never replies) must not stall every commit behind its
/// timeouts. The marks go out on a task of their own.
#[tokio::test]
async fn marking_committed_never_waits_on_redis() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let conn = herald::store::redis_connection(&url).unwrap();
    let store = herald::store::Store::redis(conn, "test.silent", std::time::Duration::from_secs(20), errors());
    // The claim, for comparison, does wait (and fails after the connection's timeouts).
    let started = std::time::Instant::now();
    assert!(store.try_claim("j1").await.is_err());
    let claim_took = started.elapsed();
    let started = std::time::Instant::now();
    store.mark_committed(vec!["j1".into()], vec!["j1".into()]);
    let mark_took = started.elapsed();
    assert!(
        mark_took * 10 < claim_took,
        "marking took {mark_took:?}, a Redis round trip here {claim_took:?}"
    );
    held.abort();
}
