use clap::Parser;

fn main() {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald: starting the async runtime: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(runtime.block_on(run()));
}

async fn run() -> i32 {
    herald::logging::init();
    let cli = herald::cli::Cli::parse();
    match herald::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {}", herald::cli::error_text(&e));
            2
        }
    }
}

/// One malloc arena instead of glibc's one per contended thread: memory freed in one arena is not
/// reused by another, which cost herald about 2.5 MiB of peak memory in `herald bench`. The price is lock
/// contention between threads: with 2 or more arenas the bench's Twilio step ran 10-25% faster. Set before
/// any thread starts; `MALLOC_ARENA_MAX` in the environment still wins (e.g. 2 where memory is plentiful).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
