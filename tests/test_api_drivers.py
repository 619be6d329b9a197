"""``init`` reaches the drivers through ``api.drivers`` (issue 19): the API
never imports a driver; ``penumbra/__init__``, the top, registers a factory
per way of starting a runtime, each importing its driver only when called.
(``tests/test_layers.py`` checks the import shape itself.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import penumbra
from penumbra.api import drivers

PKG = Path(penumbra.__file__).parent


def test_import_penumbra_registers_every_driver_and_loads_none():
    code = ("import sys, penumbra\n"
            "from penumbra.api import drivers\n"
            "assert all(drivers.registered(w) for w in drivers.WAYS)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'simpy') "
            "or m.startswith(('penumbra.transports', 'penumbra.sim'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PKG.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registering_a_driver_checks_its_way_and_factory():
    with pytest.raises(ValueError, match="unknown driver way 'cloud'"):
        drivers.register("cloud", lambda: None)
    with pytest.raises(TypeError, match="must be a callable"):
        drivers.register("connect", "penumbra.transports.client.connect")


def test_init_without_a_registered_driver_says_who_registers_it():
    saved = drivers.registered("connect")
    del drivers._factories["connect"]
    try:
        with pytest.raises(RuntimeError, match="no driver is registered for 'connect'"):
            penumbra.init(address="127.0.0.1:1")
        assert not penumbra.is_initialized()
    finally:
        drivers.register("connect", saved)


def test_init_starts_the_runtime_with_the_driver_registered_for_its_way():
    real = drivers.registered("simulated")
    calls = []

    def counting(simulated, **kwargs):
        calls.append(kwargs["namespace"])
        return real(simulated, **kwargs)

    @penumbra.remote
    def square(x):
        return x * x

    drivers.register("simulated", counting)
    try:
        penumbra.init(simulated=True, namespace="drivers")
        try:
            assert penumbra.get(square.remote(7)) == 49
        finally:
            penumbra.shutdown()
    finally:
        drivers.register("simulated", real)
    assert calls == ["drivers"]
