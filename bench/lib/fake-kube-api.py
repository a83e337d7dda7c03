#!/usr/bin/env python3
"""A static, read-only stand-in for the Kubernetes API server, for the KEDA
HTTP add-on interceptor benchmark target only.

The interceptor (github.com/kedacore/http-add-on/interceptor) has no static
routing table: it builds its routing table from InterceptorRoute and
HTTPScaledObject objects and its "is the backend ready" cache from
EndpointSlices, all read through controller-runtime informers (LIST then
WATCH) from a Kubernetes API server found through a kubeconfig.

This server answers exactly those reads, from a fixed set of objects given as
JSON on the command line (see bench/run.sh), and nothing else:

  * discovery: /version, /api, /apis, /api/v1, /apis/<group>/<version>
  * LIST of every resource below (namespace and labelSelector filters honoured)
  * WATCH of every resource: held open with no events until the client's
    timeoutSeconds (or at most --watch-max seconds), then closed; with
    sendInitialEvents=true it first replays the objects and the
    initial-events-end bookmark, as a real API server does.

There is no write path, no admission, no versioning beyond resourceVersion "1".
It is not on the request path of the benchmark: the interceptor reads it at
start-up and keeps the objects in its informer caches.  Binds 127.0.0.1 only.
"""
import argparse
import json
import select
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# (group, version, plural) -> (kind, namespaced)
RESOURCES = {
    ("", "v1", "services"): "Service",
    ("", "v1", "configmaps"): "ConfigMap",
    ("", "v1", "namespaces"): "Namespace",
    ("discovery.k8s.io", "v1", "endpointslices"): "EndpointSlice",
    ("http.keda.sh", "v1beta1", "interceptorroutes"): "InterceptorRoute",
    ("http.keda.sh", "v1alpha1", "httpscaledobjects"): "HTTPScaledObject",
}
NAMESPACED = {"Namespace": False}
RV = "1"


def api_version(group, version):
    return f"{group}/{version}" if group else version


class Store:
    def __init__(self, objects):
        self.by_kind = {}
        for o in objects:
            md = o.setdefault("metadata", {})
            md.setdefault("resourceVersion", RV)
            md.setdefault("uid", "00000000-0000-0000-0000-%012x" % zlib.crc32((md.get("namespace", "") + "/" + md.get("name", "")).encode()))
            md.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
            md.setdefault("generation", 1)
            self.by_kind.setdefault(o["kind"], []).append(o)

    def list(self, kind, namespace, selector):
        out = []
        for o in self.by_kind.get(kind, []):
            md = o["metadata"]
            if namespace and md.get("namespace") != namespace:
                continue
            labels = md.get("labels", {})
            if selector and not all(labels.get(k) == v for k, v in selector.items()):
                continue
            out.append(o)
        return out


def parse_selector(s):
    sel = {}
    for part in filter(None, (s or "").split(",")):
        if "==" in part:
            k, v = part.split("==", 1)
        elif "=" in part and "!=" not in part:
            k, v = part.split("=", 1)
        else:
            # set-based or inequality selectors are not needed by the interceptor;
            # refuse loudly rather than answer wrongly.
            raise ValueError("unsupported label selector: " + part)
        sel[k.strip()] = v.strip()
    return sel


def make_handler(store, port, watch_max, log):
    groups = {}
    for (g, v, plural), kind in RESOURCES.items():
        groups.setdefault(g, {}).setdefault(v, []).append((plural, kind))

    def resource_list(g, v):
        res = []
        for plural, kind in groups.get(g, {}).get(v, []):
            res.append({
                "name": plural, "singularName": kind.lower(),
                "namespaced": NAMESPACED.get(kind, True), "kind": kind,
                "verbs": ["get", "list", "watch"],
            })
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": api_version(g, v), "resources": res}

    def group_list():
        out = []
        for g, versions in sorted(groups.items()):
            if not g:
                continue
            vs = sorted(versions)
            pref = "v1beta1" if "v1beta1" in vs else vs[-1]
            out.append({"name": g,
                        "versions": [{"groupVersion": f"{g}/{x}", "version": x} for x in vs],
                        "preferredVersion": {"groupVersion": f"{g}/{pref}", "version": pref}})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            if log:
                log.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))
                log.flush()

        def send_json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self):
            self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404,
                                 "message": "not served by the benchmark's static API: " + self.path})

        def do_GET(self):
            u = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(u.query).items()}
            p = [x for x in u.path.split("/") if x]
            if p == ["version"]:
                return self.send_json(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-static-bench",
                                            "platform": "linux/amd64"})
            if p == ["api"]:
                return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": [
                                                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}]})
            if p == ["apis"]:
                return self.send_json(200, group_list())
            if p == ["api", "v1"]:
                return self.send_json(200, resource_list("", "v1"))
            if len(p) == 3 and p[0] == "apis" and p[2] in groups.get(p[1], {}):
                return self.send_json(200, resource_list(p[1], p[2]))
            # resource paths
            if p[:1] == ["api"] and len(p) >= 3:
                g, v, rest = "", p[1], p[2:]
            elif p[:1] == ["apis"] and len(p) >= 4:
                g, v, rest = p[1], p[2], p[3:]
            else:
                return self.not_found()
            ns = None
            if len(rest) >= 3 and rest[0] == "namespaces":
                ns, rest = rest[1], rest[2:]
            if not rest or (g, v, rest[0]) not in RESOURCES:
                return self.not_found()
            kind = RESOURCES[(g, v, rest[0])]
            try:
                sel = parse_selector(q.get("labelSelector"))
            except ValueError as e:
                return self.send_json(400, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "code": 400, "message": str(e)})
            items = store.list(kind, ns, sel)
            if len(rest) == 2:  # GET one object
                for o in items:
                    if o["metadata"]["name"] == rest[1]:
                        return self.send_json(200, o)
                return self.not_found()
            if q.get("watch") in ("true", "1"):
                return self.watch(g, v, kind, items, q)
            return self.send_json(200, {"kind": kind + "List", "apiVersion": api_version(g, v),
                                        "metadata": {"resourceVersion": RV}, "items": items})

        def chunk(self, data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def watch(self, g, v, kind, items, q):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                if q.get("sendInitialEvents") == "true":
                    for o in items:
                        self.chunk(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n")
                    self.chunk(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version(g, v),
                        "metadata": {"resourceVersion": RV,
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}}).encode() + b"\n")
                limit = min(float(q.get("timeoutSeconds", watch_max)), watch_max)
                deadline = time.monotonic() + limit
                while time.monotonic() < deadline:
                    # end early when the client goes away (readable with EOF)
                    r, _, _ = select.select([self.connection], [], [],
                                            min(1.0, max(0.0, deadline - time.monotonic())))
                    if r and not self.connection.recv(1, socket.MSG_PEEK):
                        return
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            self.close_connection = True

    return H


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--objects", required=True, help="JSON file: a list of Kubernetes objects")
    ap.add_argument("--watch-max", type=float, default=600.0)
    ap.add_argument("--log")
    ap.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds")
    a = ap.parse_args()
    with open(a.objects) as f:
        store = Store(json.load(f))
    log = open(a.log, "a") if a.log else None
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(store, a.port, a.watch_max, log))
    srv.daemon_threads = True
    threading.Timer(a.lifetime, srv.shutdown).start()
    print("fake-kube-api listening on 127.0.0.1:%d" % a.port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
