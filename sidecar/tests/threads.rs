//! Thread layout: every worker has a thread and an event loop of its own, and
//! the control plane (acceptor, admin server, reporter) keeps the main
//! thread, so `/readyz` and report ticks never wait behind requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// The names of the proxy's threads (the kernel keeps 15 bytes of each).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_owned()
        })
        .collect();
    names.sort();
    names
}

fn workers(names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| n.starts_with("inflight-worker"))
        .count()
}

/// The thread names once `want` workers have named themselves. A new thread
/// carries its parent's name until it runs far enough to set its own, which
/// on a loaded machine can be after the proxy already serves.
async fn names_once_workers(pid: u32, want: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let names = thread_names(pid);
        if workers(&names) >= want || tokio::time::Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_worker_has_its_own_thread_apart_from_the_control_plane() {
    let app = App::start(|_| async { hyper::Response::new(full("ok")) }).await;
    let proxy = Proxy::start(app.addr, &["--threads", "3"]).await;
    let (status, body) = get(proxy.addr, "/").await.unwrap();
    assert_eq!((status, body.as_ref()), (200, b"ok".as_ref()));
    let names = names_once_workers(proxy.pid(), 3).await;
    assert_eq!(workers(&names), 3, "{names:?}");
    // The main thread is the control plane's, and serves no requests.
    assert!(names.iter().any(|n| n == "inflight-proxy"), "{names:?}");
}

#[tokio::test]
async fn default_is_at_most_two_workers() {
    let app = App::start(|_| async { hyper::Response::new(full("ok")) }).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let names = names_once_workers(proxy.pid(), cpus.clamp(1, 2)).await;
    assert_eq!(workers(&names), cpus.clamp(1, 2), "{names:?}");
}
