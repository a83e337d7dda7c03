//! Issue 14's benchmark, run by `bench/installed.sh`: inflight as a user installs it (the chart with
//! Helm, as the end-to-end test does: release `inflight` in namespace `inflight`, the bed's images),
//! the demo app in a namespace labelled `inflight.dev/inject=enabled` under an HTTPAutoscaler with
//! minReplicas 0, and two figures of the installed system. Nothing here asserts a number: it prints
//! what it measures and writes every figure as JSON (`--out`) and Markdown (`--md`).
//!
//! 1. **A cold start, step by step**: `--n` activations. For each, once the app is at zero (every
//!    pod gone, the Service in proxy mode), one request goes from this host to the Service's
//!    ClusterIP with the Host a client in the cluster sends, timed step by step as
//!    `inflight_testbed::cold_start` does for the activator's scene (`bench/cold-start.sh`). The
//!    push KEDA gets is watched on a StreamIsActive stream of this process's own to the
//!    aggregator's scaler Service, over mutual TLS with KEDA's own client certificate (the
//!    operator's Secret `keda/inflight-keda`); the injector's review time is read from its pods'
//!    `/metrics`. What the in-process scene had and this one has not is said in the output.
//! 2. **What the path adds at a steady, moderate rate**: the app held at one replica
//!    (minReplicas = maxReplicas = 1, the Service in serve mode), `h2load --h1 --rps` at `--rate`
//!    requests a second over `--conns` connections for `--duration`, in `--rounds` rounds (the
//!    targets' order rotated each round) to (a) the pod's app port 8080, (b) its sidecar's
//!    15080, (c) the Service's ClusterIP:80 (client → kube-proxy → sidecar → app); latency
//!    percentiles from h2load's per-request log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use inflight_e2e::{app, at, at_zero, hta, Installed};
use inflight_testbed::cold_start::{
    activate, inactive_stream, line, scaled_object_ref, scaler_client, summarise, Knobs, Request,
    Target,
};
use inflight_testbed::query::{cluster_ip, get, ready_pods, replicas};
use inflight_testbed::traffic::send;
use inflight_testbed::{eventually, kubectl_run, TestBed};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Activations to time (0: none).
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Where to write every figure, as JSON.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the report, as Markdown.
    #[arg(long)]
    md: PathBuf,
    /// The command that made it, for the report.
    #[arg(long, default_value = "bench/installed.sh")]
    command: String,
    /// The demo app's time a request (`--latency`).
    #[arg(long, default_value = "0s")]
    latency: String,
    #[command(flatten)]
    knobs: Knobs,
    /// Steady state: requests a second in all.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Steady state: connections (the rate is split over them).
    #[arg(long, default_value_t = 10)]
    conns: u32,
    /// Steady state: seconds of each measured run.
    #[arg(long, default_value_t = 30)]
    duration: u32,
    /// Steady state: seconds of each target's warm-up run (not measured).
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Steady state: rounds (each runs every target once; 0: no steady state).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

