"""Container engines and the images of fedssl's Flower deployment, built offline and
cached per machine.

Roles and images (``docker/``; every Dockerfile takes ``BASE_IMAGE`` as a build
argument whose default is Flower's official image of the pinned version):

==========  =========================  ==========================================
image       Dockerfile (target)        carries
==========  =========================  ==========================================
superlink   superlink.Dockerfile       flwr only (routes messages)
supernode   supernode.Dockerfile       flwr + fedssl, no torch (relays messages;
                                       validates its node config at start)
serverapp   superexec.Dockerfile       flwr + CPU torch + fedssl, no torchvision
            (serverapp)
clientapp   superexec.Dockerfile       serverapp + torchvision (RandAugment); one
            (clientapp)                per SuperNode (Flower's --isolation process)
==========  =========================  ==========================================

No registry is needed: the default build makes a Debian base image from the apt
mirror with ``mmdebstrap`` and imports it, builds an offline stand-in for Flower's
base images on it (``flwr-base.Dockerfile``), and installs every Python package from a
wheelhouse made on the host (``pip download`` with the host's pip configuration, plus
fedssl's own wheel), with ``pip install --no-index`` inside the build. Each image is
labelled with a hash of its inputs (``fedssl.inputs``); an image whose label matches is
reused, so a machine pays the build once (the base image costs about 3 minutes of apt
downloads, the Python layers about 1 minute).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedssl.config import ConfigError

VERSION = "0.1.0"
FLWR = "1.42.0"
DEBIAN_SUITE = "bookworm"  # Python 3.11, as the host's wheels
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = os.environ.get("FEDSSL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TORCH = os.environ.get("FEDSSL_IMAGE_TORCH", "torch==2.13.0+cpu")  # CPU build: ~0.8 GB, not ~5 GB
ROLES = ("superlink", "supernode", "serverapp", "clientapp")
INSTALL_HINT = ("apt-get install podman podman-compose runc mmdebstrap (then docker/setup-engine.sh), "
                "or docker.io docker-compose mmdebstrap with dockerd running")

Echo = Callable[[str], None]


class BuildError(RuntimeError):
    """An image build step failed (exit status 1; the message names the log)."""


# ------------------------------------------------------------------------ engines
@dataclass(frozen=True)
class Engine:
    name: str  # "podman" | "docker"
    exe: str
    compose: tuple[str, ...]
    version: str

    def run(self, *args: str, check: bool = True, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # RUN --mount needs BuildKit on docker
        res = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout, env=env,
                             check=False, **kw)
        if check and res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise BuildError(f"{self.name} {' '.join(args[:2])} failed: {' | '.join(tail)}")
        return res

    def describe(self) -> str:
        return f"{self.name} {self.version} + {' '.join(self.compose)}"


def _version(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    words = res.stdout.replace(",", " ").split()
    return next((w for w in words if w[:1].isdigit()), "?")


def _podman() -> Engine | None:
    exe, comp = shutil.which("podman"), shutil.which("podman-compose")
    if not exe or not comp:
        return None
    v = _version([exe, "version", "--format", "{{.Client.Version}}"])
    return Engine("podman", exe, (comp,), v) if v else None


def _docker() -> Engine | None:
    exe = shutil.which("docker")
    if not exe:
        return None
    v = _version([exe, "version", "--format", "{{.Server.Version}}"])  # fails without a daemon
    if not v:
        return None
    if _version([exe, "compose", "version", "--short"]):
        return Engine("docker", exe, (exe, "compose"), v)
    comp = shutil.which("docker-compose")
    return Engine("docker", exe, (comp,), v) if comp else None


def find_engine(want: str | None = None) -> Engine:
    """The container engine to use (``want``: podman, docker, or None = the first that
    works, podman first). A missing engine is bad input: one line naming the packages."""
    if want not in (None, "podman", "docker"):
        raise ConfigError(f"--engine must be podman or docker, got {want!r}")
    for name in ([want] if want else ["podman", "docker"]):
        eng = _podman() if name == "podman" else _docker()
        if eng is not None:
            if not shutil.which("mmdebstrap") and not os.environ.get("FEDSSL_BASE_IMAGE"):
                raise ConfigError("mmdebstrap not found (it builds the offline Debian base image): "
                                  "apt-get install mmdebstrap, or set FEDSSL_BASE_IMAGE to a local "
                                  "image with python3 and python3-venv")
            return eng
    which = want or "podman or docker"
    raise ConfigError(f"no working container engine ({which}, with compose) found: {INSTALL_HINT}")


# ------------------------------------------------------------------------ wheelhouse
def _host_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _pin(dist: str) -> str:
    v = _host_version(dist)  # the images carry the versions the host runs with
    return f"{dist}=={v}" if v else dist


def torchvision_for(torch_spec: str) -> str:
    """The torchvision release made for a torch release (2.N -> 0.(N+15))."""
    ver = torch_spec.split("==", 1)[1].split("+")[0]
    major, minor = (int(x) for x in ver.split(".")[:2])
    return f"torchvision==0.{minor + 15}.0" if major == 2 else "torchvision"


def requirements() -> dict[str, list[str]]:
    return {
        "flwr": [f"flwr=={FLWR}"],
        # psutil: `fedssl node` loads fedssl.deploy, whose process handling uses it.
        "supernode": [_pin("numpy"), _pin("tomli-w"), _pin("psutil")],
        "serverapp": [TORCH, _pin("numpy"), _pin("scipy"), _pin("safetensors"), _pin("tomli-w")],
        "clientapp": [torchvision_for(TORCH), _pin("pillow")],
    }


def source_hash(root: Path) -> str:
    """Hash of fedssl's sources (what its wheel is built from)."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    for pkg in ("fedssl", "server", "client", "strategies"):  # fedssl/{server,...} are links: not followed
        files += sorted(p for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _pip(args: list[str], log: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    with open(log, "a") as fh:
        fh.write(f"$ pip {' '.join(args)}\n{res.stdout}{res.stderr}\n")
    if res.returncode != 0:
        last = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR")][-1:] or [str(res.returncode)]
        raise BuildError(f"pip {args[0]} failed: {last[0]} (log: {log})")


def make_wheelhouse(root: Path, ctx: Path, echo: Echo) -> dict[str, str]:
    """The build context ``ctx/wheels``: requirement files per role, their wheels
    (``pip download`` on the host) and fedssl's wheel. Returns the build args it
    implies (TORCHVISION_OPS_SHIM). Reused while requirements and sources match."""
    wheels = ctx / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    log = ctx / "wheelhouse.log"
    reqs = requirements()
    stamp = wheels / "stamp.json"
    want = {"requirements": reqs, "source": source_hash(root)}
    old = json.loads(stamp.read_text()) if stamp.exists() else {}
    if old.get("requirements") != reqs:
        echo(f"wheelhouse: pip download {', '.join(r for rs in reqs.values() for r in rs)}")
        for role, rs in reqs.items():
            (wheels / f"requirements-{role}.txt").write_text("\n".join(rs) + "\n")
        _pip(["download", "-q", "--only-binary=:all:", "-d", str(wheels),
              *(x for role in ("flwr", "supernode", "serverapp") for x in ("-r", str(wheels / f"requirements-{role}.txt")))],
             log)
        _pip(["download", "-q", "--only-binary=:all:", "--no-deps", "-d", str(wheels),
              "-r", str(wheels / "requirements-clientapp.txt")], log)
    if old.get("source") != want["source"] or not list(wheels.glob("fedssl-*.whl")):
        for w in wheels.glob("fedssl-*.whl"):
            w.unlink()
        echo("wheelhouse: pip wheel --no-deps (fedssl)")
        _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(root)], log)
    shutil.copy2(root / "docker" / "torchvision_ops_shim.py", wheels / "torchvision_ops_shim.py")
    stamp.write_text(json.dumps(want, sort_keys=True))
    tv = next(iter(wheels.glob("torchvision-*.whl")), None)
    shim = tv is not None and "+cpu" not in tv.name  # PyPI's torchvision is a CUDA build
    return {"TORCHVISION_OPS_SHIM": "1" if shim else "0"}


