//! The activator on the test bed, everything around it real: the scene (`bed/mod.rs`, shared with
//! the cold-start benchmark) runs the injector and the operator in this process, the aggregator
//! and two replicas of the real `inflight-activator` image in the cluster, real KEDA, and an
//! injected demo Deployment `web` behind an HTTPAutoscaler with minReplicas 0. Clients on this host
//! call the Service's ClusterIP (the bed routes the Service range to its node), with the Host a
//! client in the cluster would send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bed::{
    admin_json, admin_text, at, get, ips, pods, ready_pods, replicas, scaler_calls, send,
    slice_ready, Outcome, Scene, ACTIVATOR, HOLD_GATE,
};
use inflight_testbed::traffic::{Load, Tally};
use inflight_testbed::{eventually, TestBed};
use serde_json::json;

/// The bed has two cores: the tests of this file take turns rather than share them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------

/// (a) A request at zero is held, KEDA wakes `web` on the activator's report (not on its polling,
/// which is 30 s apart), and the request is answered 200 by the app with the cold-start header;
/// (c) idle, `web` goes back to zero and its Service back to the activators; (b) 200 requests at
/// once at zero are all answered 200, and the app's proxies counted exactly 200: none was lost
/// or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_requests_at_zero_are_held_until_keda_wakes_the_workload_and_each_is_answered_once()
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let polling = Duration::from_secs(30);
    let scene = Scene::start(
        TestBed::shared().await.unwrap(),
        json!({"maxReplicas": 2, "metric": {"target": 10, "window": "12s"},
               "scaleToZeroAfter": "10s", "pollingInterval": "30s"}),
        false,
    )
    .await;
    let tb = &scene.tb;

    // (a) KEDA polls the aggregator every 30 s: the request goes right after a poll, so that a
    // wake-up within the next 30 s can only be the push.
    let aggregator_admin = scene.aggregator_admin;
    let calls = move |method: &'static str| async move {
        let metrics = admin_text(aggregator_admin, "/metrics").await?;
        Some(scaler_calls(&metrics, method))
    };
    eventually("KEDA's StreamIsActive stream open", 60, || async {
        (calls("StreamIsActive").await? >= 1).then_some(())
    })
    .await;
    let before = eventually("the aggregator's metrics", 30, || calls("IsActive")).await;
    let polled = eventually(
        "KEDA to poll IsActive",
        2 * polling.as_secs() + 10,
        || async { (calls("IsActive").await? > before).then(Instant::now) },
    )
    .await;
    let answer = send(scene.web, &scene.host, "/", Duration::from_secs(120)).await;
    let took = polled.elapsed();
    println!("(a) one request at zero: {answer:?}, {took:?} after KEDA's last poll");
    let (cold_start, body) = match answer {
        Outcome::Answered {
            status: 200,
            cold_start: Some(cold_start),
            body,
        } => (cold_start, body),
        other => panic!("not answered 200 with X-Inflight-Cold-Start: {other:?}"),
    };
    assert!(
        body.contains("hello from the inflight demo app on web-"),
        "{body}"
    );
    assert!(cold_start.ends_with("ms"), "{cold_start}");
    assert!(
        took + Duration::from_secs(1) < polling,
        "answered {took:?} after KEDA's poll: the wake-up may have waited for the next poll"
    );
    assert!(replicas(tb, "web").0 >= 1);
    // The pod the app answered from carries the proxy the injector added.
    let woken = pods(tb, "web");
    assert!(
        woken.iter().all(|p| {
            p["metadata"]["annotations"]["inflight.dev/injected"].is_string()
                && p["spec"]["initContainers"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == "inflight-proxy"))
        }),
        "web's pods were not injected"
    );
    let mut held = 0;
    for (_, ip) in ready_pods(tb, ACTIVATOR) {
        let stats = admin_json(at(&ip, 15091), "/stats").await.unwrap();
        held += stats["requests"]["forwarded_held"].as_u64().unwrap_or(0);
    }
    assert_eq!(held, 1, "the activators' forwarded_held");
    // The aggregator took the activators' and the injected proxy's reports on their tokens
    // (reviewed by the API server), and refused none: the wake-up above came through them.
    let sample = |metrics: &str, prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = eventually(
        "an activator's and the proxy's tokens reviewed",
        30,
        || async {
            let metrics = admin_text(aggregator_admin, "/metrics").await?;
            let accepted = "inflight_aggregator_token_reviews_total{result=\"accepted\"}";
            (sample(&metrics, accepted) >= 2.0).then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        sample(&metrics, "inflight_aggregator_ingest_refusals_total{"),
        0.0,
        "{metrics}"
    );
    eventually("serve mode on web's pod", 60, || async {
        let (serve, _) = slice_ready(tb, "web-inflight-serve")?;
        let h = get(tb, &["hta/web"])?;
        (!serve.is_empty() && h["status"]["mode"] == "Serve").then_some(())
    })
    .await;

    // (c) Nothing more: KEDA takes web back to zero after scaleToZeroAfter, and the operator the
    // Service back to the activators.
    let idle = Instant::now();
    scene.at_zero_on_the_activators(180).await;
    println!(
        "(c) back at zero on the activators {:?} after idle",
        idle.elapsed()
    );

    // (b) 200 first requests at once.
    let started = Instant::now();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let (web, host) = (scene.web, scene.host.clone());
            tokio::spawn(async move { send(web, &host, "/", Duration::from_secs(120)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    println!("(b) 200 at once answered within {:?}", started.elapsed());
    let wrong: Vec<&Outcome> = answers
        .iter()
        .filter(|a| {
            !matches!(a, Outcome::Answered { status: 200, cold_start: Some(_), body }
                if body.contains("on web-"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of 200 not answered 200 by web with the cold-start header: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Each reached the app exactly once: the proxies in front of it counted 200, no more.
    let counted = scene.web_requests().await;
    assert_eq!(counted, 200, "requests web's proxies counted");
}

/// (d) While both activators hold requests (the workload woken by KEDA, its pod held back by a
/// scheduling gate), the one holding most is deleted: it drains, the Service's slice follows its
/// replacement, and once the pod may start every request of every client is answered 200: none
/// fails. A client may send a request again only when it never went out (refused, reset or
/// unreachable before sending); those are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_an_activator_deleted_while_holding_under_load_loses_no_request_and_the_slice_follows_its_replacement(
) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start(
        TestBed::shared().await.unwrap(),
        json!({"maxReplicas": 1, "scaleToZeroAfter": "30s", "pollingInterval": "2s"}),
        true,
    )
    .await;
    let tb = &scene.tb;
    let before = ready_pods(tb, ACTIVATOR);

    let clients = 8;
    let load = Load::start(scene.web, &scene.host, "/", "on web-", clients);
    // KEDA wakes web; its pod waits at the gate, so every client's request stays held.
    let gated = eventually("web woken, its pod held at the gate", 60, || async {
        let p = pods(tb, "web");
        let gated = p.len() == 1 && p[0]["spec"]["schedulingGates"][0]["name"] == HOLD_GATE;
        (replicas(tb, "web").0 == 1 && gated).then(|| p[0]["metadata"]["name"].clone())
    })
    .await;
    let held = eventually("all clients' requests held", 60, || async {
        let mut held = Vec::new();
        for (name, ip) in &before {
            let stats = admin_json(at(ip, 15091), "/stats").await?;
            held.push((stats["held_total"].as_u64()?, name.clone(), ip.clone()));
        }
        (held.iter().map(|h| h.0).sum::<u64>() == clients as u64).then_some(held)
    })
    .await;
    let (victim_held, victim, victim_ip) = held.iter().max().cloned().unwrap();
    println!("holding {held:?}; deleting {victim}");
    tb.kubectl(&["delete", "pod", &victim, "--wait=false"])
        .unwrap();
    // More clients arrive while it drains and the slice changes: wherever kube-proxy sends them,
    // they are held too.
    let late = Load::start(scene.web, &scene.host, "/", "on web-", 4);
    let after = eventually(
        "the Service's slice on the survivor and the replacement",
        90,
        || async {
            let act = ready_pods(tb, ACTIVATOR);
            let (proxy, _) = slice_ready(tb, "web-inflight-proxy")?;
            (act.len() == 2 && !ips(&act).contains(&victim_ip) && proxy == ips(&act)).then_some(act)
        },
    )
    .await;
    println!("slice follows: {:?} -> {:?}", ips(&before), ips(&after));
    assert_eq!(replicas(tb, "web").1, 0, "still no web pod ready");
    assert_eq!(
        load.tally().answered() + late.tally().answered(),
        0,
        "answered before any pod was ready"
    );

    // The pod may start: what every activator holds (the deleted one's too, while it drains) is
    // answered, and the clients go on through the Service in serve mode.
    let pod = gated.as_str().unwrap();
    tb.kubectl(&[
        "patch",
        "pod",
        pod,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#,
    ])
    .unwrap();
    let woke = Instant::now();
    eventually(
        "every held request answered, then more in serve mode",
        120,
        || async { (load.tally().answered() >= clients as u64 + 200).then_some(()) },
    )
    .await;
    eventually("the late clients answered too", 60, || async {
        (late.tally().answered() >= 4).then_some(())
    })
    .await;
    let took = woke.elapsed();
    let (tally, late) = (load.finish().await, late.finish().await);
    let mut failures = tally.failures();
    failures.extend(late.failures());
    let count = |f: fn(&Tally) -> &AtomicU64| {
        f(&tally).load(Ordering::Relaxed) + f(&late).load(Ordering::Relaxed)
    };
    let mut resent_why = tally.resent_why.lock().unwrap().clone();
    for (why, n) in late.resent_why.lock().unwrap().iter() {
        *resent_why.entry(why.clone()).or_default() += n;
    }
    println!(
        "(d) {} answered ({} after a hold) within {took:?} of the pod's start; {} sent again \
         (never sent before): {resent_why:?}; {} failed: {:?}; the deleted activator held \
         {victim_held}",
        count(|t| &t.answered),
        count(|t| &t.cold_starts),
        count(|t| &t.resent),
        failures.len(),
        &failures[..failures.len().min(10)],
    );
    assert!(failures.is_empty(), "requests failed");
    assert!(count(|t| &t.cold_starts) >= clients as u64 + 4);
}
