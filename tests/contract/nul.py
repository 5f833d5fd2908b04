"""A NUL byte in every string field and query parameter of every documented operation.

For each operation of each document, and each string it takes (path or query parameter, or
property of the JSON body, nested ones included), one request carries "\u0000" there and sensible values
everywhere else. Each must answer 4xx, and the database must be exactly as before (a checksum of
every table). PostgreSQL refuses NUL in text, so a handler that let one through answers 5xx.

usage: nul.py DATABASE_URL SERVICE_DOC... (each as name=port=path-to-document)
       with GATEWAY_URL, ADMIN_TOKEN (and PAYMENT_SECRET unless the default) in the environment
"""

import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

NUL = "\u0000"


def resolve(doc, schema):
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    for combinator in ("allOf", "oneOf", "anyOf"):
        if combinator in schema and "properties" not in schema:
            options = [resolve(doc, s) for s in schema[combinator]]
            options = [s for s in options if s.get("type") != "null"]
            if options:
                return options[0]
    return schema


def types_of(schema):
    t = schema.get("type", [])
    return t if isinstance(t, list) else [t]


def sample(doc, schema):
    """A value the schema accepts, made the simple way."""
    schema = resolve(doc, schema)
    if "enum" in schema:
        return schema["enum"][0]
    types = [t for t in types_of(schema) if t != "null"]
    kind = types[0] if types else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample(doc, s) for name, s in props.items()}
    if kind == "array":
        return [sample(doc, schema.get("items", {}))]
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1
    if kind == "boolean":
        return False
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    return "x"


def string_paths(doc, schema, prefix=()):
    """Where in a body built by `sample` a string sits: tuples of keys and indexes."""
    schema = resolve(doc, schema)
    types = [t for t in types_of(schema) if t != "null"]
    if "enum" in schema or schema.get("format") in ("uuid", "date-time"):
        # Still strings on the wire: a NUL there must be refused too.
        if "string" in types or not types:
            yield prefix
        return
    kind = types[0] if types else ("object" if "properties" in schema else "string")
    if kind == "object":
        for name, s in schema.get("properties", {}).items():
            yield from string_paths(doc, s, prefix + (name,))
    elif kind == "array":
        yield from string_paths(doc, schema.get("items", {}), prefix + (0,))
    elif kind == "string":
        yield prefix


def with_nul(body, path):
    body = json.loads(json.dumps(body))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = (target[path[-1]] or "") + NUL if isinstance(target[path[-1]], str) else NUL
    return body


def fingerprint(database_url):
    query = """
      SELECT string_agg(format('%s:%s', c.relname,
                        (xpath('/row/h/text()', query_to_xml(format(
                          'SELECT md5(coalesce(string_agg(t::text, '','' ORDER BY t::text), '''')) AS h FROM %I.%I t',
                          n.nspname, c.relname), false, true, '')))[1]::text), ' ' ORDER BY c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND n.nspname = 'public'
    """
    return subprocess.run(
        ["psql", database_url, "-Atqc", query], check=True, capture_output=True, text=True
    ).stdout


def send(method, url, body, headers):
    data = json.dumps(body).encode() if body is not None else None
    if "X-Signature" in headers and data is not None:
        # Signed as the payment provider signs, so the body itself is what gets judged.
        secret = os.environ.get("PAYMENT_SECRET", "mall-dev-payment-secret-change-me").encode()
        headers = dict(headers, **{"X-Signature": hmac.new(secret, data, hashlib.sha256).hexdigest()})
    req = urllib.request.Request(url, data=data, method=method.upper(), headers=headers)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cases(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            params = op.get("parameters", [])
            url_path = path
            for p in params:
                if p["in"] == "path":
                    value = sample(doc, p.get("schema", {}))
                    url_path = url_path.replace("{" + p["name"] + "}", urllib.parse.quote(str(value)))
            query = {p["name"]: sample(doc, p.get("schema", {})) for p in params if p["in"] == "query" and p.get("required")}
            headers = {p["name"]: "x" for p in params if p["in"] == "header"}
            body_schema = (
                op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            )
            body = sample(doc, body_schema) if body_schema else None
            for p in params:
                if p["in"] == "query":
                    q = dict(query, **{p["name"]: NUL})
                    yield f"{method.upper()} {path} ?{p['name']}", method, url_path + "?" + urllib.parse.urlencode(q), body, headers
                if p["in"] == "path":
                    at = path.replace("{" + p["name"] + "}", "%00")
                    for other in params:
                        if other["in"] == "path" and other is not p:
                            at = at.replace("{" + other["name"] + "}", str(sample(doc, other.get("schema", {}))))
                    yield f"{method.upper()} {path} /{{{p['name']}}}", method, at, body, headers
            if body_schema:
                for where in string_paths(doc, body_schema):
                    label = ".".join(str(k) for k in where)
                    q = "?" + urllib.parse.urlencode(query) if query else ""
                    yield f"{method.upper()} {path} body.{label}", method, url_path + q, with_nul(body, where), headers


def main():
    database_url, services = sys.argv[1], sys.argv[2:]
    gateway, admin = os.environ["GATEWAY_URL"], os.environ["ADMIN_TOKEN"]
    failures, sent, tally = [], 0, {}
    before = fingerprint(database_url)
    for service in services:
        name, port, path = service.split("=", 2)
        with open(path) as f:
            doc = json.load(f)
        for label, method, target, body, headers in cases(doc):
            internal = target.startswith("/internal/")
            base = f"http://127.0.0.1:{port}" if internal else gateway
            headers = dict(headers)
            if not internal:
                headers["authorization"] = f"Bearer {admin}"
            status, answer = send(method, base + target, body, headers)
            sent += 1
            try:
                code = json.loads(answer).get("code", "?")
            except ValueError:
                code = "?"
            tally[(status, code)] = tally.get((status, code), 0) + 1
            if os.environ.get("NUL_VERBOSE"):
                print(f"  {status} {code:<20} {label}: {answer[:120]!r}")
            if not 400 <= status < 500:
                failures.append(f"{name}: {label}: {status} {answer[:200]!r}")
    after = fingerprint(database_url)
    print(f"{sent} requests with a NUL, {len(failures)} not answered 4xx; answers: "
          + ", ".join(f"{s} {c} x{n}" for (s, c), n in sorted(tally.items())))
    for f in failures:
        print("  " + f)
    if before != after:
        changed = sorted(set(before.split()) ^ set(after.split()))
        print("the database changed: " + ", ".join(sorted({c.split(':')[0] for c in changed})))
        failures.append("database changed")
    if sent == 0:
        failures.append("no request was sent: the documents list no strings?")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
