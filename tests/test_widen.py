"""Growing a trained network into a wider one (mtan.model.widen): the wider network computes the
same outputs, in evaluation and in training mode, for every architecture; its copied channels
learn apart from the first step; widths that do not grow by one factor are refused."""
from __future__ import annotations

import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.model import WidenError, stage_widths, widened_state
from mtan.model.widen import channel_map


def trained(arch: str, width: float, task: str | None = None) -> MTAN:
    """A network with non-trivial weights and BatchNorm statistics (a few training-mode passes)."""
    torch.manual_seed(0)
    tasks = preset_tasks("cityscapes-7")
    if task:
        tasks = [t for t in tasks if t["name"] == task]
    model = MTAN(tasks, arch=arch, width=width)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.train()
        for _ in range(3):
            model(torch.rand(4, 3, 32, 64))
    return model.eval()


def grown(model: MTAN, width: float, seed: int = 0) -> MTAN:
    tasks = [{k: v for k, v in t.to_config().items() if k != "class_bias"} for t in model.tasks]
    wider = MTAN(tasks, arch=model.arch, width=width)
    wider.load_state_dict(widened_state(model.state_dict(), wider.state_dict(), seed=seed))
    return wider.eval()


@pytest.mark.parametrize("arch,task", [("mtan", None), ("split", None), ("single", "semantic")])
@pytest.mark.parametrize("width", [0.125, 0.09375])  # twice, and 1.5 times (uneven copies)
def test_the_wider_network_computes_the_same_outputs(arch, task, width):
    narrow = trained(arch, 0.0625, task)
    wide = grown(narrow, width)
    assert stage_widths(width)[0] > stage_widths(0.0625)[0]
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in narrow.parameters())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for mode in ("eval", "train"):  # BatchNorm's running statistics, then the batch's own
            narrow.train(mode == "train")
            wide.train(mode == "train")
            want, got = narrow(x), wide(x)
            for k in want:
                scale = float(want[k].abs().max())
                assert float((got[k] - want[k]).abs().max()) < 1e-4 * max(scale, 1.0), (mode, k)


def test_copies_learn_apart_and_the_seed_decides_the_split():
    narrow = trained("mtan", 0.0625)
    wide = grown(narrow, 0.125, seed=1)
    assert not torch.equal(wide.state_dict()["encoder.stages.1.first.0.weight"],
                           grown(narrow, 0.125, seed=2).state_dict()["encoder.stages.1.first.0.weight"])
    name = "encoder.stages.0.first.0.weight"  # 4 -> 8 filters: new 0 and 1 copy old 0
    before = wide.state_dict()[name].clone()
    assert torch.equal(before[0], before[1])
    wide.train()
    optimizer = torch.optim.SGD(wide.parameters(), lr=0.1)
    out = wide(torch.rand(4, 3, 32, 64))
    (out["semantic"].logsumexp(1).mean() + out["depth"].square().mean()).backward()
    optimizer.step()
    after = wide.state_dict()[name]
    assert not torch.allclose(after[0], after[1])  # the two copies received different gradients


def test_channel_map_copies_contiguously():
    assert channel_map(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert channel_map(4, 6).tolist() == [0, 0, 1, 2, 2, 3]
    assert channel_map(3, 3).tolist() == [0, 1, 2]


def test_what_cannot_grow_is_refused():
    narrow = trained("mtan", 0.0625)
    tasks = [t.to_config() for t in narrow.tasks]
    with pytest.raises(WidenError, match="the layers grow by different factors"):
        widened_state(narrow.state_dict(), MTAN(tasks, width=0.1).state_dict())  # 4 -> 6 but 8 -> 13
    with pytest.raises(WidenError, match="cannot grow"):
        widened_state(MTAN(tasks, width=0.125).state_dict(), narrow.state_dict())  # narrower
    with pytest.raises(WidenError, match="differ in their layers"):
        widened_state(narrow.state_dict(), MTAN(tasks, arch="split", width=0.125).state_dict())
