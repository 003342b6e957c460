"""Every code block of README.md and docs/ runs under ``make test`` (with Sybil).

- ``python`` blocks run in order, in one namespace per document (setup the reader does not need
  to see sits in ``<!-- invisible-code-block: python -->`` comments);
- ``sql`` blocks run on the document's own database, as the application role;
- ``console`` blocks are curl sessions: each command is sent to the document's ``app`` (or to
  ``console_app`` for the next block only), its lifespan running on that database, and the
  answer must match what the block shows: the status (``# 409`` after the body, else 2xx) and
  every key and value shown (numbers by type only: latencies and counters vary);
- ``json`` blocks after ``<!-- response: Model -->`` must validate as that response model of
  ``fastapi_dbpool.stats`` with no unknown key;
- ``bash``/``sh`` blocks are not run (installs, servers, the benchmark), but every ``make``
  target and ``python -m`` module they name must exist.

Each document gets a database of its own on the plugin's server, created before its first
block and dropped after its last, with ``DATABASE_URL`` pointing at it meanwhile.
"""

import importlib.util
import json
import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel
from sybil import Example, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser

from fastapi_dbpool import stats

ROOT = Path(__file__).resolve().parents[1]
_ENV = ("DATABASE_URL", "DBPOOL_URL")
_CLIENTS = "_doc_clients"
_SERVES = ("uvicorn ", "make run", "python -m example_app")  # commands that start the app


def _prepared(evaluate: Callable[[Example], None]) -> Callable[[Example], None]:
    """evaluate, after the document's database is made (Sybil's document setup runs before
    the pytest fixtures reach the namespace, so it happens at the first block instead)."""

    def evaluator(example: Example) -> None:
        if "DOC_URL" not in example.namespace:
            _create_database(example.namespace)
        evaluate(example)

    return evaluator


def _create_database(namespace: dict[str, Any]) -> None:
    server = namespace["database_server"]
    name = f"doc_{secrets.token_hex(4)}"
    params = conninfo_to_dict(server.url)
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE {name} OWNER "{params["user"]}"')
    params["dbname"] = name
    url = make_conninfo(**{key: str(value) for key, value in params.items()})
    # The same as a URI, for clients that take no key=value string (asyncpg).
    uri = "postgresql://{}:{}@{}:{}/{}".format(
        *(quote(str(params[key]), safe="") for key in ("user", "password", "host", "port")),
        name,
    )
    namespace["_doc_saved_env"] = {key: os.environ.get(key) for key in _ENV}
    os.environ.pop("DBPOOL_URL", None)
    os.environ["DATABASE_URL"] = url
    namespace.update(DOC_URL=url, DOC_URI=uri, _doc_database=name, **{_CLIENTS: {}})


def teardown(namespace: dict[str, Any]) -> None:
    try:
        for client in namespace.get(_CLIENTS, {}).values():
            client.__exit__(None, None, None)
    finally:
        _restore(namespace)


