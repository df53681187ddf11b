import math

import pytest

from sra_rag import SRAConfig
from sra_rag.schedule import inner_edit, layer_edits, outer_edit

L = 30  # SmolLM2-135M's layer count


def test_inner_loop_geometry_by_hand():
    config = SRAConfig()  # b=100, t=200
    n = 2000
    c = math.ceil((n - 100 - 200 - 3) / (L + 3))  # 52
    edit = inner_edit(n, 0, L, config)
    assert c == 52
    s = 3 * c + 100 + 3
    assert (edit.row_start, edit.row_stop) == (s, s + c)
    assert (edit.target_start, edit.target_stop) == (s - 3 * c, s - 2 * c)
    assert edit.tau == pytest.approx(0.5 / (s - 100))
    assert edit.beta == 4.0


def test_inner_rows_are_clipped_at_the_tail_and_skip_when_empty():
    config = SRAConfig()
    n = 2000
    stops = [inner_edit(n, layer, L, config) for layer in range(L)]
    active = [edit for edit in stops if edit is not None]
    assert all(edit.row_stop <= n - 200 for edit in active)
    # the last layer never edits
    assert stops[L - 1] is None


def test_outer_loop_geometry_by_hand():
    config = SRAConfig()
    n = 2000
    c = math.ceil((n - 200 - 3) / (L + 3))  # 55
    assert outer_edit(n, 0, L, config) is None  # the outer loop starts at layer 1
    edit = outer_edit(n, 5, L, config)
    assert (edit.row_start, edit.row_stop) == (n - 200, n)
    assert (edit.target_start, edit.target_stop) == (7 * c + 3, 8 * c + 3)
    assert edit.tau == pytest.approx(0.3 / (n - 200))
    last_scheduled = outer_edit(n, L - 2, L, config)
    assert last_scheduled.target_stop == min((L + 1) * c + 3, n - 200)
    assert outer_edit(n, L - 1, L, config) is None


def test_short_prompts_leave_loops_inactive():
    config = SRAConfig()
    assert all(inner_edit(303, layer, L, config) is None for layer in range(L))  # n <= b + t + 3
    assert all(outer_edit(203, layer, L, config) is None for layer in range(L))  # n <= t + 3
    assert outer_edit(300, 1, L, config) is not None


def test_switches_and_disabled():
    n = 3000
    assert all(e.loop == "outer" for layer in range(L) for e in layer_edits(n, layer, L, SRAConfig(inner=False)))
    assert all(e.loop == "inner" for layer in range(L) for e in layer_edits(n, layer, L, SRAConfig(outer=False)))
    assert all(layer_edits(n, layer, L, SRAConfig(enabled=False)) == [] for layer in range(L))


def test_rows_of_the_two_loops_never_overlap():
    config = SRAConfig(begin_length=5, tail_length=50)
    for n in (120, 500, 4096):
        for layer in range(L):
            edits = {e.loop: e for e in layer_edits(n, layer, L, config)}
            if "inner" in edits and "outer" in edits:
                assert edits["inner"].row_stop <= edits["outer"].row_start


def test_dynamic_tail_changes_the_rows():
    config = SRAConfig(dynamic_tail=True, tail_divisor=10)
    edit = outer_edit(1000, 3, L, config)
    assert (edit.row_start, edit.row_stop) == (900, 1000)


def test_outer_layer_band():
    n = 3000
    band = SRAConfig(outer_layers=(0.5, 1.0))
    active = [layer for layer in range(L) if outer_edit(n, layer, L, band) is not None]
    assert active == list(range(math.ceil(0.5 * (L - 1)), L - 1))
    assert [outer_edit(n, layer, L, SRAConfig(outer_layers=(0.0, 1.0))) for layer in range(L)] == [
        outer_edit(n, layer, L, SRAConfig()) for layer in range(L)
    ]
    with pytest.raises(ValueError, match="outer_layers"):
        SRAConfig(outer_layers=(0.6, 0.4))
