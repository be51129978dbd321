//! A PostgreSQL cluster of a test's own, on a free port, for faults the
//! shared server must never suffer: restarts, stops. `initdb` and `pg_ctl`
//! refuse root, so they run as the `postgres` user.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct OwnPostgres {
    pub port: u16,
    data: PathBuf,
}

impl OwnPostgres {
    pub async fn start() -> Self {
        let port = super::free_port();
        let data = std::env::temp_dir().join(format!("shop-test-pg-{}", uuid::Uuid::new_v4().simple()));
        let own = Self { port, data };
        tokio::task::spawn_blocking({
            let data = own.data.display().to_string();
            move || {
                as_postgres(&["mkdir", "-p", &data]);
                as_postgres(&[&format!("{BIN}/initdb"), "-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
            }
        })
        .await
        .unwrap();
        own.pg_ctl(&["start"]).await;
        own
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Restarts the server: every connection is cut, and it answers again.
    pub async fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]).await;
    }

    async fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=40 -c fsync=off -c synchronous_commit=off",
            self.port
        );
        let mut args = vec![format!("{BIN}/pg_ctl"), "-D".into(), self.data.display().to_string()];
        args.extend(["-o".into(), options, "-w".into(), "-l".into(), format!("{}.log", self.data.display())]);
        args.extend(action.iter().map(|part| (*part).to_owned()));
        tokio::task::spawn_blocking(move || as_postgres(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let stop = [&format!("{BIN}/pg_ctl"), "-D", &data, "stop", "-m", "immediate"];
        Command::new("runuser").args(["-u", "postgres", "--"]).args(stop).output().ok();
        std::fs::remove_dir_all(&self.data).ok();
        std::fs::remove_file(format!("{data}.log")).ok();
    }
}

fn as_postgres(command: &[&str]) {
    let output = Command::new("runuser").args(["-u", "postgres", "--"]).args(command).output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}
