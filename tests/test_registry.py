"""The registry's one record type and one choice, for every kind of implementation.

Each kind's own behaviour (which layer path runs which call, which optimizers a fused update takes) is tested
beside it (test_fast_paths, test_optim, test_generation_paths); here, what every kind shares: one ``Impl``
record type, a reference record that runs everywhere, and :func:`lstmx.dispatch.registry.choose`'s order and
errors.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lstmx
from lstmx.dispatch import registry
from lstmx.training.optim import Adam


def _call(kind: str, backend) -> registry.Call:
    """A call of ``kind`` that every backend's reference runs."""
    if kind == "generation":
        return registry.generation_call(lstmx.LanguageModel(7, 4, 8, backend=backend.name, seed=0))
    return {"layer": registry.Call(backend, np.float32, sizes=(2, 8)),
            "update": registry.Call(backend, optimizer=Adam),
            "scatter": registry.Call(backend, rows=7)}.get(kind, registry.Call(backend))


KINDS = sorted(registry.KINDS)


def test_every_record_is_one_type_of_a_known_kind_and_names_are_unique_within_a_kind():
    assert all(type(impl) is registry.Impl and impl.kind in registry.KINDS for impl in registry.IMPLS)
    for kind in KINDS:
        names = [impl.name for impl in registry.of_kind(kind)]
        assert len(names) == len(set(names)) and names, kind
        assert tuple(names) == registry.KINDS[kind].requests.names or kind == "clipping"
    assert [i.name for i in registry.CLIPPING_IMPLS] == [i.name for i in registry.UPDATE_IMPLS]  # one family


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_ends_in_a_reference_that_auto_runs_on_every_backend(kind, backend):
    """The last record of a kind runs on every backend and "auto" may pick it: no call is left without one."""
    reference, call = registry.of_kind(kind)[-1], _call(kind, backend)
    assert reference.backends is None and reference.auto_takes(call) and reference.refuses(call) is None
    chosen = registry.choose(kind, call, registry.AUTO)
    assert chosen.refuses(call) is None and chosen.function(call) is not None


@pytest.mark.parametrize("kind", KINDS)
def test_a_path_asked_for_by_name_that_cannot_run_the_call_is_refused_naming_those_that_can(kind, backend):
    call = _call(kind, backend)
    refused = [impl for impl in registry.of_kind(kind) if impl.refuses(call) is not None]
    if not refused:
        pytest.skip(f"every {kind} implementation runs on {backend.name} here")
    impl, able = refused[0], [i.name for i in registry.available(kind, call)]
    message = (f"{registry.KINDS[kind].requests.kind} implementation '{impl.name}' cannot "
               f"{registry.KINDS[kind].action.format(optimizer='Adam')}: it {impl.refuses(call)}; "
               f"implementations that can: {', '.join(able)}")
    with pytest.raises(registry.KINDS[kind].requests.error, match=f"^{re.escape(message)}$"):
        registry.choose(kind, call, impl.name)
    with pytest.raises(registry.KINDS[kind].requests.error, match="^impl must be one of auto, .*; got 'nonesuch'$"):
        registry.choose(kind, call, "nonesuch")


@pytest.mark.parametrize("kind", [kind for kind in KINDS if registry.KINDS[kind].requests.variable])
def test_the_argument_beats_the_context_which_beats_the_environment_a_default_only(kind, monkeypatch):
    """One order for every kind; the environment variable names a path that cannot run the call (a CuPy one on
    NumPy, or a fast path asked for a cell it does not run): "auto" decides then, with no error."""
    backend = lstmx.get_backend("numpy")
    call, requests = _call(kind, backend), registry.KINDS[kind].requests
    reference = registry.of_kind(kind)[-1].name
    unable = [i.name for i in registry.of_kind(kind) if i.refuses(call) is not None]
    auto = registry.choose(kind, call).name
    if unable:
        monkeypatch.setenv(requests.variable, unable[0])
        assert registry.choose(kind, call).name == auto
    monkeypatch.setenv(requests.variable, reference)
    assert registry.choose(kind, call).name == reference
    with requests.use(auto):
        assert registry.choose(kind, call).name == auto
        assert registry.choose(kind, call, reference).name == reference
        if unable:
            with pytest.raises(requests.error, match=f"'{unable[0]}' cannot"):
                registry.choose(kind, call, unable[0])
