"""KEYS_FILE: what a key file may say (and the clear errors for what it may not), the ``keys``
command that writes it, and who a presented key is, as the server reads the file again."""

from __future__ import annotations

import io
import os

import pytest

from sdxl_server.__main__ import main as server_main
from sdxl_server.api.identity import Identity
from sdxl_server.api.key_file import KeyFileError, hash_text, parse_keys
from sdxl_server.api.key_ring import KeyRing
from sdxl_server.api.route_table import Scope
from sdxl_server.jobs.owners import Limits
from sdxl_server.tools.keys_cli import main as keys_main

ALICE, BOB = "sdxl-alice-secret", "sdxl-bob-secret"


def key_table(name: str, secret: str, extra: str = "") -> str:
    return f'[keys.{name}]\nhash = "{hash_text(secret)}"\n{extra}\n'


def test_a_key_has_a_hash_scopes_and_limits():
    entries = parse_keys(
        key_table("alice", ALICE, 'scopes = ["generate"]\nrequests_per_minute = 30\nrunning = 1\nwaiting = 20\n'
                  'images_per_day = 500\ngpu_seconds_per_day = 3600\nmodels = ["base"]\nloras = []\nweight = 2')
        + key_table("admin", BOB, 'scopes = ["admin"]')
    )
    alice = entries["alice"]
    assert alice.scopes == {Scope.PUBLIC, Scope.GENERATE}
    assert alice.limits == Limits(30, 1, 20, 500, 3600.0, ("base",), (), 2)
    assert entries["admin"].scopes == {Scope.PUBLIC, Scope.READ, Scope.GENERATE, Scope.ADMIN}
    assert entries["admin"].limits == Limits()
    assert parse_keys(key_table("plain", ALICE))["plain"].scopes == {Scope.PUBLIC, Scope.GENERATE, Scope.READ}


@pytest.mark.parametrize(("text", "says"), [
    (key_table("a", ALICE) + key_table("a", BOB), "given twice"),
    (key_table("a", ALICE) + key_table("b", ALICE), "same hash"),
    (key_table("a", ALICE, "running = 0"), "running must be a whole number, at least 1"),
    (key_table("a", ALICE, "waiting = -1"), "waiting must be"),
    (key_table("a", ALICE, 'requests_per_minute = "30"'), "requests_per_minute must be"),
    (key_table("a", ALICE, "images_per_day = true"), "images_per_day must be"),
    (key_table("a", ALICE, "gpu_seconds_per_day = -5.0"), "gpu_seconds_per_day must be"),
    (key_table("a", ALICE, "weight = 1000"), "weight must be at most"),
    (key_table("a", ALICE, 'models = "base"'), "models must be a list of names"),
    (key_table("a", ALICE, "rpm = 3"), "unknown field 'rpm'"),
    (key_table("a", ALICE, 'scopes = ["root"]'), "unknown scope 'root'"),
    (key_table("a", ALICE, "revoked = 1"), "revoked must be true or false"),
    ('[keys.a]\nhash = "md5:abc"\n', "hash must be 'sha256:'"),
    ("[keys.a]\nscopes = []\n", "hash must be"),
    ('[keys."a b"]\nhash = "x"\n', "is not usable"),
    ("[users.a]\n", "unknown top-level entry 'users'"),
    ("[keys.a\n", "not valid TOML"),
])
def test_a_bad_keys_file_is_refused_naming_what_is_wrong(text, says):
    with pytest.raises(KeyFileError, match=says.replace("(", r"\(")) as caught:
        parse_keys(text)
    if "keys.a" in text and "given twice" not in says and "top-level" not in says and "TOML" not in says:
        assert "'a'" in str(caught.value) or "a b" in str(caught.value)


def run_keys(*argv: str, keys_file) -> tuple[int, str]:
    out = io.StringIO()
    return keys_main(list(argv), {"KEYS_FILE": str(keys_file)}, out), out.getvalue()


def test_keys_add_prints_the_key_once_and_writes_only_its_hash(tmp_path):
    keys_file = tmp_path / "keys.toml"
    code, printed = run_keys("add", "alice", "--scope", "generate", "--scope", "read",
                             "--limit", "running=1", "--limit", "models=base,other", keys_file=keys_file)
    secret = printed.strip()
    assert code == 0 and secret.startswith("sdxl-") and len(secret) > 40
    text = keys_file.read_text()
    assert secret not in text and hash_text(secret) in text
    assert os.stat(keys_file).st_mode & 0o077 == 0  # owner-only
    entry = parse_keys(text)["alice"]
    assert entry.limits.running == 1 and entry.limits.models == ("base", "other")
    assert KeyRing(keys_file).load() is None
    code, second = run_keys("add", "bob", keys_file=keys_file)
    assert code == 0 and second.strip() != secret


