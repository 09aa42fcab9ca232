"""The built wheel, installed into a fresh venv: only ``fedssl`` at the top of
site-packages, the apps inside it, and ``fedssl run`` works from there.

The fresh venv gets fedssl's dependencies from this venv's site-packages through a
``.pth`` path line (no download); fedssl itself comes only from the wheel, since this
venv's editable-install hooks are ``.pth`` files that a path line does not run.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile

from conftest import ROOT, as_set_flags, tiny


def test_the_wheel_installs_only_fedssl_and_runs(tmp_path):
    # The venv must see fedssl only through the wheel: a PYTHONPATH inherited from the
    # caller (CI sets one to the checkout) would put the repo's copy first.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("fedssl-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fedssl"}, tops
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fedssl/server/app.py", "fedssl/client/app.py", "fedssl/strategies/__init__.py",
            "fedssl/py.typed"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    sp = next((venv / "lib").glob("python3*/site-packages"))
    (sp / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    vpy = venv / "bin" / "python"
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--ignore-installed", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    installed = {p.name for p in sp.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    assert "fedssl" in installed and not installed & {"server", "client", "strategies"}, installed

    where = subprocess.run([str(vpy), "-c", "import fedssl, fedssl.server.app as a; print(fedssl.__file__, a.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(str(sp) in f for f in where.stdout.split()), where.stdout  # the wheel's copy, not the repo's

    out = tmp_path / "run"
    run = subprocess.run([str(venv / "bin" / "fedssl"), "run", "--quiet", *as_set_flags(tiny(out))],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2, summary
