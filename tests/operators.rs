//! What operators see when they start the binary: a port someone else serves is refused, flag
//! values that cannot work are refused naming the flag, `--path` is normalised as Node does,
//! and workers pin themselves only within the CPUs the process was given.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Server;

/// Runs the binary with `args` and returns its exit status and stderr; fails the test if it
/// is still running after 10 seconds (a refused start must not serve).
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .args(support::io_args(args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardcast");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardcast {args:?} is still running after 10 s; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_instance_on_the_same_port_fails_with_address_in_use() {
    let first = Server::start(&["--threads", "2", "--no-pin"]);
    let port = first.addr.to_string();
    let (status, err) = run_to_exit(&["--threads", "2", "--no-pin", "--bind", &port]);
    assert!(!status.success(), "the second instance exited {status}");
    assert!(err.to_lowercase().contains("address in use"), "stderr: {err}");
    // The first still serves.
    let r = support::get(first.addr, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(r.status, 200);
}

#[test]
fn the_echo_mode_also_refuses_a_served_port() {
    let first = Server::start(&["--threads", "1", "--no-pin"]);
    let port = first.addr.to_string();
    let (status, err) = run_to_exit(&["echo", "--threads", "1", "--no-pin", "--bind", &port]);
    assert!(!status.success());
    assert!(err.to_lowercase().contains("address in use"), "stderr: {err}");
}

#[test]
fn unusable_flag_values_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--ping-interval", "0"),
        ("--ping-timeout", "0"),
        ("--upgrade-timeout", "0"),
        ("--http-timeout", "0"),
        ("--max-connections", "0"),
        ("--max-payload", "0"),
        ("--max-payload", "99999999999999"),
        ("--max-send-buffer", "0"),
        ("--ping-interval", "999999999999"),
    ] {
        let (status, err) = run_to_exit(&[flag, value, "--bind", "127.0.0.1:0"]);
        assert!(!status.success(), "{flag} {value} was accepted");
        assert!(err.contains(flag), "{flag} {value}: stderr does not name the flag: {err}");
    }
}

#[test]
fn path_without_trailing_slash_serves_the_slashed_path() {
    for given in ["/sock", "sock", "/sock/"] {
        let s = Server::start(&["--threads", "1", "--no-pin", "--path", given]);
        let r = support::get(s.addr, "/sock/?EIO=4&transport=polling");
        assert_eq!(r.status, 200, "--path {given}: {}", r.text());
        assert!(r.text().starts_with("0{"), "--path {given}: {}", r.text());
    }
}

/// The CPUs a thread may run on, from /proc.
fn cpus_allowed(pid: u32, thread_name: &str) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        let name = status.lines().find_map(|l| l.strip_prefix("Name:")).map(str::trim);
        if name == Some(thread_name) {
            return status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string());
        }
    }
    None
}

/// Starts the binary under `taskset -c cpus` with `args`; returns it and its banner line.
fn under_taskset(cpus: &str, args: &[&str]) -> (std::process::Child, String) {
    assert!(Command::new("taskset").arg("-V").output().is_ok(), "taskset (util-linux) is required");
    let mut child = Command::new("taskset")
        .args(["-c", cpus, env!("CARGO_BIN_EXE_shardcast"), "--bind", "127.0.0.1:0"])
        .args(args)
        .args(support::io_args(args))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shardcast under taskset");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    (child, line)
}

#[test]
fn workers_pin_only_within_the_cpus_the_process_was_given() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let has_cpu1 = std::fs::read_to_string("/sys/devices/system/cpu/online").is_ok_and(|s| s.trim() != "0");
    assert!(cpus >= 2 && has_cpu1, "this test needs a CPU 1 the process may use (the project's machines have 2 cores)");
    let (mut child, line) = under_taskset("1", &["--threads", "1"]);
    assert!(line.contains("listening"), "{line}");
    let allowed = cpus_allowed(child.id(), "shardcast-w0");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(allowed.as_deref(), Some("1"), "the worker runs on CPUs {allowed:?}, the process was given 1");
}

#[test]
fn the_default_worker_count_is_the_number_of_allowed_cpus() {
    let (mut child, line) = under_taskset("0", &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("(1 workers,"), "{line}");
}

/// Criterion's HTML reports are built (the `html_reports` feature) and the README says where
/// they land.
#[test]
fn criterion_html_reports_are_enabled_and_documented() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let criterion = manifest.lines().find(|l| l.trim_start().starts_with("criterion")).expect("criterion dev-dependency");
    assert!(criterion.contains("\"html_reports\""), "{criterion}");
    // Without a plotting backend (plotters, or gnuplot installed) criterion writes no report.
    assert!(criterion.contains("\"plotters\""), "{criterion}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("target/criterion/report/index.html"));
}

#[test]
fn pidfile_holds_the_server_pid_and_goes_at_a_clean_exit() {
    let path = std::env::temp_dir().join(format!("shardcast-pidfile-test-{}", std::process::id()));
    let mut s = Server::start(&["--threads", "1", "--no-pin", "--pidfile", path.to_str().unwrap()]);
    let written = std::fs::read_to_string(&path).expect("the pidfile exists once listening");
    assert_eq!(written.trim(), s.child.id().to_string());
    assert!(s.stop().success());
    assert!(!path.exists(), "the pidfile is removed at a clean exit");
}
