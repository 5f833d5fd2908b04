"""The chaos suite behind loadtest/chaos.sh: a private stack, faults injected mid-flow, invariants.

It starts its own Redis and RabbitMQ on private ports (so killing them disturbs nothing else),
its own database on the machine's PostgreSQL, and the mall (two order and two flashsale
instances, one product, one inventory, the gateway) against them. Each scenario runs a flow
through the gateway, injects its faults when the flow is half way (kill -9 of a process, then a
restart as a supervisor would), waits for the system to settle by itself, then checks the
invariants in PostgreSQL and RabbitMQ and writes a section of the report with a chart.

Clients behave as well-written ones do: a 5xx, a 429, a transport error or a 409 `in_progress`
is retried with the same request id or Idempotency-Key, after `Retry-After` when given.
"""

import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.environ["ROOT"]
RUN = os.environ["RUN"]
BIN = os.environ["BIN"]
RESULTS = os.environ["RESULTS"]
BASE = int(os.environ.get("CHAOS_BASE_PORT", "18100"))
BUYERS = int(os.environ.get("CHAOS_BUYERS", "2000"))
UNITS = int(os.environ.get("CHAOS_UNITS", "100"))
RATE = float(os.environ.get("CHAOS_RATE", "200"))
GW, PRODUCT, INVENTORY = BASE, BASE + 1, BASE + 2
ORDERS, FLASH = (BASE + 3, BASE + 13), (BASE + 4, BASE + 14)
REDIS_PORT, AMQP_PORT, DIST_PORT = BASE + 79, BASE + 72, BASE + 73
DATABASE = "mall_chaos"
PG_ADMIN = "postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable"
PG = f"postgres://postgres:postgres@127.0.0.1:5432/{DATABASE}?sslmode=disable"
RABBIT_NODE = f"mallchaos{BASE}@localhost"
PAYMENT_SECRET = b"mall-dev-payment-secret-change-me"
ORDER_TTL = 45  # seconds: unpaid orders time out inside the scenario, well after a broker restart
RETRIED = {0, 429, 500, 502, 503, 504}


def say(msg):
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def sql(query):
    out = subprocess.run(["psql", PG, "-Atc", query], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"psql: {out.stderr.strip()} in {query}")
    return out.stdout.strip()


