"""Experiment trackers fed from the same per-round rows as metrics.csv (``run.tracking``).

- ``tensorboard``: event files under ``<run>/tensorboard`` (PyTorch's ``SummaryWriter``),
  one scalar per metric column, step = round.
- ``mlflow``: one MLflow run with the resolved config as params (flattened, dotted
  names), every metric column per round (step = round), and the run's files as
  artifacts at the end. It goes to ``MLFLOW_TRACKING_URI`` when set, else to MLflow's
  own local default in the working directory (``sqlite:///mlflow.db`` with artifacts in
  ``./mlruns``: what ``mlflow ui`` started there shows; MLflow 3 refuses its older plain
  file store by default). A single run
  lands in the experiment ``fedssl``; a ``fedssl bench`` cell in one experiment per
  bench directory, with the grid's axes as the run's tags. The MLflow run id is kept in
  ``<run>/tracking.json`` so a resumed run continues the same MLflow run.

Both are optional extras (``pip install 'fedssl[tracking]'``). A missing package, or an
MLflow server that cannot be reached when the run starts, is bad input (one line,
exit 2). A tracker that fails later (the server goes away mid-run) is dropped with one
warning: the run goes on and metrics.csv, the record of truth, stays complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from fedssl.config import Config, ConfigError

log = logging.getLogger("fedssl")

INSTALL = "pip install 'fedssl[tracking]'"
TRACKING_JSON = "tracking.json"
ARTIFACTS = ("metrics.csv", "summary.json", "config.toml", "partition.csv")
# A dead tracking server must cost seconds, not MLflow's default minutes of retries.
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def backends(cfg: Config) -> list[str]:
    return [b for b in cfg.run.tracking.split(",") if b]


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's finite numeric metrics (``round`` is the step, not a metric)."""
    return {k: float(v) for k, v in row.items() if k != "round" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoard:
    name = "tensorboard"

    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"run.tracking=tensorboard: the tensorboard package is not installed ({INSTALL})") \
                from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def finish(self, out: Path, status: str) -> None:
        self.writer.close()


def mlflow_client() -> tuple[Any, str]:
    """(MlflowClient, tracking URI), the server checked reachable; ConfigError otherwise."""
    for k, v in MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"run.tracking=mlflow: the mlflow package is not installed ({INSTALL})") from None
    from mlflow import MlflowClient

    uri = mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's local default in the cwd
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means no tracking server to use
        raise ConfigError(f"run.tracking=mlflow: cannot reach the MLflow tracking server at {uri} "
                          f"({first_line(e)})") from None
    return client, uri


class MLflow:
    name = "mlflow"

    def __init__(self, cfg: Config, out: Path, run_id: str) -> None:
        from mlflow.entities import Param

        self.client, self.uri = mlflow_client()
        saved = _read_json(out / TRACKING_JSON).get("mlflow_run_id")
        if saved:  # a resumed run continues its MLflow run
            self.run_id = saved
            self.client.update_run(saved, status="RUNNING")
            return
        experiment, tags, name = experiment_of(out)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        run = self.client.create_run(exp_id, run_name=name, tags={"fedssl.run_id": run_id, **tags})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in cfg.to_flat().items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        from fedssl.runlog import write_json

        write_json(out / TRACKING_JSON, {"mlflow_run_id": self.run_id, "mlflow_tracking_uri": self.uri})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def finish(self, out: Path, status: str) -> None:
        for name in ARTIFACTS:
            if (out / name).exists():
                self.client.log_artifact(self.run_id, str(out / name))
        self.client.set_terminated(self.run_id, status="FINISHED" if status in ("ok", "diverged") else "FAILED")


def experiment_of(out: Path) -> tuple[str, dict[str, str], str]:
    """(experiment name, tags, run name): a bench cell's run dir is ``<bench>/runs/<cell id>``."""
    bench = out.parent.parent
    grid = _read_json(bench / "grid.json") if out.parent.name == "runs" else {}
    for cell in grid.get("cells", []):
        if cell.get("id") == out.name:
            tags = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in cell["params"].items()}
            return f"fedssl bench {bench.resolve()}", {"fedssl.cell": out.name, **tags}, out.name
    return "fedssl", {}, out.name


class Trackers:
    """The configured trackers; one that fails mid-run is dropped with a warning."""

    def __init__(self, cfg: Config, out: Path, run_id: str) -> None:
        self.out = out
        self.active: list[Any] = []
        for name in backends(cfg):
            self.active.append(TensorBoard(out) if name == "tensorboard" else MLflow(cfg, out, run_id))

    def _each(self, what: str, call: Any) -> None:
        for t in list(self.active):
            try:
                call(t)
            except Exception as e:  # noqa: BLE001 - tracking must never stop a run
                self.active.remove(t)
                log.warning("run.tracking: %s failed while %s (%s); it gets no more data this run "
                            "(metrics.csv has every round)", t.name, what, first_line(e))

    def log_row(self, row: dict[str, Any]) -> None:
        metrics = scalars(row)
        self._each(f"logging round {row['round']}", lambda t: t.log(int(row["round"]), metrics))

    def finish(self, status: str) -> None:
        self._each("finishing", lambda t: t.finish(self.out, status))


def check_trackers(cfg: Config) -> None:
    """Fail early (before Ray starts) on a missing package or an unreachable MLflow server."""
    names = backends(cfg)
    if "tensorboard" in names:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(f"run.tracking=tensorboard: the tensorboard package is not installed "
                              f"({INSTALL})") from None
    if "mlflow" in names:
        mlflow_client()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