def _restore(namespace: dict[str, Any]) -> None:
    for key, value in namespace.get("_doc_saved_env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    name = namespace.get("_doc_database")
    if name:
        with psycopg.connect(namespace["database_server"].admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_sql(example: Example) -> None:
    with psycopg.connect(example.namespace["DOC_URL"], autocommit=True) as conn:
        conn.execute(example.parsed)  # several statements: the simple query protocol


# -- console: curl sessions ----------------------------------------------------------------


def run_console(example: Example) -> None:
    namespace = example.namespace
    app = namespace.pop("console_app", None) or namespace["app"]
    clients: dict[int, TestClient] = namespace[_CLIENTS]
    client = clients.get(id(app))
    if client is None:
        client = clients[id(app)] = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
    for command, shown in _sessions(str(example.parsed)):
        if command.startswith(_SERVES):
            assert not shown.strip(), f"{command} shows output that cannot be checked"
            continue  # the app is served by the TestClient instead
        _check(client, command, shown)


def _sessions(text: str) -> list[tuple[str, str]]:
    """(command, output shown) pairs of a console block."""
    sessions: list[tuple[str, list[str]]] = []
    continued = False
    for line in text.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
            continued = line.endswith("\\")
        elif continued:
            command, output = sessions[-1]
            sessions[-1] = (command[:-1] + " " + line.strip(), output)
            continued = line.endswith("\\")
        elif sessions:
            sessions[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in sessions]


def _check(client: TestClient, command: str, shown: str) -> None:
    words = shlex.split(command.split(" | ")[0])
    assert words[0] == "curl", f"only curl commands can be checked: {command}"
    method, headers, data, url = "GET", {}, None, None
    rest = iter(words[1:])
    for word in rest:
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            key, _, value = next(rest).partition(":")
            headers[key.strip()] = value.strip()
        elif word == "-d":
            data = next(rest)
            method = "POST" if method == "GET" else method
        elif not word.startswith("-"):
            url = word
    assert url is not None, f"no URL in {command}"
    path = re.sub(r"^(https?://)?[^/]*", "", url) or "/"
    response = client.request(method, path, headers=headers, content=data)
    comments = re.findall(r"\s#\s*(.*)$", shown, re.MULTILINE)
    body = re.sub(r"\s+#.*$", "", shown, flags=re.MULTILINE).strip()
    # "# 409" or "# 409, rolled back": a status only where the comment starts with one.
    statuses = [int(match[1]) for text in comments if (match := re.match(r"([1-5]\d\d)\b", text))]
    if statuses:
        assert response.status_code == statuses[0], f"{command}: {response.text}"
    else:
        assert 200 <= response.status_code < 300, f"{command}: {response.text}"
    if body:
        _same_shape(json.loads(body), response.json(), command)


def _same_shape(shown: Any, actual: Any, where: str) -> None:
    """Every key shown is in the answer with an equal value (numbers: the same kind)."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in shown.items():
            assert key in actual, f"{where}: the answer has no {key!r}: {actual!r}"
            _same_shape(value, actual[key], f"{where} .{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) == len(shown), f"{where}: {actual!r}"
        for index, (value, got) in enumerate(zip(shown, actual, strict=True)):
            _same_shape(value, got, f"{where} [{index}]")
    elif isinstance(shown, bool) or shown is None or isinstance(shown, str):
        assert actual == shown, f"{where}: shown {shown!r}, answered {actual!r}"
    else:
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), (
            f"{where}: shown the number {shown!r}, answered {actual!r}"
        )


# -- json: response samples ----------------------------------------------------------------

_RESPONSE = re.compile(r"<!--\s*response:\s*(\w+)\s*-->\s*\n```json\n(.*?)^```", re.S | re.M)


def parse_responses(document: Any) -> Iterator[Region]:
    for match in _RESPONSE.finditer(document.text):
        yield Region(match.start(), match.end(), (match.group(1), match.group(2)), check_response)


def check_response(example: Example) -> None:
    model_name, text = example.parsed
    model = getattr(stats, model_name)
    data = json.loads(text)
    strict = model.model_validate(data)
    unknown = _unknown_keys(data, strict)
    assert not unknown, f"keys the {model_name} model does not have: {unknown}"


def _unknown_keys(data: Any, model: Any, path: str = "") -> list[str]:
    if not isinstance(model, BaseModel):
        return []
    unknown = []
    for key, value in data.items():
        if key not in type(model).model_fields:
            unknown.append(path + key)
            continue
        child = getattr(model, key)
        if isinstance(child, dict) and isinstance(value, dict):
            for name, item in value.items():
                unknown += _unknown_keys(item, child.get(name), f"{path}{key}.{name}.")
        else:
            unknown += _unknown_keys(value, child, f"{path}{key}.")
    return unknown


# -- bash: commands named, not run ---------------------------------------------------------


def check_commands(example: Example) -> None:
    for line in str(example.parsed).splitlines():
        command = line.split("#")[0].strip()
        if command.startswith("make "):
            target = shlex.split(command)[1]
            found = subprocess.run(
                ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
            )
            assert "No rule to make target" not in found.stderr, f"no make target {target!r}"
        for module in re.findall(r"python3? -m ([\w.]+)", command):
            assert importlib.util.find_spec(module) is not None, f"no module {module!r}"


def docs_sybil() -> Sybil:
    return Sybil(
        parsers=[
            CodeBlockParser("python", _prepared(PythonEvaluator())),
            CodeBlockParser("sql", _prepared(run_sql)),
            CodeBlockParser("console", _prepared(run_console)),
            CodeBlockParser("bash", check_commands),
            CodeBlockParser("sh", check_commands),
            parse_responses,
        ],
        patterns=["README.md", "docs/*.md"],
        teardown=teardown,
        fixtures=["database_server"],
        path=str(ROOT),
    )

