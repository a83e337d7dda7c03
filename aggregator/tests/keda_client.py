"""A KEDA-side client that is not our Rust code: Python grpcio, with stubs compiled by grpcio-tools
from our proto/externalscaler.proto. Driven by tests/keda_python.rs, which starts the aggregator,
the demo app and inflight-proxy in front of it; this script plays KEDA and sends the first request
through the proxy itself.

Environment: AGGREGATOR (host:port), PROXY (host:port of the proxy's data port), STUBS (a directory
holding externalscaler_pb2*.py), STREAMS (how many StreamIsActive streams to open).
Prints one JSON line with what it measured; any failed expectation raises, exiting non-zero.
"""

import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.environ["STUBS"])
import grpc  # noqa: E402
import externalscaler_pb2 as pb  # noqa: E402
import externalscaler_pb2_grpc as rpc  # noqa: E402

AGGREGATOR = os.environ["AGGREGATOR"]
PROXY = os.environ["PROXY"]
STREAMS = int(os.environ.get("STREAMS", "50"))

METADATA = {
    "workload": "deployment/web",
    "target": "2",
    "window": "60s",
    "scaleToZeroAfter": "2s",
}


def ref(**overrides):
    metadata = dict(METADATA)
    for key, value in overrides.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    return pb.ScaledObjectRef(name="web", namespace="shop", scalerMetadata=metadata)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


channel = grpc.insecure_channel(AGGREGATOR)
grpc.channel_ready_future(channel).result(timeout=10)
scaler = rpc.ExternalScalerStub(channel)
result = {}

# GetMetricSpec: one metric, stable name, target in both fields.
spec = scaler.GetMetricSpec(ref())
expect(len(spec.metricSpecs) == 1, f"one metric spec: {spec}")
name = spec.metricSpecs[0].metricName
expect(name == "inflight-shop-deployment-web", f"metric name {name!r}")
expect(spec.metricSpecs[0].targetSize == 2 and spec.metricSpecs[0].targetSizeFloat == 2.0, f"{spec}")

# The proxy reports but nothing is served: once the 2 s delay has passed since the aggregator
# started, the workload is inactive and its concurrency 0.
time.sleep(2.5)
expect(scaler.IsActive(ref()).result is False, "idle workload inactive")
idle = scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName=name))
expect(len(idle.metricValues) == 1 and idle.metricValues[0].metricValueFloat == 0.0, f"{idle}")

# Many concurrent StreamIsActive streams: each says false first, then true the moment a request is
# in flight behind the proxy.
first = [None] * STREAMS
woke = [None] * STREAMS
slept = [None] * STREAMS
opened = threading.Barrier(STREAMS + 1)
streams = []


def watch(i):
    call = scaler.StreamIsActive(ref())
    streams.append(call)
    for n, message in enumerate(call):
        if n == 0:
            first[i] = message.result
            opened.wait(timeout=30)
        elif message.result and woke[i] is None:
            woke[i] = time.monotonic()
        elif not message.result and woke[i] is not None:
            slept[i] = time.monotonic()
            return


threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(STREAMS)]
for t in threads:
    t.start()
opened.wait(timeout=30)
expect(all(f is False for f in first), f"every stream starts with false: {first}")

# The first request after idling: the proxy reports at once, the aggregator pushes true.
sent = time.monotonic()
answer = {}


def request():
    with urllib.request.urlopen(f"http://{PROXY}/sleep/1500", timeout=30) as r:
        answer["status"] = r.status


requester = threading.Thread(target=request)
requester.start()
deadline = time.monotonic() + 10
while any(w is None for w in woke) and time.monotonic() < deadline:
    time.sleep(0.005)
expect(all(w is not None for w in woke), f"every stream got true: {sum(w is not None for w in woke)}/{STREAMS}")
delays = sorted((w - sent) * 1000 for w in woke)
result["push_ms_p50"] = round(delays[len(delays) // 2], 1)
result["push_ms_max"] = round(delays[-1], 1)

# While the request is in flight: active, and a concurrency above 0 (the burst window sees it).
expect(scaler.IsActive(ref()).result is True, "active with a request in flight")
time.sleep(1.2)
busy = scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="s0-whatever"))
expect(len(busy.metricValues) == 1, f"{busy}")
expect(busy.metricValues[0].metricName == "s0-whatever", "the metric comes back under the name asked for")
result["concurrency_while_busy"] = busy.metricValues[0].metricValueFloat
expect(busy.metricValues[0].metricValueFloat > 0.0, f"{busy}")
rate = scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(metric="requestRate"), metricName=name))
result["request_rate"] = rate.metricValues[0].metricValueFloat
requester.join()
expect(answer.get("status") == 200, f"the request through the proxy: {answer}")

# Idle for scaleToZeroAfter (2 s) after the request ended: every stream says false.
deadline = time.monotonic() + 15
while any(s is None for s in slept) and time.monotonic() < deadline:
    time.sleep(0.05)
expect(all(s is not None for s in slept), f"every stream got false: {sum(s is not None for s in slept)}/{STREAMS}")
for call in streams:
    call.cancel()

# Malformed or refused metadata: INVALID_ARGUMENT naming the key, for every RPC.
bad = [
    ("workload", ref(workload=None)),
    ("workload", ref(workload="web")),
    ("target", ref(target=None)),
    ("target", ref(target="ten")),
    ("metric", ref(metric="rps")),
    ("window", ref(window="soon")),
    ("window", ref(window="2s")),  # shorter than the burst window (6 s)
    ("namespace", ref(namespace="payments")),  # not the ScaledObject's namespace
    ("scaleToZeroAfter", ref(scaleToZeroAfter="later")),
]
checked = 0
for key, r in bad:
    for call in (
        lambda r=r: scaler.IsActive(r),
        lambda r=r: scaler.GetMetricSpec(r),
        lambda r=r: scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r, metricName=name)),
        lambda r=r: next(iter(scaler.StreamIsActive(r))),
    ):
        try:
            call()
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{key}: {e.code()}")
            expect(f'"{key}"' in e.details(), f"{key} named in {e.details()!r}")
            checked += 1
        else:
            raise AssertionError(f"{key}: no error")
result["invalid_argument_checks"] = checked
print(json.dumps(result))
