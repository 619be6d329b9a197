"""Ray's documentation as a compatibility suite (issue 13).

Issue 13: "a program from Ray's docs runs unchanged with ``import penumbra as
ray``".  ``tests/ray_docs/`` holds one program per Ray Core documentation
program (``doc/source/ray-core/doc_code/*.py`` in Ray's repository), written
for penumbra, each exercising the documented behaviour and asserting what the
doc program asserts or prints.  ``tests/ray_docs/CATALOGUE.md`` lists every
doc file with its status; it is the one place that says which programs are
expected to fail, and why.

Each program runs as a subprocess, as a user would run it (``python
prog.py``), with this checkout on ``PYTHONPATH`` and a private
``PENUMBRA_HOME``.  A program marked ``fails: X`` in the catalogue is a
strict xfail: when someone implements X, it passes, the test fails, and the
message says to update the catalogue.  The same programs also run on the
simulator (``_bootstrap.py simulated``), with the catalogue's simulator
column as their expectations.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "tests" / "ray_docs"
CATALOGUE = DOCS / "CATALOGUE.md"
ISOLATE = DOCS / "_isolate"  # sitecustomize: import penumbra from this checkout only
TIMEOUT = 30.0  # seconds per program; the doc programs are scaled to take a few
OK = "RAY_DOCS_OK"  # what _bootstrap.py prints when the program finished
DOC_FILES = 87  # doc/source/ray-core/doc_code/*.py in Ray's repository

_ROW = re.compile(r"^\|\s*`([^`]+\.py)`\s*\|(.*)\|(.*)\|(.*)\|\s*$")


def _catalogue() -> dict[str, tuple[str, str, str]]:
    """doc file name -> (what it covers, penumbra status, simulator status)."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in CATALOGUE.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            name = m.group(1)
            if name in rows:
                raise ValueError(f"{CATALOGUE}: {name} is listed twice")
            rows[name] = tuple(c.strip() for c in m.groups()[1:])
    return rows


ROWS = _catalogue()
PROGRAMS = sorted(p.name for p in DOCS.glob("*.py") if not p.name.startswith("_"))


def _blockers(status: str) -> list[str]:
    """``fails: A; then: B`` -> [A, B]."""
    if not status.startswith("fails:"):
        return []
    return [part.strip() for part in status[len("fails:"):].split("; then:")]


def _params(column: int) -> list:
    """One pytest param per mirror program, marked from the catalogue's column."""
    out = []
    for name in PROGRAMS:
        row = ROWS.get(name, ("", "runs", "runs"))
        status = row[column]
        marks = []
        if status.startswith("fails:"):
            why = status[len("fails:"):].strip()
            marks.append(pytest.mark.xfail(
                strict=True, reason=f"{why} (issue 13); if it passes now, mark it 'runs' in tests/ray_docs/CATALOGUE.md"))
        elif status.startswith("not run:"):
            marks.append(pytest.mark.skip(reason=status))
        out.append(pytest.param(name, marks=marks, id=name[:-3]))
    return out


def _stop_clusters(env: dict) -> None:
    """Stop clusters a program started with the CLI and left behind (it was killed)."""
    if (Path(env["PENUMBRA_HOME"]) / "clusters.json").exists():
        subprocess.run([sys.executable, "-m", "penumbra.cli", "stop"], env=env, capture_output=True, timeout=60)


