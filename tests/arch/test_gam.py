"""GAM: the published block's equations, its receptive field, and the paper model's size."""
import torch

from parazoo.arch import LanguageModel, ModelConfig
from parazoo.arch.gam import GatedAssociativeMemory
from parazoo.ops.testing import assert_close


def test_gam_matches_the_equations():
    torch.manual_seed(0)
    m = GatedAssociativeMemory(16, n_slots=8).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, _ = m(x)
    # local: causal depthwise conv, kernel 3, bias, no activation
    w, b = m.conv1d.weight[:, 0], m.conv1d.bias  # (d, 3)
    xp = torch.nn.functional.pad(x, (0, 0, 2, 0))
    local = torch.stack([sum(w[:, k] * xp[:, t + k] for k in range(3)) + b for t in range(9)], 1)
    M = m.memory
    glob = torch.softmax(x @ M.T, -1) @ M
    g = x @ m.gate_proj.weight.T + m.gate_proj.bias
    expected = torch.sigmoid(g[..., :16]) * local + torch.sigmoid(g[..., 16:]) * glob
    assert_close(y, expected)


def test_receptive_field_is_the_conv_window():
    torch.manual_seed(0)
    m = GatedAssociativeMemory(8, n_slots=4).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    y, _ = m(x)
    s = 5
    x2 = x.clone()
    x2[:, s] += 1.0
    y2, _ = m(x2)
    changed = (y2 - y).abs().amax(-1)[0] > 1e-12
    assert changed.tolist() == [s <= t <= s + 2 for t in range(12)]


def test_state_is_only_the_conv_window():
    m = GatedAssociativeMemory(8, n_slots=4)
    s = m.init_state(3)
    assert list(s) == ["conv_state"] and s["conv_state"].shape == (3, 8, 2)


def test_paper_model_parameter_count():
    # GAM WikiText-2 model: d 512, 6 layers, 512 slots, vocab 10k, context 256, learned positions, tied head
    with torch.device("meta"):
        m = LanguageModel(ModelConfig.from_name("gam-wikitext2"))
    assert m.num_parameters() == 22_599_680
