"""The cache of penumbra's generated dataclass code (``penumbra._codecache``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

PROBE = (
    "import json, penumbra\n"
    "from penumbra import _codecache\n"
    "from penumbra.core.messages import Execute\n"
    "from penumbra.core.specs import ResourceSet\n"
    "e = Execute(worker_id='w', spec=None, attempt=1)\n"
    "ok = e == Execute(worker_id='w', spec=None, attempt=1) and 'attempt=1' in repr(e)\n"
    "print(json.dumps({**_codecache.stats(), 'ok': ok}))\n"
)


def _probe(cache_home, **env) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "PENUMBRA_NO_CODE_CACHE"}
    e.update(XDG_CACHE_HOME=str(cache_home), **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_import_fills_the_cache_and_the_next_compiles_nothing(tmp_path):
    first = _probe(tmp_path)
    assert first["ok"] and first["loaded"] == 0 and first["compiled"] > 100  # (the protocol is Structs: fewer than before)
    files = list((tmp_path / "penumbra").iterdir())
    assert len(files) == 1 and files[0].name.startswith("codecache-")
    assert (tmp_path / "penumbra").stat().st_mode & 0o077 == 0  # only its owner can write (or read) it
    second = _probe(tmp_path)
    assert second["ok"] and second["loaded"] >= first["compiled"] and second["compiled"] == 0


def test_a_corrupt_cache_is_ignored_and_replaced(tmp_path):
    d = tmp_path / "penumbra"
    d.mkdir(mode=0o700)
    _probe(tmp_path)
    (path,) = d.iterdir()
    path.write_bytes(b"\x00not marshal at all")
    again = _probe(tmp_path)
    assert again["ok"] and again["loaded"] == 0 and again["compiled"] > 100
    assert _probe(tmp_path)["compiled"] == 0  # rewritten whole


def test_it_can_be_turned_off(tmp_path):
    off = _probe(tmp_path, PENUMBRA_NO_CODE_CACHE="1")
    assert off["ok"] and off == {"loaded": 0, "compiled": 0, "ok": True}
    assert not (tmp_path / "penumbra").exists()
