//! A PgBouncer of a test's own in transaction pooling mode before the local
//! PostgreSQL, configured by `scripts/pgbouncer.ini` as `scripts/services`
//! configures the shared one.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PG;

pub struct PgBouncer {
    pub port: u16,
    process: Child,
    dir: PathBuf,
}

impl PgBouncer {
    pub async fn start() -> Self {
        Self::start_before(5432).await
    }

    /// One whose server connections go to `postgres_port` (a proxy's, say)
    /// instead of PostgreSQL's.
    pub async fn start_before(postgres_port: u16) -> Self {
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("shop-test-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let template = include_str!("../../../../scripts/pgbouncer.ini");
        let config = template
            .replace("LISTEN_PORT", &port.to_string())
            .replace("RUN_DIR", dir.to_str().unwrap())
            .replace("port=5432", &format!("port={postgres_port}"));
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        // PgBouncer refuses to run as root: it runs as postgres.
        Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap();
        let process = Command::new("pgbouncer")
            .arg(dir.join("pgbouncer.ini"))
            .uid(id_of("-u"))
            .gid(id_of("-g"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer is installed (scripts/services)");
        let bouncer = Self { port, process, dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return bouncer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("PgBouncer did not listen on port {port}");
    }

    /// Whether PgBouncer has lent server connections to `db`'s database:
    /// only it runs its reset query (`DEALLOCATE ALL`), which stays the
    /// last query of a server connection it took back.
    pub async fn served(&self, db: &sqlx::PgPool) -> bool {
        sqlx::query_scalar(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() AND query = 'DEALLOCATE ALL'",
        )
        .fetch_one(db)
        .await
        .unwrap()
    }

    /// Its URL, without a database: PostgreSQL's [`PG`], through it.
    pub fn url(&self) -> String {
        PG.replace(":5432", &format!(":{}", self.port))
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.process.kill().ok();
        self.process.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The postgres account's user (`-u`) or group (`-g`) id.
fn id_of(which: &str) -> u32 {
    let output = Command::new("id").args([which, "postgres"]).output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().parse().unwrap()
}
