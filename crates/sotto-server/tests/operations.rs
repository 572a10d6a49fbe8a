//! The operator's surface of the real `sotto-server` binary, on the embedded
//! store and on PostgreSQL: a config file (unknown keys named, environment
//! overrides), `/healthz`, `/readyz`, `/busz` and `/metrics`, `invite`, `stats` and
//! `devices revoke`, and a graceful stop on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use sotto_client::{Client, RegisterOptions, ServerLink, Suite};
use sotto_proto::Handle;
use sotto_test_support::services::{PgDatabase, free_port};
use sotto_test_support::{ServerProcess, bin, run};

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn server_cmd(server: &ServerProcess, args: &[&str]) -> Command {
    let mut c = Command::new(bin("sotto-server"));
    c.args(args).arg("--data").arg(&server.data);
    c.args(server.store_args());
    c
}

async fn operate(store: Option<&str>) {
    let tmp = tempfile::TempDir::new().unwrap();
    let admin = free_port();
    let config = tmp.path().join("sotto.toml");
    // The file turns the admin endpoint on; the environment (below) and
    // flags override it.
    std::fs::write(
        &config,
        format!("admin_listen = \"127.0.0.1:{admin}\"\nlog_format = \"json\"\n[limits]\nmax_connections = 50\n"),
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    if let Some(url) = store {
        args.extend(["--store", url]);
    }
    let mut server = ServerProcess::start(&tmp.path().join("server"), &args);

    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get(admin, "/busz"), (200, "bus connected\n".to_owned()));
    assert_eq!(get(admin, "/nothing").0, 404);

    let alice = Client::register(
        &tmp.path().join("alice"),
        "pass",
        RegisterOptions {
            link: ServerLink::parse(&server.link).unwrap(),
            handle: Handle::new("alice").unwrap(),
            invite: Some(server.invite()),
            suite: Suite::PostQuantum,
        },
    )
    .await
    .unwrap();

    let (code, metrics) = get(admin, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "sotto_accounts 1",
        "sotto_live_devices 1",
        "sotto_request_duration_seconds_count{kind=\"register\"} 1",
        "sotto_connections_accepted_total",
        "sotto_mailbox_pending",
        "sotto_store_up 1",
        "sotto_bus_connected 1",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
    assert!(!metrics.contains("alice"), "no identities in metrics");

    let stats = run(server_cmd(&server, &["stats"])).ok();
    assert!(stats.contains("accounts            1"), "{stats}");

    // The operator locks alice's device out; her next login fails.
    let device = hex::encode(alice.identity().device.0);
    run(server_cmd(&server, &["devices", "revoke", &device])).ok();
    run(server_cmd(&server, &["devices", "revoke", &device])).fails_with("no live device");
    let mut alice = alice;
    let e = alice
        .receive(Duration::ZERO, |_| {})
        .await
        .expect_err("revoked device logs in");
    assert!(
        !e.is_temporary(),
        "a revoked device gets a final answer: {e}"
    );

    // SIGTERM drains and exits cleanly.
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_tools_on_the_embedded_store() {
    operate(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_tools_on_postgres() {
    let db = tokio::task::spawn_blocking(PgDatabase::create)
        .await
        .unwrap();
    operate(Some(&db.url)).await;
}

#[test]
fn config_mistakes_are_named_before_start() {
    let tmp = tempfile::TempDir::new().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nregistraton = \"open\"\n",
    )
    .unwrap();
    let mut c = Command::new(bin("sotto-server"));
    c.args(["run", "--config"]).arg(&config);
    run(c).fails_with("unknown keys in");
    let mut c = Command::new(bin("sotto-server"));
    c.args(["run", "--data"])
        .arg(tmp.path().join("d"))
        .env("SOTTO_LIMITS_MAX_CONNECTIONS", "many");
    run(c).fails_with("SOTTO_LIMITS_MAX_CONNECTIONS");
    let mut c = Command::new(bin("sotto-server"));
    c.args(["run", "--data"])
        .arg(tmp.path().join("d"))
        .args(["--bus", "nats://127.0.0.1:1"]);
    run(c).fails_with("shared store");
    // The printed default file is complete and loads as is.
    let mut c = Command::new(bin("sotto-server"));
    c.arg("config");
    let text = run(c).ok();
    for key in [
        "store",
        "bus",
        "admin_listen",
        "[limits]",
        "max_connections_per_source",
    ] {
        assert!(text.contains(key), "default config lacks {key}");
    }
}
