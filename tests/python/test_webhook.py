"""The real webhook binary over TLS, with the test playing the kube-apiserver: the
patch is applied by the apiserver's own library (evanphx/json-patch, at the pinned
release's version) and by an independent RFC 6902 implementation (jsonpatch), which
must agree, and the result validated against the Kubernetes OpenAPI schema
(kubernetes-validate --strict). test_control_plane.py sends the same pods through a
real apiserver."""

import copy
import json
import re
from fractions import Fraction
import signal
import socket
import ssl
import subprocess
import threading
import time

import jsonpatch
import kubernetes_validate
import pytest
import trustme

from cluster_tools import tool

from webhook_harness import ROOT, FIXTURE_FLAGS, FIXTURES, Webhook, decode_patch, fixture_flags, issue, review_of

K8S_VERSION = "1.33.0"


def validate_pod(pod):
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def apiserver_apply(pod, answer, tmp_path):
    """The answer's patch applied as the apiserver applies it (evanphx/json-patch,
    after decoding the review as the apiserver does)."""
    original = tmp_path / "pod.json"
    original.write_text(json.dumps(pod))
    proc = subprocess.run([str(tool("apply-patch")), str(original)], input=json.dumps(answer),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fixture_cases():
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "pod.json").exists())


@pytest.fixture(scope="module")
def webhooks(tmp_path_factory):
    """The webhook started with given flags: one process per set of flags."""
    started = {}

    def with_flags(flags):
        if tuple(flags) not in started:
            started[tuple(flags)] = Webhook(tmp_path_factory.mktemp("webhook"), flags=list(flags))
        return started[tuple(flags)]

    yield with_flags
    for hook in started.values():
        hook.stop()


@pytest.fixture(scope="module")
def webhook(webhooks):
    return webhooks(FIXTURE_FLAGS)


def container_name(flags):
    names = [f.split("=", 1)[1] for f in flags if f.startswith("--container-name=")]
    return names[-1] if names else MANAGER


@pytest.mark.parametrize("case", fixture_cases())
def test_fixture_pod_as_the_apiserver_would(webhooks, case, tmp_path):
    """Each golden fixture, sent to the webhook started with the fixture's flags."""
    flags = fixture_flags(case)
    webhook, manager = webhooks(flags), container_name(flags)
    pod = json.loads((FIXTURES / case / "pod.json").read_text())
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    validate_pod(pod)

    review = review_of(pod)
    status, answer = webhook.post(review)
    assert status == 200, answer
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]

    if expected["decision"] == "deny":
        assert response["allowed"] is False
        assert response["status"]["message"] == expected["message"]
        assert "patch" not in response
        return
    assert response["allowed"] is True
    if expected["decision"] == "skip":
        assert "patch" not in response and "patchType" not in response
        return

    ops = decode_patch(response)
    assert ops == expected["patch"]
    patched = jsonpatch.apply_patch(pod, ops)
    assert apiserver_apply(pod, answer, tmp_path) == patched, "evanphx/json-patch and jsonpatch disagree"
    validate_pod(patched)
    if expected["decision"] == "reorder":
        (op,) = ops
        assert op["op"] == "move" and op["path"].endswith("/0")
        assert_only_moved_to_front(pod, patched, manager)
    else:
        assert response.get("warnings", []) == expected["warnings"]
        # Only additions: everything the pod had is still there, unchanged.
        for key in ("containers", "initContainers", "volumes"):
            for item in pod["spec"].get(key) or []:
                assert item in patched["spec"][key], f"{key} lost or changed {item.get('name')}"
        assert_qos_kept(pod, patched, response.get("warnings", []))
        # reinvocationPolicy: IfNeeded, after a later webhook put a container in front.
        list_name = "initContainers" if any(c["name"] == manager for c in patched["spec"].get("initContainers") or []) \
            else "containers"
        behind = copy.deepcopy(patched)
        behind["spec"][list_name].insert(0, {"name": "added-later", "image": "busybox:1.36"})
        status, moved = webhook.post(review_of(behind))
        assert status == 200 and moved["response"]["allowed"] is True
        ops = decode_patch(moved["response"])
        assert ops == [{"op": "move", "from": f"/spec/{list_name}/1", "path": f"/spec/{list_name}/0"}]
        patched = jsonpatch.apply_patch(behind, ops)
        assert apiserver_apply(behind, moved, tmp_path) == patched
        validate_pod(patched)
        assert_only_moved_to_front(behind, patched, manager)

    # reinvocationPolicy: IfNeeded sends the patched pod again: nothing more to do.
    status, again = webhook.post(review_of(patched))
    assert status == 200
    assert again["response"]["allowed"] is True
    assert "patch" not in again["response"]