# ------------------------------------------------------------------------ images
def tag(role: str) -> str:
    return f"localhost/fedssl-{role}:{VERSION}"


def _label(engine: Engine, image: str) -> str | None:
    res = engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
    if res.returncode != 0:
        return None
    labels = json.loads(res.stdout.strip().splitlines()[0] or "null") or {}
    return labels.get("fedssl.inputs")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def debian_base(engine: Engine, ctx: Path, echo: Echo) -> str:
    """A Debian image from the apt mirror (mmdebstrap + import), cached in the engine's
    image store under a tag that hashes its inputs; FEDSSL_BASE_IMAGE overrides it."""
    if os.environ.get("FEDSSL_BASE_IMAGE"):
        return os.environ["FEDSSL_BASE_IMAGE"]
    key = _digest(DEBIAN_SUITE, DEBIAN_PACKAGES, MIRROR)
    image = f"localhost/fedssl-debian:{DEBIAN_SUITE}-{key}"
    if _label(engine, image) == key:
        return image
    echo(f"base image: mmdebstrap {DEBIAN_SUITE} ({', '.join(DEBIAN_PACKAGES)}) from {MIRROR}")
    with tempfile.TemporaryDirectory(dir=ctx) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", "--variant=apt", f"--include={','.join(DEBIAN_PACKAGES)}",
               "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
               "--dpkgopt=path-exclude=/usr/share/locale/*", DEBIAN_SUITE, str(tar), MIRROR]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        (ctx / "mmdebstrap.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise BuildError(f"mmdebstrap failed (log: {ctx / 'mmdebstrap.log'})")
        engine.run("import", "--change", 'CMD ["/bin/bash"]', "--change", f"LABEL fedssl.inputs={key}",
                   str(tar), image)
    return image


def _image_id(engine: Engine, image: str) -> str:
    return engine.run("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def build_image(engine: Engine, ctx: Path, dockerfile: Path, image: str, args: dict[str, str],
                target: str | None, echo: Echo, with_fedssl: bool = True) -> str | None:
    """Build ``image`` unless one labelled with the same inputs exists. Returns the id of
    the image the tag moved away from, if it built over one (None otherwise). Inputs: the
    Dockerfile, build args (with the parent's image id), the wheelhouse's wheels and
    requirement files, and (``with_fedssl``) fedssl's sources."""
    wheels = ctx / "wheels"
    files = sorted(p.name for p in wheels.glob("*.whl")) + [
        p.read_text() for p in sorted(wheels.glob("requirements-*.txt"))]
    if with_fedssl:
        files += [json.loads((wheels / "stamp.json").read_text())["source"],
                  (wheels / "torchvision_ops_shim.py").read_text()]
    parent = _image_id(engine, args["BASE_IMAGE"]) if args["BASE_IMAGE"].startswith("localhost/") else ""
    key = _digest(dockerfile.read_text(), args, parent, target, files)
    if _label(engine, image) == key:
        return None
    stale = engine.run("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
    echo(f"building {image} ({dockerfile.name}{' --target ' + target if target else ''})")
    cmd = ["build", "-f", str(dockerfile), "-t", image, "--label", f"fedssl.inputs={key}"]
    if target:
        cmd += ["--target", target]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    res = engine.run(*cmd, str(ctx), check=False)
    log = ctx / f"build-{image.rsplit('/', 1)[-1].replace(':', '-')}.log"
    log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        tail = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()][-2:]
        raise BuildError(f"building {image} failed: {' | '.join(tail)} (log: {log})")
    return stale if stale and stale != _image_id(engine, image) else None


def build_images(engine: Engine, root: Path, echo: Echo, official: bool = False) -> dict[str, str]:
    """Build (or reuse) the four role images; returns role -> image. ``official``
    builds on Flower's official images and installs from the package indexes instead
    (needs a registry and the network)."""
    ctx = root / "build" / "containers"
    ctx.mkdir(parents=True, exist_ok=True)
    extra = make_wheelhouse(root, ctx, echo)
    docker = root / "docker"
    stale: list[str | None] = []
    if official:
        bases = {r: f"flwr/{'superexec' if r.endswith('app') else r}:{FLWR}" for r in ROLES}
        pip = {}
    else:
        base = tag("flwr").replace(VERSION, FLWR)
        stale.append(build_image(engine, ctx, docker / "flwr-base.Dockerfile", base,
                                 {"BASE_IMAGE": debian_base(engine, ctx, echo)}, None, echo, with_fedssl=False))
        bases = dict.fromkeys(ROLES, base)
        pip = {"PIP_ARGS": "--no-index"}
    stale.append(build_image(engine, ctx, docker / "superlink.Dockerfile", tag("superlink"),
                             {"BASE_IMAGE": bases["superlink"]}, None, echo, with_fedssl=False))
    stale.append(build_image(engine, ctx, docker / "supernode.Dockerfile", tag("supernode"),
                             {"BASE_IMAGE": bases["supernode"], **pip}, None, echo))
    for role in ("serverapp", "clientapp"):
        stale.append(build_image(engine, ctx, docker / "superexec.Dockerfile", tag(role),
                                 {"BASE_IMAGE": bases[role], **pip, **extra}, role, echo))
    remove_stale(engine, stale)
    return {r: tag(r) for r in ROLES}


def remove_stale(engine: Engine, stale: list[str | None]) -> None:
    """Remove the images that rebuilt tags left untagged, children first; otherwise each
    source change leaves one more set behind on a long-lived machine (the engine's layer
    cache shares torch's layer, so each set is mostly the fedssl layers). ``rmi`` fails
    harmlessly on one that a container still uses."""
    for image_id in reversed([s for s in stale if s]):
        engine.run("rmi", image_id, check=False)


def image_sizes(engine: Engine) -> dict[str, int]:
    """Bytes per role image (as the engine reports them)."""
    out = {}
    for role in ROLES:
        res = engine.run("image", "inspect", "--format", "{{.Size}}", tag(role), check=False)
        if res.returncode == 0:
            out[role] = int(res.stdout.strip().splitlines()[0])
    return out
