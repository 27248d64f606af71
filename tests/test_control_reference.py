"""wwmonitor's controllers against an independent implementation of the published formulas.

The same weights go to a real :class:`wwmonitor.Monitor` run (its background analysis, ``sync=True``
controllers bound to it) and to ``tests/control_reference.py`` (written from the TempBalance and AlphaDecay
papers and repositories, eigenvalues as the references compute them: ``torch.linalg.svdvals`` squared,
conv slices scaled by ``sqrt(0.5)``, float64).  Every parameter's value in the update (read inside
``optimizer.step()``, after the controller's hook) must equal the reference's within 1e-9 relative, for an MLP
and a small conv net with BatchNorm, for each TempBalance assignment function and for AlphaDecay.
"""

from __future__ import annotations

import math

import control_reference as ref
import pytest
import torch
from torch import nn

import wwmonitor
from wwmonitor import control

REL = 1e-9
BASE_LR, BASE_WD = 0.1, 0.05


def _heavy_tailed_(model: nn.Module, seed: int) -> None:
    """Give every Linear/Conv2d weight Student-t entries with its own degrees of freedom, so the layers'
    alphas differ clearly (as trained layers' do) and every assignment function has something to order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, m in enumerate(mod for mod in model.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))):
            dof = 1.5 + 0.7 * k
            z = torch.randn(m.weight.shape, generator=g)
            chi = torch.distributions.Chi2(torch.tensor(dof)).sample(m.weight.shape)  # uses the global RNG
            m.weight.copy_(0.05 * z / torch.sqrt(chi / dof))


def _mlp() -> nn.Module:
    # tuned: 96x80, 80x72, 96x60; dropped: the first and last, and 72x40, 40x96 (40 < 50 eigenvalues)
    dims = (64, 96, 80, 72, 40, 96, 60, 10)
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class _ConvNet(nn.Module):
    # tuned: conv2 (9*8 = 72 eigenvalues), conv3 (144), fc1 (64); dropped: conv1 (first), conv4 (8), fc2 (last)
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv4, self.bn4 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x):
        f = nn.functional
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = f.relu(bn(conv(x)))
        x = f.max_pool2d(f.relu(self.bn4(self.conv4(x))), 2)
        return self.fc2(f.relu(self.fc1(x.flatten(1))))


def _effective(opt: torch.optim.Optimizer, model: nn.Module, quantity: str) -> dict[str, float]:
    """Parameter name -> the ``quantity`` its update uses: read by a step pre-hook registered after the
    controller's, so it sees the groups the update sees."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[str, float] = {}

    def grab(o, args, kwargs):
        for g in o.param_groups:
            for p in g["params"]:
                seen[names[id(p)]] = float(g[quantity])

    h = opt.register_step_pre_hook(grab)
    try:
        opt.step()  # no gradients: nothing moves, the hooks still run
    finally:
        h.remove()
    return seen


def _controllers():
    """(label, controller, optimizer factory, quantity, reference per-module values)."""
    out = []
    for func in ref.ASSIGNMENTS:
        out.append(
            (
                f"tempbalance-{func}",
                control.TempBalance(assignment=func, sync=True),
                lambda ps: torch.optim.SGD(ps, lr=BASE_LR, momentum=0.9),
                "lr",
                lambda model, layers, func=func: ref.tempbalance_rates(model, BASE_LR, func, layers=layers),
                BASE_LR,
            )
        )
    out.append(
        (
            "alphadecay",
            control.AlphaDecay(sync=True),
            lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=BASE_WD),
            "weight_decay",
            lambda model, layers: ref.alphadecay_decays(model, BASE_WD, layers=layers),
            BASE_WD,
        )
    )
    return out


@pytest.mark.parametrize("make_model", [_mlp, _ConvNet], ids=["mlp", "convnet"])
def test_controllers_match_the_independent_reference(make_model, tmp_path):
    torch.manual_seed(0)
    model = make_model()
    _heavy_tailed_(model, seed=1)
    layers = ref.analysed_layers(model)  # the same weights the monitor copies below (nothing trains)
    ctls = _controllers()
    with wwmonitor.Monitor(
        model, root=str(tmp_path), run_name="ref", resume=False, alerts=None, loggers=False, announce=False
    ) as mon:
        bound = []
        for label, c, make_opt, quantity, reference, base in ctls:
            opt = make_opt(model.parameters())
            bound.append((label, c.bind(model=model, optimizer=opt, monitor=mon), opt, quantity, reference, base))
        assert mon.snapshot(step=1, epoch=0)
        for label, c, *_ in bound:
            assert c.step(1), f"{label}: the sync controller did not apply the snapshot's analysis"
    for label, c, opt, quantity, reference, base in bound:
        per_module = reference(model, layers)
        want = ref.parameter_values(model, per_module, base)
        got = _effective(opt, model, quantity)
        assert set(got) == set(want), label
        bad = {n: (got[n], want[n]) for n in want if not math.isclose(got[n], want[n], rel_tol=REL, abs_tol=0.0)}
        assert not bad, f"{label}: parameters whose {quantity} differs from the reference: {bad}"
        # the tuned layers really got different values (the check is not vacuous), the others the base value
        tuned = set(per_module.values())
        assert len(tuned) >= 3, f"{label}: {per_module}"
        assert sum(1 for v in want.values() if v == base) >= 4, label
        # the controller's own account (ctl.current, its records) says the same per layer, with the same alphas
        for layer, value in c.current.items():
            assert math.isclose(value, per_module.get(layer, base), rel_tol=REL), (label, layer)
        alphas = {ly.name: ly.alpha for ly in layers}
        recs = [r for r in c.assignments if r.layer in alphas]
        assert len(recs) == len(layers), (label, [r.layer for r in c.assignments])
        for r in recs:
            assert r.step == 1 and r.source_step == 1 and r.quantity == quantity, (label, r)
            assert math.isclose(r.alpha, alphas[r.layer], rel_tol=REL), (label, r.layer, r.alpha, alphas[r.layer])


def test_reference_sees_the_layers_the_brief_describes():
    """The fixture models exercise what the test claims: dropped ends, the eigenvalue threshold, conv pooling."""
    torch.manual_seed(0)
    conv = _ConvNet()
    layers = ref.analysed_layers(conv)
    assert [ly.name for ly in layers] == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert [len(ly.eigs) for ly in layers] == [9, 72, 144, 8, 64, 10]
    assert [ly.name for ly in ref.tuned(layers)] == ["conv2", "conv3", "fc1"]
    rates = ref.tempbalance_rates(conv, 1.0)
    assert rates["bn2"] == rates["conv2"] and "bn1" not in rates and "bn4" not in rates
    mlp_layers = ref.analysed_layers(_mlp())
    assert [len(ly.eigs) for ly in ref.tuned(mlp_layers)] == [80, 72, 60]
