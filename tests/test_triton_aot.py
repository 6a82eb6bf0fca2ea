"""Every Triton kernel in parazoo.ops compiles ahead of time for sm_80 and sm_90, no GPU needed.

Kernels are discovered from the ``AOT_SPECS`` lists of the ops modules, so a new kernel is
covered by adding its spec next to it.
"""
import pytest

from parazoo.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed")

if triton_available():
    from parazoo.ops._triton_aot import collect_specs, compile_specs

    SPECS = collect_specs()
else:  # pragma: no cover
    SPECS = []


def test_some_kernels_are_registered():
    assert len(SPECS) > 0, "no AOT_SPECS found under parazoo.ops: discovery is broken"


@pytest.fixture(scope="module")
def compiled(request):
    # compile only the specs this run selected (``-k <op>``), in one worker
    chosen = {item.callspec.params["spec"].id for item in request.session.items
              if hasattr(item, "callspec") and "spec" in item.callspec.params}
    specs = [s for s in SPECS if s.id in chosen]
    return {(r["id"], r["cap"]): r for r in compile_specs(specs, caps=(80, 90))}


_PAIRS = [(s, cap) for s in SPECS for cap in (80, 90) if cap in s.caps]


@pytest.mark.parametrize(("spec", "cap"), _PAIRS, ids=[f"{s.id}-sm{cap}" for s, cap in _PAIRS])
def test_kernel_compiles_ahead_of_time(spec, cap, compiled):
    rec = compiled[(spec.id, cap)]
    assert rec["ok"], f"{spec.id} failed to compile for sm_{cap}:\n{rec.get('error')}"


@pytest.mark.parametrize(("spec", "cap"), _PAIRS, ids=[f"{s.id}-sm{cap}" for s, cap in _PAIRS])
def test_kernel_does_not_spill(spec, cap, compiled):
    """ptxas -v of each build: no register spills (a spilling build is a tile size to fix)."""
    rec = compiled[(spec.id, cap)]
    if not rec["ok"] or rec.get("registers") is None:
        pytest.skip("not compiled, or no ptxas bundled with triton: spills unknown")
    assert (rec["spill_stores"] or 0) == 0 and (rec["spill_loads"] or 0) == 0, \
        f"{spec.id} spills on sm_{cap}: {rec['spill_stores']} B stored, {rec['spill_loads']} B loaded " \
        f"({rec['registers']} registers)"