const NAME: &str = "app";
const SELECTOR: &str = "app=app";
/// The steady state's targets, in the first round's order.
const TARGETS: [&str; 3] = ["direct", "sidecar", "service"];

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let load_before = loadavg();
    let begun = Instant::now();
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    println!("installed: helm install of charts/inflight (release inflight in namespace inflight)");
    let system = Installed::install(&tb, &[]).unwrap();

    tb.kubectl(&["label", "namespace", &ns, "inflight.dev/inject=enabled"])
        .unwrap();
    tb.apply(&app(NAME, 1, &args.latency)).unwrap();
    let spec = json!({"minReplicas": 0, "maxReplicas": 1,
                      "scaleToZeroAfter": args.knobs.scale_to_zero_after,
                      "pollingInterval": args.knobs.polling_interval});
    tb.apply(&hta(NAME, spec.clone())).unwrap();
    println!(
        "installed: app (latency {}) in {ns} under {spec}",
        args.latency
    );

    let cold = if args.n > 0 {
        Some(cold_starts(&tb, &args).await)
    } else {
        None
    };
    let steady = if args.rounds > 0 {
        Some(steady_state(&tb, &args).await)
    } else {
        None
    };

    println!("installed: helm uninstall");
    let uninstalled = system.uninstall().map(drop).map_err(|e| e.to_string());
    let _ = tb.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    let result = json!({
        "namespace": ns,
        "hta_spec": spec,
        "app_latency": args.latency,
        "load_before": load_before,
        "load_after": loadavg(),
        "seconds": begun.elapsed().as_secs_f64(),
        "uninstalled": uninstalled.err().unwrap_or_else(|| "ok".into()),
        "cold_start": cold,
        "steady_state": steady,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    let md = render(&args, &result);
    std::fs::write(&args.md, &md).unwrap();
    println!("{md}");
    println!(
        "installed: {} and {}",
        args.md.display(),
        args.out.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The cold start.

async fn cold_starts(tb: &TestBed, args: &Args) -> Value {
    let ns = tb.namespace().to_owned();
    at_zero(tb, NAME, "with no traffic").await;
    let so = eventually("the operator's ScaledObject", 60, || async {
        get(tb, &[&format!("scaledobject/{NAME}")])
    })
    .await;
    let object = scaled_object_ref(&so);
    // KEDA's way in: the scaler Service, mutual TLS with the client certificate the operator
    // made for KEDA. Without it the push is not timed (and said so).
    let (mut keda, no_push) = match scaler_client(tb.layout(), "inflight-keda", "inflight").await {
        Ok(c) => (Some(c), None),
        Err(e) => {
            println!("installed: no StreamIsActive stream of our own ({e}): the push is not timed");
            (None, Some(e))
        }
    };
    let injectors: Vec<SocketAddr> = pod_ips(tb, "inflight", "app=inflight-injector")
        .iter()
        .map(|ip| at(ip, 15092))
        .collect();
    let target = Target {
        client: tb.client(),
        namespace: ns.clone(),
        deployment: NAME.into(),
        selector: SELECTOR.into(),
        readyz_poll: args.knobs.readyz_poll,
    };
    let svc = at(&cluster_ip(tb, NAME), 80);
    let host = format!("{NAME}.{ns}");
    let request = Request {
        target: &target,
        addr: svc,
        host: &host,
        marker: "on app-",
        injectors: &injectors,
    };
    println!(
        "installed: {} cold starts of {NAME} through {svc} (Host {host}); injectors {injectors:?}",
        args.n
    );
    let mut activations = Vec::new();
    let begun = Instant::now();
    for i in 1..=args.n {
        let cycle = Instant::now();
        at_zero(tb, NAME, &format!("before activation {i}")).await;
        let waited = cycle.elapsed();
        tokio::time::sleep(args.knobs.settle).await;

        let pushes = match keda.as_mut() {
            Some(k) => Some(inactive_stream(k, &object).await.unwrap()),
            None => None,
        };
        let record = activate(tb, &request, i, pushes, waited).await;
        println!("{}", line(&record, args.n));
        activations.push(record);
    }
    let mut result = summarise(&activations);
    let more = json!({
        "seconds": begun.elapsed().as_secs_f64(),
        "settle_s": args.knobs.settle.as_secs_f64(),
        "readyz_poll_ms": args.knobs.readyz_poll.as_secs_f64() * 1e3,
        "scaler_metadata": object.scaler_metadata,
        "no_push": no_push,
        "injectors": injectors.len(),
        "activations": activations,
    });
    if let (Some(r), Some(more)) = (result.as_object_mut(), more.as_object()) {
        r.extend(more.clone());
    }
    result
}

fn pod_ips(tb: &TestBed, ns: &str, selector: &str) -> Vec<String> {
    let list: Value = kubectl_run(
        tb.layout(),
        &["-n", ns, "get", "pods", "-l", selector, "-o", "json"],
    )
    .ok()
    .and_then(|s| serde_json::from_str(&s).ok())
    .unwrap_or_default();
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The steady state.

async fn steady_state(tb: &TestBed, args: &Args) -> Value {
    let ns = tb.namespace().to_owned();
    tb.kubectl(&[
        "patch",
        "hta",
        NAME,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"minReplicas":1,"maxReplicas":1}}"#,
    ])
    .unwrap();
    let (pod, ip) = eventually("one ready pod, the Service in serve mode", 300, || async {
        let h = get(tb, &[&format!("hta/{NAME}")])?;
        let ready = ready_pods(tb, NAME);
        (h["status"]["mode"] == "Serve" && replicas(tb, NAME) == (1, 1) && ready.len() == 1)
            .then(|| ready[0].clone())
    })
    .await;
    let host = format!("{NAME}.{ns}");
    let addrs = [at(&ip, 8080), at(&ip, 15080), at(&cluster_ip(tb, NAME), 80)];
    println!(
        "installed: steady state on {pod}: {} req/s over {} connections, {} s a run, {} rounds; \
         {addrs:?}",
        args.rate, args.conns, args.duration, args.rounds
    );
    // Each answers before anything is measured.
    for (name, addr) in TARGETS.iter().zip(addrs) {
        let answer = send(addr, &host, "/", Duration::from_secs(10)).await;
        println!("installed: {name} {addr}: {answer:?}");
    }
    for (name, addr) in TARGETS.iter().zip(addrs) {
        let warm = h2load(args, addr, &host, args.warmup).await;
        println!("installed: warm-up {name}: {}", warm["summary"]);
    }
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for k in 0..TARGETS.len() {
            let t = (k + round) % TARGETS.len();
            let mut run = h2load(args, addrs[t], &host, args.duration).await;
            run["round"] = json!(round + 1);
            run["target"] = json!(TARGETS[t]);
            println!(
                "installed: round {} {}: {}",
                round + 1,
                TARGETS[t],
                run["summary"]
            );
            runs.push(run);
        }
    }
    json!({"pod": pod, "rate": args.rate, "conns": args.conns, "duration_s": args.duration,
           "warmup_s": args.warmup, "rounds": args.rounds,
           "addresses": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
           "runs": runs})
}

/// One `h2load --h1 --rps` run to `addr` for `secs`: requests done, 2xx, the rate it kept, and
/// the latency percentiles (µs) from its per-request log.
async fn h2load(args: &Args, addr: SocketAddr, host: &str, secs: u32) -> Value {
    let log = std::env::temp_dir().join(format!("installed-h2load-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new("h2load");
    command.args([
        "--h1",
        "-c",
        &args.conns.to_string(),
        "-m",
        "1",
        "--rps",
        &(args.rate / args.conns.max(1)).to_string(),
        "-D",
        &secs.to_string(),
        "--log-file",
        &log.display().to_string(),
        "-H",
        &format!(":authority: {host}"),
        &format!("http://{addr}/"),
    ]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap_or("");
    let number = |l: &str, i: usize| {
        l.split_whitespace()
            .nth(i)
            .and_then(|w| w.trim_end_matches([',', 's']).parse::<f64>().ok())
    };
    let finished = find("finished in");
    let requests = find("requests:");
    let statuses = find("status codes:");
    let mut us: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    let _ = std::fs::remove_file(&log);
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| inflight_testbed::cold_start::percentile(&us, p);
    let summary = json!({
        "req_s": number(finished, 3),
        "done": number(requests, 7),
        "ok_2xx": number(statuses, 2),
        "p50_us": pct(50.0), "p90_us": pct(90.0), "p99_us": pct(99.0),
        "max_us": us.last().copied(),
    });
    json!({"summary": summary, "h2load": [finished, requests, statuses]})
}

// ---------------------------------------------------------------------------------------------
// The report.

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Milliseconds to a tenth, thousands grouped (`1,870.7`), `–` for none.
fn f(x: &Value) -> String {
    let Some(x) = x.as_f64() else {
        return "–".into();
    };
    let text = format!("{:.1}", x.abs());
    let (whole, tenth) = text.split_once('.').unwrap_or((&text, "0"));
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}{grouped}.{tenth}", if x < 0.0 { "-" } else { "" })
}

fn cells(s: &Value) -> String {
    format!(
        "{} | {} | {}",
        f(&s["p50_ms"]),
        f(&s["p99_ms"]),
        f(&s["max_ms"])
    )
}

fn us(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{:.2} ms", x / 1000.0),
        Some(x) => format!("{x:.0} µs"),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[allow(clippy::too_many_lines)]
fn render(args: &Args, r: &Value) -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = today();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# inflight installed with Helm: cold start and steady-state latency\n"
    );
    let _ = writeln!(
        s,
        "Written by `{}` on {date} (commit {commit}), {cpus} CPUs ({cpu}), the one-node test bed \
         (`INFLIGHT_TESTBED={}`), in {:.1} min. Load average (1, 5, 15 min) before: {}; after: {}. \
         Nothing here is a target that is checked.\n",
        args.command,
        std::env::var("INFLIGHT_TESTBED").unwrap_or_else(|_| "default".into()),
        r["seconds"].as_f64().unwrap_or(0.0) / 60.0,
        r["load_before"].as_str().unwrap_or(""),
        r["load_after"].as_str().unwrap_or(""),
    );
    let _ = writeln!(
        s,
        "What ran: the chart `charts/inflight` installed with Helm as the end-to-end test does \
         (`inflight_testbed::chart::install`: release `inflight` in namespace `inflight`, \
         `image.tag=dev`, `image.pullPolicy=Never`, the chart's defaults otherwise: two replicas \
         of each part), real KEDA, and the demo app (`inflight_e2e::app`, `--latency {}`; \
         inflight-proxy added by the injector as a native sidecar) in a namespace labelled \
         `inflight.dev/inject=enabled` under the HTTPAutoscaler `{}`; `helm uninstall` at the end \
         ({}).\n",
        r["app_latency"].as_str().unwrap_or(""),
        r["hta_spec"],
        r["uninstalled"].as_str().unwrap_or(""),
    );
    if let Some(c) = r["cold_start"].as_object() {
        let c = Value::Object(c.clone());
        let _ = writeln!(
            s,
            "## Cold start on the installed system\n\n{} of {} activations answered 200 with \
             `X-Inflight-Cold-Start`, in {:.1} min. Each: wait until the app is at zero (no \
             replica, no pod left, the HTTPAutoscaler's mode `Proxy`), {} s more, then one \
             HTTP/1.1 request from this host to the Service's ClusterIP with `Host: app.<ns>` \
             (kube-proxy takes it to an activator, which holds it). Steps timed as \
             `bench/cold-start.sh` does (`inflight_testbed::cold_start`; see \
             [COLD-START.md](COLD-START.md#method)): each an arrival at the benchmark's process, \
             one clock. Percentiles by nearest rank (with fewer than 100 activations p99 is the \
             maximum); ms.\n",
            c["ok"],
            c["n"],
            c["seconds"].as_f64().unwrap_or(0.0) / 60.0,
            c["settle_s"],
        );
        let _ = writeln!(
            s,
            "| step | whose | p50 | p99 | max |\n|---|---|---:|---:|---:|"
        );
        for st in c["steps"].as_array().into_iter().flatten() {
            let to = st["to"].as_str().unwrap_or("");
            let whose = if matches!(to, "pushed" | "answered") {
                "ours"
            } else {
                "Kubernetes+KEDA"
            };
            let _ = writeln!(
                s,
                "| {} → {} | {whose} | {} |",
                short(st["from"].as_str().unwrap_or("")),
                short(to),
                cells(&st["ms"])
            );
        }
        let _ = writeln!(
            s,
            "\n| total | p50 | p99 | max |\n|---|---:|---:|---:|\n\
             | **ours**: (pushed − sent) + (answered − sidecar ready) | {} |\n\
             | **Kubernetes+KEDA**: sidecar ready − pushed | {} |\n\
             | request sent → response at the client | {} |\n\
             | the activator's own figure, `X-Inflight-Cold-Start` | {} |\n\
             | the injector's review of the new pod (inside \"KEDA scaled → pod created\") | {} |\n",
            cells(&c["ours"]),
            cells(&c["kubernetes_and_keda"]),
            cells(&c["total"]),
            cells(&c["cold_start_header"]),
            cells(&c["injector_review"]),
        );
        let _ = writeln!(
            s,
            "The pod's start as its containers' log lines tell it (containerd's timestamps):\n\n\
             | step | p50 | p99 | max |\n|---|---:|---:|---:|"
        );
        for st in c["log_steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} → {} | {} |",
                short(st["from"].as_str().unwrap_or("")),
                short(st["to"].as_str().unwrap_or("")),
                cells(&st["ms"])
            );
        }
        let _ = writeln!(
            s,
            "\nEach step's time after the request was sent:\n\n| step | p50 | p99 | max |\n|---|---:|---:|---:|"
        );
        for k in inflight_testbed::cold_start::OFFSETS {
            let _ = writeln!(s, "| {} | {} |", short(k), cells(&c["after_sent"][*k]));
        }
        let push = match c["no_push"].as_str() {
            None => "*pushed* is `true` on a StreamIsActive stream of the benchmark's own, opened \
                     before the request to the aggregator's scaler Service (ClusterIP:9091, one \
                     of its two replicas as kube-proxy picks) over mutual TLS with KEDA's own \
                     client certificate (the operator's Secret `keda/inflight-keda`), with the \
                     ScaledObjectRef KEDA sends: the push KEDA gets."
                .to_owned(),
            Some(why) => format!(
                "*pushed* is not timed: no StreamIsActive stream of our own could be opened \
                 ({why}); the steps from *held* to *KEDA scaled* are one, and ours is only the \
                 forward (answered − sidecar ready)."
            ),
        };
        let _ = writeln!(
            s,
            "\nWhat differs from the activator's scene (COLD-START.md), where the injector and the \
             operator ran in the benchmark's process: {push} The injector now runs in two pods: \
             its review time is the sum of its `review_duration` histograms read from both \
             pods' admin port (`:15092/metrics`, {} pods) before and after the activation, so a \
             review of another pod in between would be counted in. The operator's switch of the \
             Service back to serve mode is not on the first request's path (the activator \
             forwards straight to the pod's sidecar once `/readyz` answers 200) and is not timed. \
             No step of the operator or the injector comes from their logs or Events: Kubernetes' \
             Events have one second's resolution.\n",
            c["injectors"]
        );
        let _ = writeln!(
            s,
            "| # | {} | header | injector |\n|---|{}",
            inflight_testbed::cold_start::CHAIN[1..]
                .iter()
                .map(|k| short(k))
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(inflight_testbed::cold_start::CHAIN.len() + 1)
        );
        for a in c["activations"].as_array().into_iter().flatten() {
            let ok = if a["ok"] == true {
                String::new()
            } else {
                format!(" (NOT OK: {})", a["why"].as_str().unwrap_or(""))
            };
            let row: Vec<String> = inflight_testbed::cold_start::CHAIN[1..]
                .iter()
                .map(|k| f(&a["ms"][*k]))
                .collect();
            let _ = writeln!(
                s,
                "| {}{ok} | {} | {} | {} |",
                a["activation"],
                row.join(" | "),
                f(&a["cold_start_header_ms"]),
                f(&a["injector_review_ms"])
            );
        }
        s.push('\n');
    }
    if let Some(st) = r["steady_state"].as_object() {
        let _ = writeln!(
            s,
            "## Steady state: what the path adds\n\nThe app held at one replica (the \
             HTTPAutoscaler patched to minReplicas 1, maxReplicas 1; the Service in serve mode: \
             its EndpointSlice is the pod's sidecar, :15080), pod `{}`. `h2load --h1 -c {} -m 1 \
             --rps {} -D {}` ({} req/s in all, HTTP/1.1 keep-alive) from this host to each target \
             with `:authority: app.<ns>`, after a {} s warm-up run of each; {} rounds, the \
             targets' order rotated each round. Latency from h2load's per-request log (`--log-file`), \
             all requests; the client, kube-proxy, the pod and the rest of the bed share the 2 CPUs.\n\n\
             | target | path |\n|---|---|\n\
             | direct | this host → pod IP:8080 (the app) |\n\
             | sidecar | this host → pod IP:15080 (inflight-proxy → app) |\n\
             | service | this host → Service ClusterIP:80 (kube-proxy → pod IP:15080 → app) |\n",
            st["pod"].as_str().unwrap_or(""),
            st["conns"],
            st["rate"].as_u64().unwrap_or(0) / st["conns"].as_u64().unwrap_or(1).max(1),
            st["duration_s"],
            st["rate"],
            st["warmup_s"],
            st["rounds"],
        );
        let _ = writeln!(
            s,
            "| round | target | req/s | 2xx / done | p50 | p90 | p99 | max |\n|---:|---|---:|---:|---:|---:|---:|---:|"
        );
        let runs: Vec<&Value> = st["runs"].as_array().into_iter().flatten().collect();
        for run in &runs {
            let m = &run["summary"];
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                run["round"],
                run["target"].as_str().unwrap_or(""),
                m["req_s"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{x:.1}")),
                m["ok_2xx"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{x:.0}")),
                m["done"].as_f64().map_or("–".into(), |x| format!("{x:.0}")),
                us(m["p50_us"].as_f64()),
                us(m["p90_us"].as_f64()),
                us(m["p99_us"].as_f64()),
                us(m["max_us"].as_f64()),
            );
        }
        let of = |target: &str, round: &Value, k: &str| {
            runs.iter()
                .find(|r| r["target"] == target && r["round"] == *round)
                .and_then(|r| r["summary"][k].as_f64())
        };
        let _ = writeln!(
            s,
            "\nAdded latency, each round's run less the same round's *direct* run, and the median \
             over rounds:\n\n| added | round | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|"
        );
        let rounds: Vec<Value> = (1..=st["rounds"].as_u64().unwrap_or(0))
            .map(|i| json!(i))
            .collect();
        for (label, target) in [
            ("sidecar − direct (b − a)", "sidecar"),
            ("service − direct (c − a)", "service"),
        ] {
            let mut per_key: Vec<Vec<f64>> = vec![Vec::new(); 4];
            for round in &rounds {
                let cols: Vec<Option<f64>> = ["p50_us", "p90_us", "p99_us", "max_us"]
                    .iter()
                    .map(|k| Some(of(target, round, k)? - of("direct", round, k)?))
                    .collect();
                for (i, c) in cols.iter().enumerate() {
                    if let Some(c) = c {
                        per_key[i].push(*c);
                    }
                }
                let _ = writeln!(
                    s,
                    "| {label} | {round} | {} |",
                    cols.iter().map(|c| us(*c)).collect::<Vec<_>>().join(" | ")
                );
            }
            let _ = writeln!(
                s,
                "| **{label}** | median | {} |",
                per_key
                    .into_iter()
                    .map(|v| format!("**{}**", us(median(v))))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        s.push('\n');
    }
    s
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A step's name in the tables.
fn short(k: &str) -> &str {
    match k {
        "sent" => "held",
        "pushed" => "activation pushed",
        "scaled" => "KEDA scaled",
        "created" => "pod created",
        "scheduled" => "pod scheduled",
        "proxy_running" => "sidecar running",
        "app_running" => "app running",
        "ready" => "sidecar ready",
        "answered" => "forwarded, answered",
        "proxy_serving" => "proxy serving (log)",
        "app_serving" => "app serving (log)",
        "pod_ip" => "pod IP known",
        "kubelet_ready" => "pod Ready condition",
        other => other,
    }
}
