"""Which forbidden modules each of several modules brings with it, each imported in a fresh interpreter.

Run as a script (``test_layering.py`` does): ``FORBIDDEN_JSON MODULE...`` in, one JSON object out:
module name -> the sorted forbidden modules found in ``sys.modules`` after importing it alone, or
``{"error": traceback}`` if it could not be imported.

A fresh interpreter per module, without starting Python once per module: this process first
imports the heavy third-party libraries (:data:`HEAVY`) that bring nothing forbidden, and nothing
of the project, then forks one child per module, which imports that module alone and reports. What
one module imported cannot hide a violation in another (each child starts from the same parent),
and a preloaded library cannot hide one either: it brought nothing forbidden with it, so whatever
forbidden module a child holds, the module under test imported. A library that does bring a
forbidden module is not preloaded (the process starts again without it).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

# The slow imports the project's modules share, preloaded once rather than imported by every child,
# each with what it is known to import (not tried where that is forbidden; were another forbidden
# module to come with one, the restart below would leave it out).
HEAVY = {"numpy": (), "PIL.Image": (), "filelock": (), "tomlkit": (), "prometheus_client": (), "aiohttp": (),
         "aiohttp.web": ("aiohttp",), "marshmallow": (), "apispec": (), "transformers": (), "torch": (),
         "safetensors.torch": ("torch",), "diffusers": ("torch",)}
SKIP_ENV = "IMPORT_PROBE_SKIP"  # the HEAVY names found to bring a forbidden module, on a restart


def _present(forbidden: list[str]) -> list[str]:
    return sorted(name for name in forbidden if name in sys.modules)


def preload(forbidden: list[str]) -> None:
    """Import each HEAVY library that is not forbidden; one that brings a forbidden module restarts
    this process without it (it cannot be un-imported)."""
    skip = [name for name in os.environ.get(SKIP_ENV, "").split(",") if name]
    for name, brings in HEAVY.items():
        if name in skip or name.split(".")[0] in forbidden or set(brings) & set(forbidden):
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            continue  # an optional library that is not installed
        if _present(forbidden):
            sys.stdout.flush()
            os.execve(sys.executable, sys.orig_argv, {**os.environ, SKIP_ENV: ",".join([*skip, name])})


def probe(module: str, forbidden: list[str]) -> list[str] | dict[str, str]:
    """Import ``module`` in a child of this process; the forbidden modules it brought."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, report through the pipe, exit without running any cleanup
        os.close(read)
        try:
            importlib.import_module(module)
            result: list[str] | dict[str, str] = _present(forbidden)
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
            result = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            json.dump(result, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    return json.loads(text) if text else {"error": f"the child importing {module} ended with status {status}"}


def main(argv: list[str]) -> None:
    forbidden = json.loads(argv[0])
    preload(forbidden)
    assert not _present(forbidden), _present(forbidden)
    print(json.dumps({module: probe(module, forbidden) for module in argv[1:]}))


if __name__ == "__main__":
    main(sys.argv[1:])
