# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # fedssl from Python: a first run, its curves, and a tracking look-up
#
# `fedssl.run(config=None, **overrides)` runs one experiment as a Flower simulation,
# exactly as `fedssl run` does, and returns a `Result` (`.summary`, `.metrics` as a
# pandas DataFrame, `.out_dir`, `.report()`). Config keys are dotted names
# (`fedssl config` lists them all); pass them with `**{"section.key": value}`.
#
# The budget here is small (a few minutes on two CPU cores): Fashion-MNIST with 10
# labeled images per class on the server and none on the 10 clients (labels at
# server). The supervised reference trains on the server's 100 labels only; SemiFL
# also learns from the clients' unlabeled images. Raise `ROUNDS` for the full picture
# (`examples/quickstart.toml` is the 10-round version on all of Fashion-MNIST).

# %%
from pathlib import Path

import fedssl

ROUNDS = 4
FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
common = {
    "data.dataset": "fashion-mnist" if FMNIST.exists() else "synthetic",
    "data.partition": "dirichlet", "data.alpha": 0.3, "data.num_clients": 10,
    "data.labeled_ratio": 0.0, "data.server_labels_per_class": 10,
    "data.max_train_samples": 6000, "data.max_test_samples": 1000,
    "federation.rounds": ROUNDS, "federation.min_clients": 1,
    "server.strategy": "fedavgm", "server.server_momentum": 0.5,  # SemiFL's global momentum
    "server.train_steps": 50, "server.warmup_steps": 300,
    "run.checkpoint_every": 0,
    "run.tracking": ["mlflow"],  # MLFLOW_TRACKING_URI, else ./mlflow.db
}
runs = {algorithm: fedssl.run(**common, **{"client.algorithm": algorithm,
                                           "run.out_dir": f"runs/notebook/{algorithm}"}, overwrite=True)
        for algorithm in ("supervised", "semifl")}
runs["semifl"].metrics[["round", "loss", "acc_all"]]

# %% [markdown]
# ## What the unlabeled data bought

# %%
final = {name: r.summary["final"]["acc_all"] for name, r in runs.items()}
gain = 100 * (final["semifl"] - final["supervised"])
print(f"supervised {final['supervised']:.4f}, semifl {final['semifl']:.4f}: "
      f"semifl vs supervised {gain:+.1f} points of acc_all after round {ROUNDS}")

# %% [markdown]
# ## The curves

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, r in runs.items():
    ax.plot(r.metrics["round"], r.metrics["acc_all"], marker="o", label=name)
ax.set_xlabel("round")
ax.set_ylabel("test accuracy")
ax.legend()
plt.show()

# %% [markdown]
# `Result.report()` renders the run's HTML report (curves, per-class accuracy and the
# clients' label distribution):

# %%
print(runs["semifl"].report())

# %% [markdown]
# ## Looking the runs up in MLflow
#
# Each run logged its resolved config as params and every metric per round. MLflow's
# client finds them by the config they ran with:

# %%
from mlflow import MlflowClient

client = MlflowClient()
experiment = client.get_experiment_by_name("fedssl")
for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=2):
    rounds = [m.step for m in client.get_metric_history(run.info.run_id, "acc_all")]
    print(f"{run.data.params['client.algorithm']:>10}: acc_all {run.data.metrics['acc_all']:.4f} "
          f"at round {max(rounds)}, rounds logged {rounds}")