def test_keys_list_shows_names_scopes_and_limits_never_a_hash(tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("# our keys\n" + key_table("alice", ALICE, "running = 2"))
    run_keys("add", "ops", "--scope", "admin", keys_file=keys_file)
    code, listed = run_keys("list", keys_file=keys_file)
    assert code == 0
    assert listed.splitlines() == ["alice\tactive\tgenerate,read\trunning=2", "ops\tactive\tadmin,generate,read"]
    assert "sha256" not in listed
    assert keys_file.read_text().startswith("# our keys\n")  # an edit keeps the file's comments


def test_keys_revoke_keeps_the_name_taken(tmp_path, capsys):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_table("alice", ALICE))
    assert run_keys("revoke", "alice", keys_file=keys_file)[0] == 0
    assert parse_keys(keys_file.read_text())["alice"].revoked
    assert run_keys("list", keys_file=keys_file)[1].startswith("alice\tREVOKED")
    assert run_keys("add", "alice", keys_file=keys_file)[0] == 2
    assert "revoked key keeps its name" in capsys.readouterr().err
    assert run_keys("revoke", "nobody", keys_file=keys_file)[0] == 2


def test_keys_command_refuses_bad_limits_and_bad_files_without_writing(tmp_path, capsys):
    keys_file = tmp_path / "keys.toml"
    assert run_keys("add", "a", "--limit", "weight=0", keys_file=keys_file)[0] == 2
    assert run_keys("add", "a", "--limit", "speed=3", keys_file=keys_file)[0] == 2
    assert run_keys("add", "a b", keys_file=keys_file)[0] == 2
    assert not keys_file.exists()
    keys_file.write_text("[keys.a\n")
    assert run_keys("add", "b", keys_file=keys_file)[0] == 2
    assert keys_file.read_text() == "[keys.a\n"
    assert "not valid TOML" in capsys.readouterr().err


def test_the_server_command_runs_the_keys_command(tmp_path, monkeypatch, capsys):
    keys_file = tmp_path / "keys.toml"
    monkeypatch.setenv("KEYS_FILE", str(keys_file))
    assert server_main(["keys", "add", "bot"]) == 0
    secret = capsys.readouterr().out.strip()
    assert KeyRing(keys_file).load() is None and parse_keys(keys_file.read_text())["bot"].digest
    assert hash_text(secret) in keys_file.read_text()


def test_a_key_is_its_identity_and_a_revoked_or_unknown_one_is_none(tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_table("alice", ALICE, "weight = 3") + key_table("old", BOB, "revoked = true"))
    ring = KeyRing(keys_file)
    ring.load()
    assert ring.match([ALICE]) == Identity("alice", frozenset({Scope.PUBLIC, Scope.GENERATE, Scope.READ}), Limits(weight=3))
    assert ring.match(["wrong", ALICE]).name == "alice"  # Basic auth offers two candidates
    assert ring.match([BOB]) is None and ring.match(["nope"]) is None and ring.match([]) is None
    assert ring.match(["\udcff"]) is None  # a header's undecodable bytes are a wrong key, not an error
    assert ring.names == ["alice"]


def test_the_keys_file_is_read_again_when_it_changes_and_a_bad_change_keeps_the_last_good_one(tmp_path, caplog):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_table("alice", ALICE))
    ring = KeyRing(keys_file)
    ring.load()
    assert not ring.refresh()  # unchanged: not read again
    keys_file.write_text(key_table("alice", ALICE) + key_table("bob", BOB))
    assert ring.refresh() and ring.match([BOB]).name == "bob" and ring.problem is None
    keys_file.write_text(key_table("alice", ALICE) + key_table("bob", BOB, "running = 0"))
    assert not ring.refresh()
    assert "running must be" in ring.problem and "running must be" in caplog.text
    assert ring.match([BOB]).name == "bob"  # the last good keys stay in use
    keys_file.unlink()
    assert not ring.refresh() and "cannot read it" in ring.problem and ring.match([ALICE]).name == "alice"
    keys_file.write_text(key_table("alice", ALICE, "revoked = true") + key_table("bob", BOB))
    assert ring.refresh() and ring.problem is None and ring.match([ALICE]) is None
    assert ring.describe()["keys"] == 1


def test_every_key_costs_the_same_work_whatever_is_wrong_with_it(tmp_path, monkeypatch):
    """Timing cannot tell an unknown key from a revoked one, a malformed one or none: each request
    hashes as many candidates and compares each once, with its entry or a stand-in."""
    from sdxl_server.api import key_ring

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_table("alice", ALICE) + key_table("old", BOB, "revoked = true"))
    ring = KeyRing(keys_file)
    ring.load()
    work = []
    monkeypatch.setattr(key_ring, "digest", lambda key: work.append("hash") or parse_keys(key_table("x", key))["x"].digest)
    compared = []
    real_compare = key_ring.hmac.compare_digest
    monkeypatch.setattr(key_ring.hmac, "compare_digest", lambda a, b: compared.append(1) or real_compare(a, b))
    costs = set()
    for presented in ([], ["unknown"], [BOB], ["\udcff"], ["user:x", "x"], [ALICE]):
        work.clear()
        compared.clear()
        ring.match(presented)
        costs.add((len(work), len(compared)))
    assert costs == {(2, 2)}