MANAGER = "aws-ip-mgmt"


def assert_only_moved_to_front(before, after, name):
    for key in ("containers", "initContainers"):
        items = before["spec"].get(key) or []
        if any(c["name"] == name for c in items):
            manager = next(c for c in items if c["name"] == name)
            assert after["spec"][key] == [manager] + [c for c in items if c["name"] != name]
    rest = lambda pod: {k: v for k, v in pod["spec"].items() if k not in ("containers", "initContainers")}
    assert rest(after) == rest(before) and after["metadata"] == before["metadata"]


# Kubernetes' QoS class (pkg/apis/core/helper/qos ComputePodQOS), with quantities
# parsed here independently of the webhook: exact fractions, rounded up to nano units
# as resource.Quantity does.
QUANTITY = re.compile(r"^([+-]?)([0-9]+\.?[0-9]*|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
SUFFIX = {None: 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text):
    m = QUANTITY.match(str(text))
    assert m, f"{text!r} is not a quantity"
    sign, number, suffix = m.groups()
    factor = Fraction(10) ** int(suffix[1:]) if suffix and suffix[0] in "eE" and len(suffix) > 1 else SUFFIX[suffix]
    value = Fraction(number) * factor * 10**9
    nanos = -((-value.numerator) // value.denominator)  # ceiling
    return -nanos if sign == "-" else nanos


def pod_qos(pod):
    requests, limits, guaranteed = {}, {}, True
    for c in (pod["spec"].get("containers") or []) + (pod["spec"].get("initContainers") or []):
        resources = c.get("resources") or {}
        for name, q in (resources.get("requests") or {}).items():
            if name in ("cpu", "memory") and quantity(q) > 0:
                requests[name] = requests.get(name, 0) + quantity(q)
        found = set()
        for name, q in (resources.get("limits") or {}).items():
            if name in ("cpu", "memory") and quantity(q) > 0:
                found.add(name)
                limits[name] = limits.get(name, 0) + quantity(q)
        if found != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and all(limits.get(n) == q for n, q in requests.items()) and len(requests) == len(limits):
        return "Guaranteed"
    return "Burstable"


def assert_qos_kept(pod, patched, warnings):
    before, after = pod_qos(pod), pod_qos(patched)
    warned = any("Burstable" in w for w in warnings)
    if before == "BestEffort":
        # Expected: the manager has requests, so the pod cannot stay BestEffort.
        assert after == "Burstable"
    elif before == "Guaranteed" and warned:
        assert after == "Burstable", "the warning says Burstable"
    else:
        assert after == before and not warned, f"{before} became {after}"


def test_the_qos_port_agrees_with_kubernetes_examples():
    assert quantity("1") == quantity("1000m") and quantity("1Gi") == quantity("1073741824")
    assert quantity("1e3") == quantity("1k") and quantity("1e-10") == 1 and quantity(".5") == quantity("500m")
    guaranteed = {"spec": {"containers": [{"name": "a", "resources": {
        "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1024Mi"}}}]}}
    assert pod_qos(guaranteed) == "Guaranteed"
    burstable = copy.deepcopy(guaranteed)
    burstable["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]
    assert pod_qos(burstable) == "Burstable"
    assert pod_qos({"spec": {"containers": [{"name": "a"}]}}) == "BestEffort"


def test_resources_annotation_end_to_end(webhook):
    pod = json.loads((FIXTURES / "guaranteed-sidecar" / "pod.json").read_text())
    assert pod_qos(pod) == "Guaranteed"
    for value, qos, warns in [
        ("limits.cpu=50m,limits.memory=32Mi", "Guaranteed", False),
        ("requests.cpu=20m", "Burstable", True),
    ]:
        pod["metadata"]["annotations"]["ipmgmt.aws/resources"] = value
        _, answer = webhook.post(review_of(pod))
        patched = jsonpatch.apply_patch(pod, decode_patch(answer["response"]))
        validate_pod(patched)
        assert pod_qos(patched) == qos, value
        assert any("Burstable" in w for w in answer["response"].get("warnings", [])) == warns, value
    pod["metadata"]["annotations"]["ipmgmt.aws/resources"] = "requests.cpu=1,limits.cpu=500m"
    _, answer = webhook.post(review_of(pod))
    assert answer["response"]["allowed"] is False
    message = answer["response"]["status"]["message"]
    assert "ipmgmt.aws/resources" in message and "greater than the cpu limit 500m" in message, message


def test_native_sidecar_of_another_webhook_keeps_restart_policy(webhook):
    pod = json.loads((FIXTURES / "init-existing-init-containers" / "pod.json").read_text())
    status, answer = webhook.post(review_of(pod))
    patched = jsonpatch.apply_patch(pod, decode_patch(answer["response"]))
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["aws-ip-mgmt", "istio-proxy", "sysctl-setup"]
    assert patched["spec"]["initContainers"][1]["restartPolicy"] == "Always"


def test_missing_networks_annotation_warns(webhook):
    pod = json.loads((FIXTURES / "no-networks-annotation" / "pod.json").read_text())
    _, answer = webhook.post(review_of(pod))
    assert answer["response"]["allowed"] is True
    assert any("k8s.v1.cni.cncf.io/networks" in w for w in answer["response"]["warnings"])


def test_other_operations_pass_untouched(webhook):
    pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
    for op in ("UPDATE", "DELETE", "CONNECT"):
        status, answer = webhook.post(review_of(pod, operation=op))
        assert status == 200
        assert answer["response"]["allowed"] is True and "patch" not in answer["response"], op


BAD_BODIES = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"AdmissionReview"',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}',
    b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}',
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}',
    b"\xff\xfe\x00garbage",
    b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[" * 100000,
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_unreadable_review_gets_400_and_the_server_stays_up(webhook, body):
    status, text = webhook.post(body)
    assert status == 400, text
    assert "AdmissionReview" in text or "request body" in text, text
    pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
    status, answer = webhook.post(review_of(pod))
    assert status == 200 and "patch" in answer["response"]


def test_truncated_reviews_never_break_the_server(webhook):
    body = json.dumps(review_of(json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text()))).encode()
    conn = webhook.connect()
    for cut in range(0, len(body), 97):
        status, _ = webhook.post(body[:cut], conn=conn)
        assert status == 400, cut
    conn.close()
    assert webhook.proc.poll() is None


