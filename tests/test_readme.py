"""The docs' configuration table and scheduler list stay true to the code; CI runs the README's tests."""

from __future__ import annotations

import re
from pathlib import Path

from sdxl_server.config import settings_fields
from sdxl_server.sampling import SAMPLERS, SCHEDULES, sampler_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


def _table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in CONFIGURATION.splitlines():
        match = re.match(r"^\| `([A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \| (.+?) \| (.+) \|$", line)
        if match:
            rows[match.group(1)] = [match.group(2), match.group(3)]
    return rows


def test_every_setting_is_in_the_configuration_table_with_its_flag_and_default():
    rows = _table_rows()
    for f in settings_fields():
        env = f.metadata["env"]
        assert env in rows, f"{env} missing from the configuration table in docs/configuration.md"
        flag, default = rows[env]
        assert flag == "--" + f.name.replace("_", "-")
        if f.default in (None, ()):
            assert default == "(unset)" or env == "TINY_CACHE", f"{env}: docs/configuration.md says {default}"
            continue
        shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        assert f"`{shown}`" == default, f"{env}: docs/configuration.md says {default}, code says {shown}"


def test_every_sampler_and_schedule_is_documented():
    for name in [*SAMPLERS, *SCHEDULES, *sampler_names()]:
        assert f"`{name}`" in API, f"sampler or schedule {name} missing from docs/api.md"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest" in README and "python -m pytest" in ci
