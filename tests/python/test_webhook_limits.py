"""Bounded work per client: the real webhook in a memory cgroup of the chart's limit
(128 MiB), with its default body budget and stream cap and a short body deadline,
under hundreds of slow clients: HTTP/1.1 connections that announce a 3 MB body and
then stall, trickle, or send most of it and stall, and HTTP/2 connections that open
more streams than allowed. Reviews from a well-behaved client are answered at once
throughout, the stalled clients at the deadline, and the process stays far from its
limit.

Without the bounds, the clients that send most of their body alone would make it
buffer 290 MB: the webhook before them was OOM-killed here within seconds.

The cgroup is made here (cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`); a
machine where that fails fails the test: CI runs as root."""

import json
import os
import pathlib
import socket
import ssl
import struct
import threading
import time

import pytest

import webhook_harness
from webhook_harness import FIXTURE_FLAGS, FIXTURES, Webhook, decode_patch, review_of

LIMIT = 128 * 1024 * 1024  # the chart's webhook.resources.limits.memory
BUDGET = 16 * 1024 * 1024  # --body-buffer-mib's default, which the test keeps
STREAMS = 32  # --max-concurrent-streams's default, which the test keeps
DEADLINE = 3  # --body-read-timeout-seconds, short so that the test sees it pass
ANNOUNCED = 3_000_000  # under the 3 MiB + 64 KiB body limit
FLOOD = 2_900_000  # what a flooding client sends of it before it stalls
BLOCK = 16 * 1024  # what a body is charged for at least, once it is more than one chunk
STALLERS, TRICKLERS, FLOODERS, H2_CONNECTIONS, H2_STREAMS = 60, 40, 100, 4, 64
FLOOD_SECONDS = 8
# A stalled client is answered at the deadline, and sees it after at most this much more
# (measured: 0.30 s at most, of a hundred threads woken at once).
LATE = 1
# The environment the chart gives the webhook (test_chart checks that it does).
CHART_ENV = {"MIMALLOC_ALLOW_THP": "0"}