def test_body_over_the_limit_is_refused(webhook):
    status, _ = webhook.post(b"{" + b" " * (4 * 1024 * 1024) + b"}")
    assert status == 413
    assert webhook.proc.poll() is None


def test_only_post_mutate_is_served(webhook):
    conn = webhook.connect()
    conn.request("GET", "/mutate")
    assert conn.getresponse().status == 405
    conn.close()
    status, _ = webhook.post(b"{}", path="/validate")
    assert status == 404


def test_slow_headers_are_cut_off(webhook):
    ctx = webhook.context()
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            data = tls.recv(1024)
            # Closed (or answered 408) by the server, well before our own 10 s timeout.
            assert time.monotonic() - started < 8
            assert data == b"" or b"408" in data


def test_only_tls_1_2_and_1_3(webhook):
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.minimum_version = version
            ctx.maximum_version = version
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            continue  # this OpenSSL cannot even offer it
        with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as sock:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                ctx.wrap_socket(sock, server_hostname="localhost")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = webhook.context()
        ctx.minimum_version = version
        ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_http2_as_the_apiserver_speaks_it(webhook, tmp_path):
    ca_file = tmp_path / "ca.pem"
    webhook.ca.cert_pem.write_to_path(str(ca_file))
    body = tmp_path / "review.json"
    pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
    body.write_text(json.dumps(review_of(pod, uid="h2-uid")))
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(ca_file), "-w", "\n%{http_version} %{http_code}",
         "-H", "Content-Type: application/json", "--data-binary", "@" + str(body),
         f"https://localhost:{webhook.port}/mutate", "--resolve", f"localhost:{webhook.port}:127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    payload, trailer = out.rsplit("\n", 1)
    assert trailer == "2 200", out
    assert json.loads(payload)["response"]["uid"] == "h2-uid"


def test_health_readiness_and_metrics(webhook):
    assert webhook.admin_get("/healthz") == (200, "ok\n")
    assert webhook.admin_get("/readyz") == (200, "ready\n")
    before = webhook.admin_get("/metrics")[1]
    pod = json.loads((FIXTURES / "invalid-mode" / "pod.json").read_text())
    webhook.post(review_of(pod))
    status, text = webhook.admin_get("/metrics")
    assert status == 200

    def value(metrics, name):
        for line in metrics.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in metrics:\n{metrics}")

    denied = 'ipmgmt_webhook_reviews_total{outcome="denied"}'
    assert value(text, denied) == value(before, denied) + 1
    assert value(text, "ipmgmt_webhook_review_duration_seconds_count") > value(before, "ipmgmt_webhook_review_duration_seconds_count")
    assert value(text, "ipmgmt_webhook_tls_certificate_expiry_timestamp_seconds") > time.time()


