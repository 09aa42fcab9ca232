"""A user's own algorithm, model and dataset, from a file outside the package, named
by import path: they run in a real Flower simulation, show in ``fedssl config``, and a
bad one is one line, exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import as_set_flags, assert_bad_input, run_cli, tiny

PLUGIN = '''
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedssl.algorithms.base import Algorithm, Params, nn, param


@dataclass(frozen=True)
class ScaledCEParams(Params):
    scale: float = param(1.0, "multiplies the labeled cross-entropy", gt=0)


class ScaledCE(Algorithm):
    """Cross-entropy on the labeled batch, times ``scale``."""

    params_class = ScaledCEParams
    metric_keys = ("loss", "loss_x", "scale")
    uses_unlabeled = False
    unlabeled_views = ()

    def loss(self, model, batch, ctx):
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        return self.params.scale * loss_x, {"loss_x": loss_x.detach(), "scale": self.params.scale}


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_net(num_classes, in_channels, image_size, cosine_head):
    return TinyNet(num_classes, in_channels, image_size)


def not_a_model(**kw):
    return "a string"


def stripes(n=600, seed=0):
    """3 classes of 8x8 images: a bright row at 1, 4 or 7, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
    x[np.arange(n), 1 + 3 * y, :] = 250
    return x, y


def blobs():
    tx, ty = stripes(600, 0)
    vx, vy = stripes(300, 1)
    return tx, ty, vx, vy, ["top", "middle", "bottom"]


def short_labels():
    tx, ty, vx, vy, names = blobs()
    return tx, ty[:-1], vx, vy, names


def labels_out_of_range():
    tx, ty, vx, vy, names = blobs()
    return tx, ty + 1, vx, vy, names