def until(what, check, timeout, interval=0.25):
    """Waits for check() to be truthy; returns its value, or raises after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


# --- HTTP: one keep-alive connection per thread and port ---------------------------------------

_local = threading.local()


def call(method, port, path, body=None, headers=None, timeout=10):
    """(status, parsed JSON or None, Retry-After seconds or None); status 0 is a transport error."""
    conns = _local.__dict__.setdefault("conns", {})
    payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    for attempt in (0, 1):
        conn = conns.get(port)
        reused = conn is not None
        if conn is None:
            conn = conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conns.pop(port, None)
            # A keep-alive connection the server closed while idle: what every HTTP client
            # retries once on a new connection (the requests here are idempotent by their ids).
            if reused and attempt == 0:
                continue
            return 0, None, None
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conns.pop(port, None)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        retry_after = resp.getheader("Retry-After")
        return resp.status, parsed, float(retry_after) if retry_after else None
    return 0, None, None


# --- processes -----------------------------------------------------------------------------------


class Proc:
    """A process of the stack, in its own process group so kill -9 takes all of it."""

    def __init__(self, name, argv, env, port):
        self.name, self.argv, self.env, self.port, self.p = name, argv, env, port, None

    def start(self):
        with open(f"{RUN}/{self.name}.log", "ab") as log:
            self.p = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def port_open(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def ready(self):
        if self.name in ("redis", "rabbitmq"):
            return self.port_open()
        status, _, _ = call("GET", self.port, "/readyz", timeout=2)
        return status == 200


class Stack:
    def __init__(self):
        self.redis_dir = f"{RUN}/redis"
        self.rabbit_dir = f"{RUN}/rabbitmq"
        os.makedirs(self.redis_dir, exist_ok=True)
        os.makedirs(self.rabbit_dir, exist_ok=True)
        open(f"{self.rabbit_dir}/plugins", "w").close()
        with open(f"{self.rabbit_dir}/rabbitmq.conf", "w") as f:
            f.write(f"listeners.tcp.default = 127.0.0.1:{AMQP_PORT}\nloopback_users = none\n")
        # Redis keeps an append-only file (fsync every second), so a restart "with its data"
        # replays it; the scenario "without its data" deletes it first.
        self.redis = Proc("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                                    "--dir", self.redis_dir, "--save", "", "--appendonly", "yes",
                                    "--appendfsync", "everysec"], {}, REDIS_PORT)
        rabbit_env = {
            "RABBITMQ_NODENAME": RABBIT_NODE, "RABBITMQ_DIST_PORT": str(DIST_PORT),
            "RABBITMQ_CONFIG_FILE": f"{self.rabbit_dir}/rabbitmq.conf",
            "RABBITMQ_MNESIA_BASE": f"{self.rabbit_dir}/mnesia", "RABBITMQ_LOG_BASE": f"{self.rabbit_dir}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.rabbit_dir}/plugins",
            "RABBITMQ_PID_FILE": f"{self.rabbit_dir}/pid", "HOME": self.rabbit_dir,
        }
        self.rabbit = Proc("rabbitmq", [os.environ.get("RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server")],
                           rabbit_env, AMQP_PORT)
        common = {
            "MALL_DATABASE_URL": PG, "MALL_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}",
            "MALL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/%2f", "MALL_LOG": "info",
        }
        url = lambda *ports: ",".join(f"http://127.0.0.1:{p}" for p in ports)  # noqa: E731
        self.procs = {}

        def svc(name, binary, port, **env):
            self.procs[name] = Proc(name, [f"{BIN}/{binary}"], {**common, "MALL_HTTP_ADDR": f"127.0.0.1:{port}", **env}, port)

        svc("product", "mall-product", PRODUCT, MALL_DATABASE_SCHEMA="product")
        svc("inventory", "mall-inventory", INVENTORY, MALL_DATABASE_SCHEMA="inventory", MALL_PRODUCT_URLS=url(PRODUCT))
        for i, port in enumerate(ORDERS, 1):
            svc(f"order-{i}", "mall-order", port, MALL_DATABASE_SCHEMA="orders", MALL_PRODUCT_URLS=url(PRODUCT),
                MALL_INVENTORY_URLS=url(INVENTORY), MALL_ORDER_TTL=f"{ORDER_TTL}s", MALL_ORDER_SWEEP_INTERVAL="1s")
        for i, port in enumerate(FLASH, 1):
            svc(f"flashsale-{i}", "mall-flashsale", port, MALL_DATABASE_SCHEMA="flashsale",
                MALL_INVENTORY_URLS=url(INVENTORY), MALL_FLASHSALE_JOB_INTERVAL="200ms",
                MALL_FLASHSALE_SETTLE_AFTER="1s")
        # The limits sized for a shop's many clients would count this one client's 2,000 buyers
        # as one abuser; the faults, not the limiter, are under test.
        svc("gateway", "mall-gateway", GW, MALL_UPSTREAM_PRODUCT=url(PRODUCT), MALL_UPSTREAM_INVENTORY=url(INVENTORY),
            MALL_UPSTREAM_ORDER=url(*ORDERS), MALL_UPSTREAM_FLASHSALE=url(*FLASH),
            MALL_GW_RATE_LIMITS="*:client:100000/s,/api/flashsale/purchase:cluster:100000/s")
        self.all = [self.redis, self.rabbit, *self.procs.values()]

    def __getitem__(self, name):
        return {p.name: p for p in self.all}[name]

    def start(self):
        say(f"private Redis on {REDIS_PORT}, RabbitMQ on {AMQP_PORT}, database {DATABASE}")
        subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)",
                        "-c", f"CREATE DATABASE {DATABASE}"], check=True, capture_output=True)
        self.redis.start()
        self.rabbit.start()
        until("Redis", self.redis.port_open, 30)
        until("RabbitMQ", self.rabbit.port_open, 90)
        subprocess.run([f"{BIN}/mall-product", "seed", "--skus", "20"], check=True, capture_output=True,
                       env={**os.environ, "MALL_DATABASE_URL": PG, "MALL_DATABASE_SCHEMA": "product"})
        say("the mall: gateway, product, inventory, two order and two flashsale instances")
        for p in self.procs.values():
            p.start()
        for p in self.procs.values():
            until(f"{p.name} ready", p.ready, 120)

    def stop(self):
        for p in reversed(self.all):
            p.stop()

    def wipe_redis(self):
        shutil.rmtree(self.redis_dir)
        os.makedirs(self.redis_dir)

    def rabbitmqctl(self, *args):
        out = subprocess.run([os.environ.get("RABBITMQCTL", "/usr/lib/rabbitmq/bin/rabbitmqctl"), "-n", RABBIT_NODE, "-q", *args], capture_output=True, text=True,
                             env={**os.environ, "HOME": self.rabbit_dir})
        if out.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def queue_depths(self):
        """{queue: (ready, unacknowledged)} of the private broker."""
        depths = {}
        for line in self.rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit():
                depths[parts[0]] = (int(parts[1]), int(parts[2]))
        return depths


# --- what a scenario records --------------------------------------------------------------------


class Timeline:
    """Every answer (time, flow, status, error code, latency) and every fault, repair and recovery."""

    def __init__(self, stack):
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.answers, self.events = [], []
        self.stack = stack
        self.ready_since = 0.0
        self.stopping = threading.Event()
        threading.Thread(target=self._probe, daemon=True).start()

    def now(self):
        return time.monotonic() - self.t0

    def answer(self, flow, started, status, body):
        code = body.get("code") if isinstance(body, dict) and status >= 400 else None
        with self.lock:
            self.answers.append((started, flow, status, code, (self.now() - started) * 1000))

    def event(self, kind, label):
        with self.lock:
            self.events.append((self.now(), kind, label))
        say(f"{self.now():6.1f} s  {kind}: {label}")

    def _probe(self):
        # Readiness of every process, every 100 ms: the time to recover is read off it.
        while not self.stopping.is_set():
            if not all(p.ready() for p in self.stack.all):
                self.ready_since = None
            elif self.ready_since is None:
                self.ready_since = self.now()
            time.sleep(0.1)

    def close(self):
        self.stopping.set()


def retry_pause(retry_after):
    return min(retry_after if retry_after else 0.2, 2.0) * random.uniform(0.8, 1.2)


# --- the flows ----------------------------------------------------------------------------------


def mint(count, prefix):
    out = subprocess.run([f"{BIN}/mall-gateway", "token", "--user", prefix, "--count", str(count), "--ttl", "2h"],
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def admin_token():
    return subprocess.run([f"{BIN}/mall-gateway", "token", "--user", "chaos-admin", "--roles", "admin", "--ttl", "2h"],
                          capture_output=True, text=True, check=True).stdout.strip()


def receive(admin, sku, quantity):
    status, body, _ = call("POST", GW, f"/admin/stock/{sku}/receive", {"quantity": quantity},
                           {"Authorization": f"Bearer {admin}"})
    assert status == 200, (status, body)


class FlashSale:
    """2,000 buyers (one unit each, limit 1) for 100 units, arriving at CHAOS_RATE per second."""

    def __init__(self, name, sku, admin):
        self.name, self.sku, self.tl = name, sku, None
        self.outcomes, self.expect = {}, {}
        receive(admin, sku, UNITS + 50)
        now = time.time()
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        self.window = BUYERS / RATE + 20
        status, body, _ = call("POST", GW, "/admin/flashsale/sessions", {
            "starts_at": iso(now - 2), "ends_at": iso(now + self.window),
            "items": [{"sku_id": sku, "price_cents": 990, "quantity": UNITS, "per_user_limit": 1}]},
            {"Authorization": f"Bearer {admin}"})
        assert status in (200, 201), (status, body)
        self.session = body["session_id"]
        self.ends = time.monotonic() + self.window
        jwts = mint(BUYERS, f"{name}-")
        path = f"/api/flashsale/sessions/{self.session}/items/{sku}/token"

        def token(jwt):
            for _ in range(100):
                status, body, ra = call("POST", GW, path, headers={"Authorization": f"Bearer {jwt}"})
                if status in (200, 201):
                    return jwt, body["token"]
                time.sleep(retry_pause(ra))
            raise RuntimeError(f"no purchase token: {status} {body}")

        with ThreadPoolExecutor(16) as pool:
            self.buyers = list(pool.map(token, jwts))
        self.admitted = 0
        self.half = threading.Event()
        self.finals = {}  # buyer -> (status, code, order id)
        self.orders_seen = {}  # buyer -> set of order ids in any 202

    def buy(self, i):
        jwt, token = self.buyers[i]
        body = {"session_id": self.session, "sku_id": self.sku, "quantity": 1, "token": token,
                "request_id": f"{self.name}-{i}"}
        while True:
            started = self.tl.now()
            status, answer, ra = call("POST", GW, "/api/flashsale/purchase", body, {"Authorization": f"Bearer {jwt}"})
            self.tl.answer("purchase", started, status, answer)
            if status in RETRIED and time.monotonic() < self.ends:
                time.sleep(retry_pause(ra))
                continue
            order = answer.get("order_id") if status == 202 and answer else None
            if order:
                self.orders_seen.setdefault(i, set()).add(order)
                with self.tl.lock:
                    self.admitted += 1
                    if self.admitted >= UNITS // 2:
                        self.half.set()
            self.finals[i] = (status, answer.get("code") if answer else None, order)
            return

    def run(self):
        start = time.monotonic()
        with ThreadPoolExecutor(400) as pool:
            for i in range(len(self.buyers)):
                time.sleep(max(0.0, start + i / RATE - time.monotonic()))
                pool.submit(self.buy, i)
        self.half.set()

    def caught_up(self):
        """Every admission in the book is an order."""
        s = self.session
        return sql(f"SELECT count(*) = (SELECT count(*) FROM orders.orders WHERE flash_session_id = {s}) "
                   f"FROM flashsale.admissions WHERE session_id = {s}") == "t"

    def settle(self):
        """Waits for the session to end and its unsold units to go back to inventory."""
        until("the session settled", lambda: sql(
            f"SELECT status FROM flashsale.sessions WHERE id = {self.session}") == "settled",
            max(0, self.ends - time.monotonic()) + 90)

    def pay(self):
        """Pays half of the session's orders, one in five of them twice."""
        rows = sql(f"SELECT id, total_cents FROM orders.orders WHERE flash_session_id = {self.session} "
                   "AND status = 'pending_payment' ORDER BY id").splitlines()
        outcomes = {}
        for n, row in enumerate(rows[: len(rows) // 2]):
            order, total = row.split("|")
            for _ in range(2 if n % 5 == 0 else 1):
                outcome = pay(order, int(total), f"chaos-{order}", self.tl)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        half = len(rows) // 2
        self.expect = {k: v for k, v in {"applied": half, "duplicate": (half + 4) // 5}.items() if v}
        self.outcomes = outcomes

    def checks(self):
        s, k = self.session, self.sku
        book = set(sql(f"SELECT order_id FROM flashsale.admissions WHERE session_id = {s}").split())
        returned = int(sql(f"SELECT count(*) FROM flashsale.admissions WHERE session_id = {s} AND returned_at IS NOT NULL"))
        orders = dict(line.split("|") for line in sql(
            f"SELECT id, status FROM orders.orders WHERE flash_session_id = {s}").splitlines())
        answered = {o for (st, _, o) in self.finals.values() if st == 202}
        live = sum(1 for st in orders.values() if st != "cancelled")
        reserved_pending = sql(
            f"SELECT (SELECT reserved FROM inventory.stock WHERE sku_id = {k}) = "
            f"(SELECT COALESCE(sum(i.quantity), 0) FROM orders.order_items i JOIN orders.orders o ON o.id = i.order_id "
            f" WHERE o.status = 'pending_payment' AND i.sku_id = {k})")
        return {
            f"units sold <= {UNITS} (admissions not returned {len(book) - returned}, orders not cancelled {live})":
                len(book) - returned <= UNITS and live <= UNITS,
            f"every 202 has exactly one order ({len(answered)} answered 202, {len(orders)} orders)":
                answered <= set(orders) and all(len(v) == 1 for v in self.orders_seen.values()),
            "every order was admitted and answered 202 (orders = book = 202s)": set(orders) == book == answered,
            "no buyer over the limit": sql(
                f"SELECT count(*) FROM (SELECT user_id FROM orders.orders WHERE flash_session_id = {s} "
                "GROUP BY user_id HAVING count(*) > 1) x") == "0",
            "session settled: its unsold units back in inventory, reserved = pending orders' units":
                reserved_pending == "t",
            f"payments: {self.expect}": self.outcomes == self.expect,
            **common_checks(k),
        }


def pay(order, total, payment_id, tl=None):
    body = json.dumps({"payment_id": payment_id, "order_id": order, "amount_cents": total,
                       "status": "succeeded"}).encode()
    sig = hmac.new(PAYMENT_SECRET, body, hashlib.sha256).hexdigest()
    for _ in range(100):
        started = tl.now() if tl else 0
        status, answer, ra = call("POST", GW, "/api/payments/callback", body, {"X-Signature": sig})
        if tl:
            tl.answer("payment callback", started, status, answer)
        if status == 200:
            return answer["outcome"]
        if status not in RETRIED:
            raise RuntimeError(f"payment callback answered {status} {answer}")
        time.sleep(retry_pause(ra))
    raise RuntimeError("payment callback never answered")


class Checkout:
    """200 users for 50 units of one SKU, one order of one unit each, arriving over 5 seconds."""

    USERS, UNITS = 200, 50

    def __init__(self, name, sku, admin):
        self.name, self.sku, self.tl = name, sku, None
        self.outcomes, self.expect = {}, {}
        receive(admin, sku, self.UNITS)
        self.users = mint(self.USERS, f"{name}-")
        self.placed = 0
        self.half = threading.Event()
        self.finals = {}
        self.orders_seen = {}
        self.ends = time.monotonic() + 60

    def order(self, i):
        headers = {"Authorization": f"Bearer {self.users[i]}", "Idempotency-Key": f"{self.name}-{i}"}
        body = {"items": [{"sku_id": self.sku, "quantity": 1}]}
        while True:
            started = self.tl.now()
            status, answer, ra = call("POST", GW, "/api/orders", body, headers)
            self.tl.answer("checkout", started, status, answer)
            code = answer.get("code") if answer and status >= 400 else None
            if (status in RETRIED or code == "in_progress") and time.monotonic() < self.ends:
                time.sleep(retry_pause(ra))
                continue
            order = answer.get("order_id") if status in (200, 201) and answer else None
            if order:
                self.orders_seen.setdefault(i, set()).add(order)
                with self.tl.lock:
                    self.placed += 1
                    if self.placed >= self.UNITS // 2:
                        self.half.set()
            self.finals[i] = (status, code, order)
            return

    def run(self):
        start = time.monotonic()
        with ThreadPoolExecutor(200) as pool:
            for i in range(self.USERS):
                time.sleep(max(0.0, start + i / 40 - time.monotonic()))
                pool.submit(self.order, i)
        self.half.set()

    def caught_up(self):
        """Orders are placed synchronously: an answered checkout is an order already."""
        return True

    def settle(self):
        """Pays half of the orders (some twice, some after their timeout); the rest time out."""
        orders = self.orders()
        ids = sorted(orders)
        # Half are paid: 15 once, 5 twice; 5 more only after they timed out (late); the rest expire.
        once, twice, late = ids[:15], ids[15:20], ids[20:25]
        outcomes = {}

        def count(outcome):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        for order in once + twice:
            count(pay(order, orders[order], f"chaos-{order}", self.tl))
        for order in twice:
            count(pay(order, orders[order], f"chaos-{order}", self.tl))
        in_list = ",".join(f"'{o}'" for o in late)
        until("the late orders timed out", lambda: sql(
            f"SELECT count(*) FROM orders.orders WHERE id IN ({in_list}) AND status = 'cancelled'") == str(len(late)),
            ORDER_TTL + 60)
        for order in late:
            count(pay(order, orders[order], f"chaos-{order}", self.tl))
        until("every unpaid order timed out", lambda: sql(
            f"SELECT count(*) FROM orders.orders o JOIN orders.order_items i ON i.order_id = o.id "
            f"WHERE i.sku_id = {self.sku} AND o.status = 'pending_payment'") == "0", ORDER_TTL + 60)
        self.expect = {"applied": 20, "duplicate": 5, "late": 5}
        self.outcomes = outcomes

    def orders(self):
        return {o: int(t) for o, t in (line.split("|") for line in sql(
            f"SELECT o.id, o.total_cents FROM orders.orders o JOIN orders.order_items i ON i.order_id = o.id "
            f"WHERE i.sku_id = {self.sku}").splitlines())}

    def pay(self):
        """Checkout's payments are made by settle(), around the timeouts."""

    def checks(self):
        k = self.sku
        orders = self.orders()
        answered = {o for (st, _, o) in self.finals.values() if o}
        refused = sum(1 for (st, code, _) in self.finals.values() if st == 409 and code == "out_of_stock")
        status = dict(line.split("|") for line in sql(
            f"SELECT o.status, count(*) FROM orders.orders o JOIN orders.order_items i ON i.order_id = o.id "
            f"WHERE i.sku_id = {k} GROUP BY o.status").splitlines())
        return {
            f"orders placed = units = {self.UNITS}, the other {self.USERS - self.UNITS} users refused out_of_stock":
                len(orders) == self.UNITS and refused == self.USERS - self.UNITS,
            "every answered order exists, no user has two": answered == set(orders) and all(
                len(v) == 1 for v in self.orders_seen.values()),
            f"payments: {self.expect}": self.outcomes == self.expect,
            "20 paid, 30 cancelled (5 with a refund owed), nothing pending": status == {"paid": "20", "cancelled": "30"}
            and sql(f"SELECT count(*) FROM orders.orders o JOIN orders.order_items i ON i.order_id = o.id "
                    f"WHERE i.sku_id = {k} AND o.refund_required") == "5",
            "stock: 20 sold, 30 available, none reserved": sql(
                f"SELECT available, reserved, sold FROM inventory.stock WHERE sku_id = {k}") == "30|0|20",
            **common_checks(k),
        }


STACK = None


def common_checks(sku):
    schemas = sql("SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'").split()
    unsent = sum(int(sql(f"SELECT count(*) FROM {s}.outbox WHERE sent_at IS NULL")) for s in schemas)
    depths = STACK.queue_depths()
    dead = {q: d for q, d in depths.items() if q.endswith(".dlq") and sum(d)}
    return {
        f"SKU {sku}: available + reserved + sold = received, none negative": sql(
            f"SELECT count(*) FROM inventory.stock WHERE sku_id = {sku} AND "
            "(available + reserved + sold <> received OR least(available, reserved, sold) < 0)") == "0",
        "sold = paid quantity": sql(
            f"SELECT (SELECT sold FROM inventory.stock WHERE sku_id = {sku}) = "
            f"(SELECT COALESCE(sum(i.quantity), 0) FROM orders.order_items i JOIN orders.orders o ON o.id = i.order_id "
            f" WHERE o.status = 'paid' AND i.sku_id = {sku})") == "t",
        "no order both paid and cancelled (each order's reservation matches its status, one applied payment per paid order)": sql(
            f"""SELECT count(*) FROM orders.orders o JOIN orders.order_items i ON i.order_id = o.id AND i.sku_id = {sku}
                LEFT JOIN inventory.reservations r ON r.id = o.reservation_id
                WHERE r.id IS NULL
                   OR (o.status, r.status) NOT IN (('pending_payment', 'reserved'), ('paid', 'confirmed'), ('cancelled', 'released'))
                   OR (SELECT count(*) FROM orders.payments p WHERE p.order_id = o.id AND p.outcome = 'applied')
                      <> (o.status = 'paid')::int""") == "0",
        f"every outbox row sent ({unsent} unsent)": unsent == 0,
        "dead-letter queues empty" + (f" ({dead})" if dead else ""): not dead,
    }


# --- the scenarios ------------------------------------------------------------------------------


def restart_after(secs, proc, label=None, before=None):
    """A supervisor's restart; the repair counts from when the process accepts connections."""

    def restart():
        if before:
            before()
        STACK[proc].start()
        until(f"{proc} back", STACK[proc].port_open, 120, interval=0.05)

    return [(secs, f"{label or proc} restarted and accepting connections", restart, "repair")]


def kill(proc):
    return (0, f"kill -9 {proc}", lambda: STACK[proc].kill9(), "fault")


SCENARIOS = {
    "flash-kill-flashsale": ("flash", [kill("flashsale-1"), *restart_after(3, "flashsale-1")]),
    "flash-kill-order": ("flash", [kill("order-1"), *restart_after(3, "order-1")]),
    "flash-kill-inventory": ("flash", [kill("inventory"), *restart_after(3, "inventory")]),
    "flash-kill-rabbitmq": ("flash", [kill("rabbitmq"), *restart_after(3, "rabbitmq")]),
    "flash-kill-redis-keep-data": ("flash", [kill("redis"), *restart_after(3, "redis", "redis (with its data)")]),
    "flash-kill-redis-lose-data": ("flash", [kill("redis"), *restart_after(
        3, "redis", "redis (without its data)", lambda: STACK.wipe_redis())]),
    "flash-kill-rabbitmq-then-redis": ("flash", [
        kill("rabbitmq"), (2, "kill -9 redis", lambda: STACK["redis"].kill9(), "fault"),
        *restart_after(3, "redis", "redis (without its data)", lambda: STACK.wipe_redis()),
        *restart_after(3, "rabbitmq")]),
    "checkout-kill-order-and-rabbitmq": ("checkout", [
        kill("order-1"), kill("rabbitmq"), *restart_after(3, "order-1"), *restart_after(2, "rabbitmq")]),
}
SHORT = ["flash-kill-redis-lose-data", "checkout-kill-order-and-rabbitmq"]


def run_scenario(name, sku, admin):
    kind, faults = SCENARIOS[name]
    say(f"scenario {name}")
    flow = (FlashSale if kind == "flash" else Checkout)(name, sku, admin)
    tl = flow.tl = Timeline(STACK)
    result = {"name": name, "kind": kind, "tl": tl, "flow": flow, "outcomes": {}, "repaired": 0.0,
              "recovered": 0.0, "complete": 0.0}
    # When the orders last caught up with what was answered: polled all along, since the
    # hand-off may finish long before the last client does.
    watching = {"behind_since": None, "caught_up": 0.0, "stop": threading.Event()}

    def watch():
        while not watching["stop"].is_set():
            t = tl.now()
            if not flow.caught_up():
                watching["behind_since"] = t
            elif watching["behind_since"] is not None and watching["caught_up"] < watching["behind_since"]:
                watching["caught_up"] = t
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        driver = threading.Thread(target=flow.run)
        driver.start()
        watcher.start()
        tl.event("start", "the flow starts")
        flow.half.wait(60)
        for delay, label, action, kind_ in faults:
            time.sleep(delay)
            action()
            tl.event(kind_, label)
        result["repaired"] = repaired = tl.now()
        driver.join()
        tl.event("flow", "the last client answered")
        # Recovered: every process ready again, and no client retrying any more.
        until("every process ready again", lambda: tl.ready_since is not None, 120)
        last_error = max((t + ms / 1000 for (t, _, st, _, ms) in tl.answers if st in RETRIED and t >= repaired - 10),
                         default=repaired)
        result["recovered"] = recovered = max(tl.ready_since, last_error)
        tl.events.append((recovered, "recovered", "ready, no more retried answers"))
        until("every answered purchase an order", lambda: flow.caught_up() and (
            watching["behind_since"] is None or watching["caught_up"] > watching["behind_since"]), 120)
        watching["stop"].set()
        result["complete"] = caught = max(watching["caught_up"], repaired)
        tl.events.append((caught, "complete", "every answered purchase is an order"))
        flow.pay()
        flow.settle()
        result["outcomes"] = flow.outcomes
        tl.event("settled", "the session settled" if kind == "flash" else "orders paid or timed out")
        result["checks"] = final_checks(flow)
    except Exception as e:  # noqa: BLE001 - the report names it and the run fails
        say(f"scenario {name} did not finish: {e!r}")
        result["checks"] = {f"the scenario ran to its end ({e!r})": False}
    finally:
        tl.close()
    return result


def final_checks(flow, timeout=90):
    # Payments and cancellations travel as events: the checks are read again until they all
    # hold, and their last reading is reported if they never do.
    deadline = time.monotonic() + timeout
    while True:
        checks = flow.checks()
        if all(checks.values()) or time.monotonic() > deadline:
            return checks
        time.sleep(1)


def write_report(results, stamp, short):
    lines = ["# Chaos suite\n",
             "Faults injected half way through each flow (kill -9, then a restart as a supervisor would do) into a private",
             f"stack: own Redis (append-only file, fsync every second) on {REDIS_PORT}, own RabbitMQ on {AMQP_PORT}, own database",
             f"`{DATABASE}`; two order and two flashsale instances, one product, one inventory, the gateway. Flash sales: {BUYERS}",
             f"buyers for {UNITS} units (limit 1) arriving at {RATE:.0f}/s; checkout: 200 users for 50 units. Clients retry 5xx, 429,",
             "transport errors and `in_progress` with the same request id or Idempotency-Key, after `Retry-After`.\n",
             "| scenario | answers | recovered after the last repair | every answered purchase an order | invariants |",
             "|---|---|---:|---:|---|"]
    for r in results:
        by = {}
        for (_, _, st, _, _) in r["tl"].answers:
            by[st] = by.get(st, 0) + 1
        ok = all(r["checks"].values())
        answers = ", ".join(f"{k or 'error'}: {v}" for k, v in sorted(by.items()))
        lines.append(f"| [{r['name']}](#{r['name']}) | {answers} | "
                     f"{r['recovered'] - r['repaired']:.1f} s | {r['complete'] - r['repaired']:.1f} s | {'PASS' if ok else '**FAIL**'} |")
    for r in results:
        tl = r["tl"]
        lines += [f"\n## {r['name']}\n", "| time s | event |", "|---:|---|"]
        lines += [f"| {t:.1f} | {kind}: {label} |" for (t, kind, label) in sorted(tl.events)]
        by = {}
        for (_, flow, st, code, _) in tl.answers:
            by[(flow, st, code)] = by.get((flow, st, code), 0) + 1
        lines += ["\n| request | answer | code | count |", "|---|---:|---|---:|"]
        lines += [f"| {f} | {st or 'transport error'} | {code or ''} | {n} |" for (f, st, code), n in sorted(
            by.items(), key=lambda x: (x[0][0], x[0][1], x[0][2] or ""))]
        finals = {}
        for (st, code, _) in r["flow"].finals.values():
            finals[(st, code)] = finals.get((st, code), 0) + 1
        lines.append("\nEach client's last answer: " + ", ".join(
            f"{st or 'transport error'}{' ' + code if code else ''}: {n}" for (st, code), n in sorted(
                finals.items(), key=lambda x: (x[0][0], x[0][1] or ""))) + ".")
        if r["outcomes"]:
            lines.append(f"Payment callbacks: {', '.join(f'{k}: {v}' for k, v in sorted(r['outcomes'].items()))}.")
        lines.append(f"\nRecovered {r['recovered'] - r['repaired']:.1f} s after the last repair (every process ready, "
                     f"no client retrying); every answered purchase was an order {r['complete'] - r['repaired']:.1f} s after it.\n")
        lines += ["| invariant | holds |", "|---|---|"]
        lines += [f"| {k} | {'yes' if v else '**NO**'} |" for k, v in r["checks"].items()]
        if r.get("chart"):
            lines.append(f"\n![answers per second and latency, {r['name']}]({r['chart']})")
    ok = all(all(r["checks"].values()) for r in results)
    lines.append(f"\nOverall: {'PASS' if ok else 'FAIL'}. Reproduce: `loadtest/chaos.sh{' --short' if short else ''}`.")
    return "\n".join(lines) + "\n", ok


def chart(r, path):
    """Answers per second by status and p50/p99 latency per second, faults and recoveries marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tl = r["tl"]
    if not tl.answers:
        return False
    marked = [(t, kind, label) for (t, kind, label) in sorted(tl.events) if kind in ("fault", "repair", "recovered")]
    end = int(max(max(t for (t, *_) in tl.answers), max((t for (t, *_) in marked), default=0))) + 2
    seconds = list(range(end))
    by_status = {}
    latencies = [[] for _ in seconds]
    for (t, flow, st, _, ms) in tl.answers:
        by_status.setdefault((flow, st), [0] * end)[int(t)] += 1
        latencies[int(t)].append(ms)

    def pct(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True, height_ratios=[3, 2])
    for (flow, st), counts in sorted(by_status.items()):
        top.plot(seconds, counts, label=f"{flow} {st or 'transport error'}", drawstyle="steps-post")
    top.set_ylabel("answers per second")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    bottom.plot(seconds, [pct(v, 0.5) for v in latencies], label="p50", drawstyle="steps-post")
    bottom.plot(seconds, [pct(v, 0.99) for v in latencies], label="p99", drawstyle="steps-post")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency ms")
    bottom.set_xlabel("seconds since the flow started")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    colors = {"fault": "red", "repair": "green", "recovered": "blue"}
    # Events less than 0.3 s apart share one line and one label.
    groups = []
    for (t, kind, label) in marked:
        if groups and t - groups[-1][0] < 0.3 and groups[-1][1] == kind:
            groups[-1][2].append(label)
        else:
            groups.append((t, kind, [label]))
    for (t, kind, labels) in groups:
        for ax in (top, bottom):
            ax.axvline(t, color=colors[kind], linestyle="--", linewidth=1)
        top.annotate(" + ".join(labels), (t, 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                     ha="right", fontsize=7, color=colors[kind])
    top.set_title(f"{r['name']}: answers by status (red: fault, green: repair, blue: recovered)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main():
    global STACK
    short = "--short" in sys.argv
    names = SHORT if short else list(SCENARIOS)
    only = os.environ.get("CHAOS_SCENARIOS")
    if only:
        names = only.split(",")
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            sys.exit(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    STACK = Stack()
    results = []
    try:
        STACK.start()
        admin = admin_token()
        for n, name in enumerate(names, 1):
            results.append(run_scenario(name, n, admin))
    finally:
        STACK.stop()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for r in results:
        png = f"chaos-{stamp}-{r['name']}.png"
        if chart(r, f"{RESULTS}/{png}"):
            r["chart"] = png
    report, ok = write_report(results, stamp, short)
    path = f"{RESULTS}/chaos-{stamp}.md"
    with open(path, "w") as f:
        f.write(report)
    if not short and not only:
        shutil.copy(path, f"{RESULTS}/chaos-latest.md")
    print(report)
    print(f"report: {path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