def test_the_readme_documents_exactly_the_metrics_served(webhook):
    """The README's metric table and /metrics name the same families."""
    import re

    served = set(re.findall(r"^# TYPE (\S+) ", webhook.admin_get("/metrics")[1], re.M))
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\s*\| `(ipmgmt_webhook_[a-z_]+?)(?:_total)?(?:\{[^`]*\})?` \|", readme, re.M))
    assert documented == served, f"README: {sorted(documented)}; /metrics: {sorted(served)}"


def test_a_review_without_its_pod_is_an_error_not_a_denial(webhook):
    review = review_of({"metadata": {"name": "gone"}}, uid="no-object-uid")
    del review["request"]["object"]
    before = webhook.admin_get("/metrics")[1]
    status, answer = webhook.post(review)
    assert status == 200 and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    entry = webhook.wait_for_log(lambda e: e.get("span", {}).get("uid") == "no-object-uid")
    assert (entry["level"], entry["message"]) == ("WARN", "answered with an error"), entry
    assert "no object" in entry["reason"]
    error = 'ipmgmt_webhook_reviews_total{outcome="error"} '
    count = lambda text: [float(l.split()[-1]) for l in text.splitlines() if l.startswith(error)][0]
    assert count(webhook.admin_get("/metrics")[1]) == count(before) + 1


def test_logs_have_one_span_per_review_and_no_objects(webhooks):
    debug = webhooks(FIXTURE_FLAGS + ["--log-level=debug"])
    pod = json.loads((FIXTURES / "role-arn-annotation" / "pod.json").read_text())
    debug.post(review_of(pod, uid="span-uid-1"))
    entry = debug.wait_for_log(lambda e: e.get("span", {}).get("uid") == "span-uid-1")
    assert (entry["level"], entry["message"]) == ("DEBUG", "injected the IP manager"), entry
    assert entry["span"]["namespace"] == "core5g"
    assert entry["span"]["pod"] == "upf-6d9f7c8b5d-*"
    assert entry["mode"] == "sidecar"
    text = json.dumps(debug.logs)
    assert "role/upf-ipmgmt" not in text and "registry.example.com" not in text


def metric(webhook, line_start):
    text = webhook.admin_get("/metrics")[1]
    return [float(l.split()[-1]) for l in text.splitlines() if l.startswith(line_start)][0]


def test_at_info_an_injection_is_counted_and_a_denial_logged(webhook):
    """The chart's level: no line for a pod that got what it asked for, one for a
    pod that was refused, each review counted by outcome."""
    injected = 'ipmgmt_webhook_reviews_total{outcome="injected"} '
    denied = 'ipmgmt_webhook_reviews_total{outcome="denied"} '
    before = metric(webhook, injected), metric(webhook, denied)
    pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
    status, answer = webhook.post(review_of(pod, uid="quiet-uid"))
    assert status == 200 and "patch" in answer["response"]
    bad = json.loads((FIXTURES / "invalid-mode" / "pod.json").read_text())
    status, answer = webhook.post(review_of(bad, uid="denied-uid"))
    assert status == 200 and answer["response"]["allowed"] is False
    entry = webhook.wait_for_log(lambda e: e.get("span", {}).get("uid") == "denied-uid")
    assert (entry["level"], entry["message"]) == ("INFO", "denied"), entry
    assert entry["reason"]
    assert not [e for e in webhook.logs if e.get("span", {}).get("uid") == "quiet-uid"]
    assert (metric(webhook, injected), metric(webhook, denied)) == (before[0] + 1, before[1] + 1)


def openssl_handshake(port, server_name):
    """A TLS handshake that sends `server_name` as SNI whatever it is (Python's ssl
    leaves an IP address out); True when it completed."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name, "-brief"],
        input="", capture_output=True, text=True, timeout=30,
    )
    return "CONNECTION ESTABLISHED" in out.stderr, out.stderr


def test_sni_that_is_no_host_name_costs_no_warning_per_connection(webhook):
    """An IP address as SNI is ignored (RFC 6066 allows host names only) and the
    handshake completes; `host:port` is refused by rustls with illegal_parameter.
    Neither writes a line at the chart's log level, however many connections; the
    refusals are counted."""
    refused = 'ipmgmt_webhook_tls_handshake_failures_total{reason="refused"} '
    before = metric(webhook, refused)
    start = len(webhook.logs)
    for _ in range(3):
        ok, out = openssl_handshake(webhook.port, "127.0.0.1")
        assert ok, out
        ok, out = openssl_handshake(webhook.port, f"localhost:{webhook.port}")
        assert not ok and "illegal parameter" in out, out
    # A line logged after them all: anything they logged is in by then.
    webhook.post(review_of(json.loads((FIXTURES / "invalid-mode" / "pod.json").read_text()), uid="sni-end"))
    webhook.wait_for_log(lambda e: e.get("span", {}).get("uid") == "sni-end")
    lines = [e for e in webhook.logs[start:] if e.get("span", {}).get("uid") != "sni-end"]
    assert lines == [], lines
    assert metric(webhook, refused) == before + 3


def test_certificate_rotation_under_load(tmp_path):
    new_ca = trustme.CA()
    hook = Webhook(tmp_path, cas=[new_ca], reload_seconds=1)
    try:
        pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
        old_cert = hook.served_certificate()
        failures, done, stop = [], [0], threading.Event()

        def client(keep_alive):
            conn = hook.connect() if keep_alive else None
            while not stop.is_set():
                try:
                    status, answer = hook.post(review_of(pod), conn=conn)
                    if status != 200 or "patch" not in answer["response"]:
                        failures.append((status, answer))
                    done[0] += 1
                except Exception as e:  # any failure counts
                    failures.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in (True, True, False, False)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        hook.secret.publish(*issue(new_ca))
        deadline = time.monotonic() + 10
        while hook.served_certificate() == old_cert:
            assert time.monotonic() < deadline, "renewed certificate never served"
            time.sleep(0.1)
        new_cert = hook.served_certificate()

        # A renewal caught half-written: the last good pair keeps serving.
        crt, key = issue(trustme.CA())
        hook.secret.publish(crt[: len(crt) // 2], key)
        hook.wait_for_log(lambda e: "last good" in e.get("message", ""))
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert done[0] > 50
        assert hook.served_certificate() == new_cert
        assert hook.proc.poll() is None
    finally:
        hook.stop()


def test_sigterm_unready_then_drain_then_exit(tmp_path):
    hook = Webhook(tmp_path, extra_args=["--shutdown-delay-seconds", "2", "--drain-timeout-seconds", "5"])
    try:
        pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
        conn = hook.connect()
        assert hook.post(review_of(pod), conn=conn)[0] == 200
        hook.terminate(signal.SIGTERM)
        hook.wait_for_log(lambda e: "shutting down" in e.get("message", ""))
        # Unready at once, but still answering during the delay, on old and new connections.
        assert hook.admin_get("/readyz")[0] == 503
        assert hook.post(review_of(pod), conn=conn)[0] == 200
        assert hook.post(review_of(pod))[0] == 200
        assert hook.proc.wait(timeout=15) == 0
        hook.wait_for_log(lambda e: e.get("message") == "drained")
    finally:
        hook.stop()


def test_ipmgr_env_twin_keeps_commas_inside_values(tmp_path):
    # One environment variable holds several: only a comma before an upper-case NAME=
    # starts the next one.
    hook = Webhook(tmp_path, env={
        "IPMGMT_IPMGR_ENV": "IPMGR_LOG_LEVEL=info,aws_config=warn,NO_PROXY=169.254.169.254,10.0.0.0/8",
    })
    try:
        pod = json.loads((FIXTURES / "init-no-init-containers" / "pod.json").read_text())
        _, answer = hook.post(review_of(pod))
        patched = jsonpatch.apply_patch(pod, decode_patch(answer["response"]))
    finally:
        hook.stop()
    env = {e["name"]: e.get("value") for e in patched["spec"]["initContainers"][0]["env"]}
    assert env["IPMGR_LOG_LEVEL"] == "info,aws_config=warn"
    assert env["NO_PROXY"] == "169.254.169.254,10.0.0.0/8"
    assert "aws_config" not in env


def test_start_fails_clearly_on_bad_certificate(tmp_path):
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    from webhook_harness import WEBHOOK_BIN

    out = subprocess.run(
        [str(WEBHOOK_BIN), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"), "--image", "x"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0
    assert "tls.crt" in out.stderr and "no PEM certificate" in out.stderr, out.stderr