'''


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "userplug" / "myplug.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(PLUGIN))
    return path


def user_keys(plugin: Path, **extra: object) -> dict[str, object]:
    return {"client.algorithm": f"{plugin}:ScaledCE", "model.name": f"{plugin}:tiny_net",
            "data.dataset": f"{plugin}:blobs", **extra}


def test_user_algorithm_model_and_dataset_run_in_a_flower_simulation(tmp_path, plugin):
    out = tmp_path / "run"
    over = tiny(out, **user_keys(plugin, **{"client.scaledce.scale": 2.5, "data.labeled_ratio": 0.5,
                                             "federation.rounds": 3, "client.local_steps": 10,
                                             "client.lr": 0.05}))
    proc = run_cli("run", "--quiet", *as_set_flags(over))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["config"]["client"]["scaledce"] == {"scale": 2.5}
    assert summary["config"]["data"]["dataset"] == f"{plugin}:blobs"
    assert summary["versions"]["flwr"].startswith("1.42") and "git_commit" in summary
    m = pd.read_csv(out / "metrics.csv")
    assert (m["train_scale"] == 2.5).all()  # the parameter reached every client's loss
    assert (m["clients"] == 4).all()  # every client trained with the user's class, model and data
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]  # the user's model learns the user's classes
    # config.toml reproduces the run
    from fedssl.config import resolve
    assert resolve(str(out / "config.toml")).to_flat() == resolve(None, over).to_flat()


def test_user_algorithm_shows_in_fedssl_config(plugin):
    proc = run_cli("config", *as_set_flags(user_keys(plugin, **{"client.scaledce.scale": 2.5})))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    i = lines.index("[client.scaledce]")
    assert lines[i + 1:i + 3] == ["# multiplies the labeled cross-entropy (> 0)", "scale = 2.5"]


def test_a_relative_plugin_path_is_made_absolute(plugin, monkeypatch):
    from fedssl.config import resolve

    monkeypatch.chdir(plugin.parent)
    cfg = resolve(None, {"client.algorithm": "myplug.py:ScaledCE"})
    assert cfg.client.algorithm == f"{plugin}:ScaledCE" and cfg.algorithm_section == "client.scaledce"


@pytest.mark.parametrize("sets, needle", [
    ({"client.nosuch.x": 1}, "unknown config section [client.nosuch]"),
    ({"client.algorithm": "semifl", "client.fedossl.suppress_beta": 0.3},
     "client.fedossl.suppress_beta is a key of algorithm 'fedossl', but client.algorithm = 'semifl'"),
    ({"client.threshold": 0.5}, "did you mean 'client.fixmatch.threshold'"),
    ({"client.fixmatch.treshold": 0.5}, "did you mean 'client.fixmatch.threshold'"),
    ({"client.algorithm": "no_such_module_xyz:Cls"}, "cannot import 'no_such_module_xyz'"),
    ({"client.algorithm": "{plugin}:Missing"}, "has no attribute 'Missing'"),
    ({"client.algorithm": "{plugin}:blobs"}, "is not a subclass of fedssl.algorithms.base.Algorithm"),
    ({"client.algorithm": "{plugin}:ScaledCE", "client.scaledce.scale": 0}, "client.scaledce.scale must be > 0"),
    ({"data.dataset": "{plugin}:short_labels"}, "600 train images but 599 train labels"),
    ({"data.dataset": "{plugin}:labels_out_of_range"}, "train labels must be in [0, 3)"),
    ({"model.name": "{plugin}:NOPE"}, "model.name: module"),
])
def test_bad_plugins_and_sections_are_one_line(plugin, sets, needle):
    sets = {k: v.format(plugin=plugin) if isinstance(v, str) else v for k, v in sets.items()}
    assert_bad_input(run_cli("config", *as_set_flags(sets)), needle)


def test_a_user_model_that_is_no_module_is_one_line(tmp_path, plugin):
    over = tiny(tmp_path / "run", **{"model.name": f"{plugin}:not_a_model"})
    assert_bad_input(run_cli("run", "--quiet", *as_set_flags(over)), "returned str, not a torch.nn.Module")


def test_a_user_algorithms_keys_travel_in_flowers_run_config(plugin):
    """Flower's --run-config takes declared keys only: the user's keys ride in one."""
    from fedssl.config import resolve
    from fedssl.protocol import OWN_KEYS, config_from_run_config, pack_own_keys

    cfg = resolve(None, user_keys(plugin, **{"client.scaledce.scale": 2.5}))
    packed = pack_own_keys(cfg)
    assert packed[OWN_KEYS] == "{ scale = 2.5 }" and "client.scaledce.scale" not in packed
    assert config_from_run_config(packed) == cfg


def test_the_readme_algorithm_declares_its_section_and_its_lr_and_trains(tmp_path):
    """The README's user algorithm, as printed: its section, and its own default of a
    shared key, shown as such in `fedssl config`; then it trains in a simulation."""
    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    code = text.split("```python\n# my_loss.py")[1].split("```")[0]
    (tmp_path / "my_loss.py").write_text("# my_loss.py" + code)
    proc = run_cli("config", "--set", f"client.algorithm={tmp_path / 'my_loss.py'}:ScaledCE",
                   "--set", "client.scaledce.scale=2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    j = lines.index("lr = 0.01")
    assert lines[j - 1] == "# scaledce's default: 0.01 (shared default 0.03)"
    i = lines.index("[client.scaledce]")
    assert lines[i + 2] == "scale = 2.0" and "threshold = 0.9" in lines[i:]
    # and it trains: a real 2-round simulation with it, its parameter set by --set
    out = tmp_path / "run"
    proc = run_cli("run", "--quiet", *as_set_flags(tiny(out, **{
        "client.algorithm": f"{tmp_path / 'my_loss.py'}:ScaledCE", "client.scaledce.scale": 2,
        "client.scaledce.threshold": 0.05})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = pd.read_csv(out / "metrics.csv")
    assert json.loads((out / "summary.json").read_text())["status"] == "ok"
    assert (m["clients"] == 4).all() and (m["train_mask"] > 0).all() and (m["train_loss_u"] > 0).all()


def test_run_config_keeps_flower_defaults_and_the_algorithms_own():
    """From Flower's run config (every declared key, at pyproject's values): the app's
    own defaults stay (run.out_dir), and another algorithm's keys at their defaults
    are no error."""
    import tomllib

    from fedssl.config import flatten
    from fedssl.protocol import config_from_run_config
    from tests.conftest import ROOT

    table = flatten(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    cfg = config_from_run_config({**table, "client.algorithm": "semifl", "client.semifl.threshold": 0.8})
    assert cfg.run.out_dir == "runs/flwr" and cfg.algo_params.threshold == 0.8
    with pytest.raises(Exception, match="is a key of algorithm 'fedossl'"):
        config_from_run_config({**table, "client.algorithm": "semifl", "client.fedossl.suppress_beta": 0.3})