class MemoryCgroup:
    """A memory cgroup under this process's own, on cgroup v2 if its memory controller
    is there, else on v1."""

    def __init__(self, name, limit):
        own = dict(line.split(":", 2)[1:] for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines())
        unified = pathlib.Path("/sys/fs/cgroup")
        self.v2 = "memory" in (unified / "cgroup.controllers").read_text().split() if (
            unified / "cgroup.controllers").exists() else False
        if self.v2:
            parent = unified / own[""].lstrip("/")
        else:
            mount = unified / "memory"
            assert mount.is_dir(), "no memory controller: neither cgroup v2 with memory nor v1 /sys/fs/cgroup/memory"
            parent = mount / own["memory"].lstrip("/")
        if not parent.is_dir():
            # A container that sees the host's path for its cgroup, mounted as the root.
            parent = unified if self.v2 else unified / "memory"
        self.path = parent / name
        try:
            if self.v2:
                # A v2 cgroup holding processes cannot delegate controllers; ours is a
                # sibling's leaf only if the parent lets memory down.
                if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                    (parent / "cgroup.subtree_control").write_text("+memory")
            self.path.mkdir()
            self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(limit))
        except OSError as e:
            raise AssertionError(f"cannot make a memory cgroup at {self.path} (run as root): {e}") from e
        assert int(self._read("memory.max" if self.v2 else "memory.limit_in_bytes")) == limit

    def _read(self, name):
        return (self.path / name).read_text().strip()

    def _write(self, name, text):
        (self.path / name).write_text(text)

    def usage(self):
        return int(self._read("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def peak(self):
        return int(self._read("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))

    def limit_hits(self):
        """(times the limit was reached, OOM kills)."""
        if self.v2:
            events = dict(line.split() for line in self._read("memory.events").splitlines())
            return int(events["max"]), int(events["oom_kill"])
        control = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return int(self._read("memory.failcnt")), int(control.get("oom_kill", 0))

    def holds(self, pid):
        return any(line.endswith(":" + self.relative) for line in
                   pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines())

    @property
    def relative(self):
        root = pathlib.Path("/sys/fs/cgroup") if self.v2 else pathlib.Path("/sys/fs/cgroup/memory")
        return "/" + str(self.path.relative_to(root))

    def remove(self):
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()


@pytest.fixture
def webhook_in_cgroup(tmp_path, monkeypatch):
    cgroup = MemoryCgroup(f"ipmgmt-limits-{os.getpid()}", LIMIT)
    # The harness starts WEBHOOK_BIN; a wrapper that joins the cgroup and then execs the
    # binary charges the webhook's every page to the cgroup, from its first.
    wrapper = tmp_path / "in-cgroup"
    wrapper.write_text('#!/bin/sh\necho $$ > "$LIMITS_CGROUP/cgroup.procs" && exec "$LIMITS_WEBHOOK_BIN" "$@"\n')
    wrapper.chmod(0o755)
    real = webhook_harness.WEBHOOK_BIN
    monkeypatch.setattr(webhook_harness, "WEBHOOK_BIN", wrapper)
    hook = None
    try:
        hook = Webhook(tmp_path, flags=FIXTURE_FLAGS + [f"--body-read-timeout-seconds={DEADLINE}"],
                       env={"LIMITS_CGROUP": str(cgroup.path), "LIMITS_WEBHOOK_BIN": str(real),
                            **CHART_ENV})
        assert cgroup.holds(hook.proc.pid), pathlib.Path(f"/proc/{hook.proc.pid}/cgroup").read_text()
        yield hook, cgroup
    finally:
        if hook:
            hook.stop()
        cgroup.remove()


def metrics(hook):
    values = {}
    for line in hook.admin_get("/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def refused(values, reason):
    return values[f'ipmgmt_webhook_requests_refused_total{{reason="{reason}"}}']


BUFFERED = "ipmgmt_webhook_request_body_buffered_bytes"


_contexts, _contexts_lock = {}, threading.Lock()


def connect(hook, alpn):
    # One context per protocol: making one loads the system's CA certificates, which for
    # a connection a client took longer than the server's whole handshake.
    key = (id(hook), alpn)
    with _contexts_lock:
        if key not in _contexts:
            ctx = hook.context()
            ctx.set_alpn_protocols([alpn])
            _contexts[key] = ctx
        ctx = _contexts[key]
    sock = socket.create_connection(("127.0.0.1", hook.port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    assert tls.selected_alpn_protocol() == alpn
    return tls


def head(length):
    return (f"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def wait_for_answer(tls, stop, trickle=False):
    """The status the server answers with (None: closed without one), after reading
    with short timeouts so that `stop` is seen; a trickling client sends a byte of its
    body at each."""
    tls.settimeout(0.5)
    data = b""
    while not stop.is_set():
        try:
            chunk = tls.recv(4096)
        except socket.timeout:
            if trickle:
                try:
                    tls.send(b" ")
                except (OSError, ssl.SSLError):
                    pass
            continue
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n" in data:
            break
    if data.startswith(b"HTTP/1.1 "):
        return int(data.split()[1])
    return None


class Outcomes:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.errors = []

    def add(self, item):
        with self.lock:
            self.items.append(item)

    def error(self, e):
        with self.lock:
            self.errors.append(repr(e))


def connections(hook, stop, outcomes):
    """HTTP/1.1 connections to the webhook, one after another until `stop`; a connect
    that fails is recorded, and tried again after 0.1 s."""
    while not stop.is_set():
        try:
            tls = connect(hook, "http/1.1")
        except (OSError, ssl.SSLError) as e:
            outcomes.error(e)
            time.sleep(0.1)
            continue
        yield tls


def slow_client(hook, stop, outcomes, trickle, first_sent):
    """Announces the body, sends a KiB of it, then stalls (or trickles a byte every half
    second); again and again. Records (round, status, seconds from sending the head to
    the answer)."""
    rounds = 0
    for tls in connections(hook, stop, outcomes):
        with tls:
            # Taken before the head is sent: the server's deadline cannot start earlier.
            sent = time.monotonic()
            try:
                tls.sendall(head(ANNOUNCED) + b"{" + b" " * 1023)
            except (OSError, ssl.SSLError) as e:
                outcomes.error(e)
                continue
            first_sent.release()
            status = wait_for_answer(tls, stop, trickle)
            if not stop.is_set():
                outcomes.add((rounds, status, time.monotonic() - sent))
                rounds += 1


FLOOD_BODY = b"{" + b" " * (FLOOD - 1)


def flooding_client(hook, stop, outcomes):
    """Announces the body and sends all but 100 KB of it as fast as the server takes
    it, then stalls; again and again."""
    for tls in connections(hook, stop, outcomes):
        with tls:
            tls.settimeout(1)
            try:
                tls.sendall(head(ANNOUNCED))
                tls.sendall(FLOOD_BODY)
            except socket.timeout:
                pass  # the server has stopped reading: its budget is full
            except (OSError, ssl.SSLError):
                outcomes.add(None)  # answered and closed while sending
                continue
            outcomes.add(wait_for_answer(tls, stop))


# HTTP/2 by hand: the frames a client that opens too many streams sends.
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_HEADERS, ACK = 0x4, 0x1
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x3
REFUSED_STREAM = 0x7


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, bits, first=0):
    limit = (1 << bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    return bytes(out + [value])


def hpack_literal(name_index, value):
    """A literal field without indexing whose name is in the static table (RFC 7541 6.2.2)."""
    return hpack_int(name_index, 4) + hpack_int(len(value), 7) + value


# :method POST, :scheme https, :path, :authority, content-type, content-length.
REQUEST_BLOCK = (b"\x83\x87" + hpack_literal(4, b"/mutate") + hpack_literal(1, b"localhost")
                 + hpack_literal(31, b"application/json") + hpack_literal(28, str(ANNOUNCED).encode()))

# The static table's :status entries (RFC 7541 appendix A) and the Huffman codes of the
# digits (appendix B): all a status needs.
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
HUFFMAN_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4", "011011": "5",
                  "011100": "6", "011101": "7", "011110": "8", "011111": "9"}


def response_status(block):
    """:status, the first field of a response's header block. The client's
    SETTINGS_HEADER_TABLE_SIZE of 0 keeps every field static-indexed or literal."""
    while block[0] & 0xE0 == 0x20:  # dynamic table size update
        block = block[1:] if block[0] & 0x1F < 0x1F else block[2:]
    first = block[0]
    if first & 0x80:
        return STATIC_STATUS[first & 0x7F]
    index = first & (0x3F if first & 0x40 else 0x0F)
    assert index == 8, f"first field is not :status: {block[:8].hex()}"
    huffman, length = block[1] & 0x80, block[1] & 0x7F
    value = block[2:2 + length]
    if not huffman:
        return int(value)
    bits, digits = "".join(f"{b:08b}" for b in value), ""
    while bits and not (len(bits) < 8 and set(bits) == {"1"}):
        code = next(c for c in (bits[:5], bits[:6]) if c in HUFFMAN_DIGITS)
        digits, bits = digits + HUFFMAN_DIGITS[code], bits[len(code):]
    return int(digits)


class H2Client:
    """One HTTP/2 connection: frames read in a thread, streams' fates recorded."""

    def __init__(self, hook):
        self.tls = connect(hook, "h2")
        self.settings = {}
        self.settings_acked = threading.Event()
        self.answers = {}  # stream -> (status, seconds from its headers)
        self.resets = {}  # stream -> error code
        self.sent = {}
        self.lock = threading.Lock()
        self.tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                         + frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_HEADER_TABLE_SIZE, 0)))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.settings_acked.wait(5), "the server never acknowledged our SETTINGS"

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.tls.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _read(self):
        try:
            while True:
                header = self._exact(9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                payload = self._exact(length)
                if kind == SETTINGS and flags & ACK:
                    self.settings_acked.set()
                elif kind == SETTINGS:
                    for i in range(0, len(payload), 6):
                        key, value = struct.unpack(">HI", payload[i:i + 6])
                        self.settings[key] = value
                    with self.lock:
                        self.tls.sendall(frame(SETTINGS, ACK, 0))
                elif kind == HEADERS:
                    with self.lock:
                        sent = self.sent.get(stream, float("nan"))
                        self.answers[stream] = (response_status(payload), time.monotonic() - sent)
                elif kind == RST_STREAM:
                    with self.lock:
                        self.resets.setdefault(stream, int.from_bytes(payload[:4], "big"))
                elif kind == GOAWAY:
                    return
        except (OSError, ssl.SSLError, EOFError, ValueError):
            return

    def open_streams(self, count):
        """`count` requests announcing the body; then half a KiB of it on each stream
        the server did not refuse: all of them within the 65,535 bytes that HTTP/2
        lets a client send before the server grants more."""
        streams = [1 + 2 * i for i in range(count)]
        with self.lock:
            # The server's deadline starts with a request's headers.
            self.sent = dict.fromkeys(streams, time.monotonic())
            self.tls.sendall(b"".join(frame(HEADERS, END_HEADERS, s, REQUEST_BLOCK) for s in streams))
        time.sleep(0.3)
        with self.lock:
            kept = [s for s in streams if s not in self.resets]
            self.tls.sendall(b"".join(frame(DATA, 0, s, b" " * 512) for s in kept))
        return streams

    def close(self):
        # The reader must be done before the descriptor is closed: OpenSSL keeps its
        # number, and would read from whichever connection is given that number next.
        try:
            self.tls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.reader.join(timeout=5)
        assert not self.reader.is_alive(), "the HTTP/2 reader did not stop"
        self.tls.close()


def h2_round(hook, stop, opened):
    client = H2Client(hook)
    try:
        streams = client.open_streams(H2_STREAMS)
        opened.release()
        deadline = time.monotonic() + DEADLINE + LATE + 2
        while time.monotonic() < deadline and not stop.is_set():
            with client.lock:
                if all(s in client.answers or s in client.resets for s in streams):
                    break
            time.sleep(0.05)
        return client
    finally:
        client.close()


def timed_review(hook, pod, uid):
    """(status, seconds, response) of one review on a new connection, as the apiserver
    sends it."""
    sent = time.monotonic()
    try:
        status, answer = hook.post(review_of(pod, uid=uid))
    except (OSError, ssl.SSLError) as e:
        status, answer = repr(e), None
    return status, time.monotonic() - sent, answer


def test_slow_clients_cannot_exhaust_a_replica(webhook_in_cgroup):
    hook, cgroup = webhook_in_cgroup
    pod = json.loads((FIXTURES / "sidecar-native" / "pod.json").read_text())
    before = cgroup.usage()
    stop, stop_flood = threading.Event(), threading.Event()
    stalled, floods = Outcomes(), Outcomes()
    first_sent, opened = threading.Semaphore(0), threading.Semaphore(0)
    slow = [threading.Thread(target=slow_client, args=(hook, stop, stalled, i < TRICKLERS, first_sent), daemon=True)
            for i in range(STALLERS + TRICKLERS)]
    h2_first = []
    h2 = [threading.Thread(target=lambda: h2_first.append(h2_round(hook, stop, opened)), daemon=True)
          for _ in range(H2_CONNECTIONS)]
    flooders = [threading.Thread(target=flooding_client, args=(hook, stop_flood, floods), daemon=True)
                for _ in range(FLOODERS)]
    samples, buffered = [], []

    def sample():
        while not stop.is_set():
            samples.append(cgroup.usage())
            buffered.append(metrics(hook)[BUFFERED])
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    for t in slow + h2 + [sampler]:
        t.start()
    beside, under_flood = [], []
    try:
        # The slow clients and the streams first, and their first round's answers while
        # nothing else loads the machine: the deadline is measured on them.
        for _ in range(STALLERS + TRICKLERS):
            assert first_sent.acquire(timeout=20), "slow clients did not connect"
        for _ in range(H2_CONNECTIONS):
            assert opened.acquire(timeout=20), "HTTP/2 clients did not open their streams"
        beside.append(timed_review(hook, pod, "beside-slow-clients"))
        until = time.monotonic() + DEADLINE + LATE + 5
        while len(h2_first) < H2_CONNECTIONS or sum(1 for r, _, _ in stalled.items if r == 0) < len(slow):
            assert time.monotonic() < until, "the slow clients' first round was not answered"
            time.sleep(0.1)
        for t in flooders:
            t.start()
        started = time.monotonic()
        while time.monotonic() - started < FLOOD_SECONDS:
            time.sleep(0.5)
            under_flood.append(timed_review(hook, pod, "under-flood"))
            assert hook.proc.poll() is None, "the webhook exited under the flood"
        stop_flood.set()
        for t in flooders:
            t.join(timeout=15)
        # What the flooders held is given back by the deadline. The slow clients stay,
        # each charged the one block its KiB was copied into.
        until = time.monotonic() + DEADLINE + LATE
        while metrics(hook)[BUFFERED] > (STALLERS + TRICKLERS) * BLOCK:
            assert time.monotonic() < until, f"{metrics(hook)[BUFFERED]} bytes held after the flood"
            time.sleep(0.1)
        for _ in range(3):
            beside.append(timed_review(hook, pod, "beside-slow-clients"))
            time.sleep(0.5)
    finally:
        stop.set()
        stop_flood.set()
        for t in slow + h2 + flooders + [sampler]:
            if t.ident:
                t.join(timeout=15)
    peak, (limit_hits, oom_kills) = cgroup.peak(), cgroup.limit_hits()
    load = metrics(hook)

    def took(reviews):
        return ", ".join(f"{status} in {seconds:.2f} s" for status, seconds, _ in reviews)

    print(f"\nmemory: {before / 2**20:.1f} MiB before the load, peak {peak / 2**20:.1f} MiB "
          f"(sampled max {max(samples) / 2**20:.1f} MiB) of {LIMIT / 2**20:.0f}; bodies held at most "
          f"{max(buffered) / 2**20:.1f} MiB of {BUDGET / 2**20:.0f}\n"
          f"reviews beside the slow clients: {took(beside)}\nreviews under the flood: {took(under_flood)}\n"
          f"slow clients answered {len(stalled.items)} times (first at the deadline + "
          f"{min(t for r, _, t in stalled.items if r == 0) - DEADLINE:.2f} to "
          f"{max(t for r, _, t in stalled.items if r == 0) - DEADLINE:.2f} s), flooders {len(floods.items)}; refused: "
          + ", ".join(f"{r} {refused(load, r):.0f}" for r in ("timeout", "busy", "too_large", "aborted")))

    # The replica stayed up and never reached its limit.
    assert hook.proc.poll() is None
    assert (limit_hits, oom_kills) == (0, 0), f"limit reached {limit_hits} times, {oom_kills} OOM kills"
    # The load was real: the budget filled, and what it held never passed it.
    assert BUDGET * 3 // 4 <= max(buffered) <= BUDGET, max(buffered)
    assert refused(load, "busy") > 0 and refused(load, "timeout") >= STALLERS + TRICKLERS

    # Beside slow clients, a review is answered at once: they hold only what they sent...
    for status, seconds, answer in beside:
        assert status == 200 and decode_patch(answer["response"]), (status, answer)
        assert answer["response"]["uid"] == "beside-slow-clients"
        assert seconds < 1, f"a review took {seconds:.2f} s beside slow clients"
    # Under a flood that keeps the budget full, too: a typical pod's review comes whole
    # in one chunk, and such a body waits for no room.
    assert len(under_flood) >= FLOOD_SECONDS
    for status, seconds, answer in under_flood:
        assert status == 200 and decode_patch(answer["response"]), (status, seconds, answer)
        assert answer["response"]["uid"] == "under-flood"
        assert seconds < 1, f"a review took {seconds:.2f} s under the flood"

    # Each stalled or trickling client was answered 408 at the deadline (trickling does
    # not move it); later, under the flood, 408 when its KiB found room, else 503, or
    # closed (None) with its answer lost to the reset that closing on unread bytes sends.
    assert stalled.errors == [], stalled.errors[:10]
    first = [(s, t) for r, s, t in stalled.items if r == 0]
    late = [(s, t) for s, t in first if s != 408 or not DEADLINE - 0.05 <= t <= DEADLINE + LATE]
    assert not late, f"answered otherwise than 408 at the {DEADLINE} s deadline: {late[:10]}"
    assert {s for r, s, _ in stalled.items if r > 0} <= {408, 503, None}

    # HTTP/2: the server allows STREAMS at once, refuses the rest, and answers those
    # it took at the deadline, however many streams were asked for.
    assert len(h2_first) == H2_CONNECTIONS
    for client in h2_first:
        assert client.settings[SETTINGS_MAX_CONCURRENT_STREAMS] == STREAMS
        refused_streams = sorted(s for s, code in client.resets.items() if code == REFUSED_STREAM)
        assert len(refused_streams) == H2_STREAMS - STREAMS, client.resets
        assert sorted(client.answers) == sorted(set(range(1, 2 * H2_STREAMS, 2)) - set(refused_streams))
        for stream, (status, took_s) in client.answers.items():
            assert status == 408 and DEADLINE - 0.05 <= took_s <= DEADLINE + LATE, (stream, status, took_s)

    # Once the clients are gone, every byte they were charged is given back.
    until = time.monotonic() + DEADLINE + LATE
    while metrics(hook)[BUFFERED] != 0:
        assert time.monotonic() < until, f"{metrics(hook)[BUFFERED]} bytes still held"
        time.sleep(0.1)