def run_program(name: str, tmp_path: Path, mode: str | None = None, timeout: float = TIMEOUT) -> None:
    """Run one mirror program; fail with its output if it fails or times out.

    ``mode`` None runs ``python prog.py``; otherwise ``_bootstrap.py MODE``.
    The program runs in its own session so a timeout kills everything it
    started; its daemons see their driver die and exit.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(ISOLATE)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PENUMBRA_HOME"] = str(tmp_path / "penumbra-home")
    env["PYTHONUNBUFFERED"] = "1"
    prog = str(DOCS / name)
    argv = [sys.executable, prog] if mode is None else [sys.executable, str(DOCS / "_bootstrap.py"), mode, prog]
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
            timed_out = True
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            _stop_clusters(env)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    finished = mode is None or OK in stdout
    if timed_out or rc != 0 or not finished:
        what = (f"timed out after {timeout:g} s" if timed_out else f"exited with status {rc}" if rc != 0
                else f"ended without finishing (no {OK}: the process exited early)")
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        pytest.fail(f"{name} {what}\n--- stderr (last lines) ---\n{tail}", pytrace=False)


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("name", _params(1))
def test_doc_program_runs(name, tmp_path):
    run_program(name, tmp_path)


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("name", _params(2))
def test_doc_program_runs_simulated(name, tmp_path):
    run_program(name, tmp_path, mode="simulated")


# -- the catalogue is complete and consistent --------------------------------

def _kind(status: str) -> str:
    for kind in ("runs", "fails:", "out of scope:", "not run:"):
        if status == kind or (kind.endswith(":") and status.startswith(kind)):
            return kind.rstrip(":")
    return "?"


def test_catalogue_lists_every_doc_file_once_with_a_known_status():
    assert len(ROWS) == DOC_FILES, f"CATALOGUE.md lists {len(ROWS)} doc files, Ray has {DOC_FILES}"
    for name, (_covers, real, sim) in ROWS.items():
        assert _kind(real) in ("runs", "fails", "out of scope"), f"{name}: bad penumbra status {real!r}"
        if _kind(real) == "out of scope":
            assert sim == "-", f"{name}: out of scope, so its simulator status should be '-', not {sim!r}"
        else:
            assert _kind(sim) in ("runs", "fails", "not run"), f"{name}: bad simulator status {sim!r}"


def test_every_mirror_is_catalogued_and_every_in_scope_doc_file_has_a_mirror():
    in_scope = {n for n, (_c, real, _s) in ROWS.items() if _kind(real) != "out of scope"}
    assert set(PROGRAMS) - set(ROWS) == set(), "programs missing from CATALOGUE.md"
    assert in_scope - set(PROGRAMS) == set(), "in-scope doc files without a program in tests/ray_docs/"
    assert set(PROGRAMS) - in_scope == set(), "programs whose doc file is marked out of scope"


def summary_line() -> str:
    """The catalogue's summary, computed from its table."""
    real = [_kind(r) for _c, r, _s in ROWS.values()]
    sim = [_kind(s) for _c, r, s in ROWS.values() if _kind(r) != "out of scope"]
    return (f"Summary: {len(ROWS)} doc files; {len(ROWS) - real.count('out of scope')} mirrored, "
            f"{real.count('out of scope')} out of scope. On penumbra: {real.count('runs')} run, "
            f"{real.count('fails')} fail. On the simulator: {sim.count('runs')} run, {sim.count('fails')} fail, "
            f"{sim.count('not run')} not run.")


def test_catalogue_summary_matches_its_table():
    assert summary_line() in CATALOGUE.read_text(), f"update the summary in CATALOGUE.md to:\n{summary_line()}"


def ranking() -> str:
    """The catalogue's ranking of missing features, computed from its table:
    for each feature, the programs it blocks (first or after ``then:``), most first."""
    lines = []
    for title, column in (("On penumbra", 1), ("On the simulator", 2)):
        blocked: dict[str, list[str]] = {}
        for name, row in ROWS.items():
            for feature in _blockers(row[column]):
                blocked.setdefault(feature, []).append(name[:-3])
        lines.append(f"{title}:")
        lines.append("")
        for feature, names in sorted(blocked.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"- {len(names)}: {feature} ({', '.join(sorted(names))})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def test_catalogue_ranking_matches_its_table():
    assert ranking() in CATALOGUE.read_text(), f"update the ranking at the end of CATALOGUE.md to:\n{ranking()}"
