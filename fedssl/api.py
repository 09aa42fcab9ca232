"""The Python API: :func:`run` and :func:`bench`, the ``fedssl run`` / ``fedssl bench``
commands as functions.

Every error a command reports as ``error: ...`` (exit 2) is raised here as
:class:`fedssl.ConfigError` with the same one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedssl.bench.api import bench
from fedssl.config import Config, ConfigError, flatten, resolve

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Result", "bench", "load_result", "run"]


@dataclass(frozen=True)
class Result:
    """One finished run: what ``fedssl run`` leaves in its directory."""

    summary: dict[str, Any]  #: summary.json: final metrics, the resolved config, elapsed seconds, run id
    metrics: pd.DataFrame  #: metrics.csv: one row per evaluated round
    out_dir: Path  #: the run directory

    @property
    def config(self) -> Config:
        """The resolved config the run used."""
        return resolve(str(self.out_dir / "config.toml"))

    def report(self) -> Path:
        """Render the run's report.html (curves, per-class accuracy, partition) and return its path."""
        from fedssl.report.render import render_run

        return render_run(self.out_dir)["report"]


def _overrides(config: str | Path | Config | dict[str, Any] | None,
               overrides: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(config file, dotted overrides): ``data__alpha=0.1`` and ``**{"data.alpha": 0.1}`` alike."""
    flat = {k.replace("__", "."): v for k, v in overrides.items()}
    if isinstance(config, Config):
        return None, {**config.to_flat(), **flat}
    if isinstance(config, dict):
        return None, {**flatten(config), **flat}
    if config is not None and not isinstance(config, (str, Path)):
        raise ConfigError(f"config: expected a TOML file path, a dict or a Config, got {type(config).__name__}")
    return (str(config) if config is not None else None), flat


def run(config: str | Path | Config | dict[str, Any] | None = None, *, overwrite: bool = False,
        quiet: bool = True, **overrides: Any) -> Result:
    """Run one experiment as a Flower simulation, as ``fedssl run`` does, and return it.

    ``config``: a TOML file, a dict (dotted keys or nested tables) or a :class:`Config`;
    None = the built-in default experiment. ``overrides``: config keys, dotted through
    ``**{"data.alpha": 0.1}`` or with ``__`` for the dot (``data__alpha=0.1``);
    ``run__out_dir`` is the run's directory. ``overwrite``: replace a run already there.
    Raises :class:`fedssl.ConfigError` (one line, as the CLI's ``error:``) on bad input.
    """
    from fedssl.runlog import prepare_fresh
    from fedssl.simulation import run_experiment

    file, flat = _overrides(config, overrides)
    cfg = prepare_fresh(resolve(file, flat), overwrite)
    summary = run_experiment(cfg, quiet=quiet)
    return load_result(cfg.run.out_dir, summary)


def load_result(out_dir: str | Path, summary: dict[str, Any] | None = None) -> Result:
    """The :class:`Result` of a finished run directory."""
    import json

    import pandas as pd

    out = Path(out_dir).resolve()
    try:
        summary = summary if summary is not None else json.loads((out / "summary.json").read_text())
        metrics = pd.read_csv(out / "metrics.csv")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{out}: not a finished fedssl run ({e})") from None
    return Result(summary=summary, metrics=metrics, out_dir=out)
