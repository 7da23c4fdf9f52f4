"""Build (once) an environment layered on the user's interpreter: `make … PYTHON=/x/python`.

Run *by the user's interpreter* as a file (`/x/python dlckpt/runtime/layer.py --into DIR
--project ROOT REQUIREMENT…`; noxfile.py does it), so it uses the standard library only and
imports nothing from the package. The layer:
- is a virtual environment with `--system-site-packages` on that interpreter; when the
  interpreter is itself a virtual environment (whose packages `--system-site-packages`
  would not reach), a `.pth` file adds its site-packages folders after the layer's own;
- sees the project through a `.pth` file naming the checkout (an editable install without
  a build step), so the scripts and `python -m dlckpt` run the checkout's code;
- gets only the tool's requirements that the user's environment lacks, installed by pip
  with every distribution the user's environment has pinned as a constraint: the user's
  TensorFlow, protobuf, numpy, TFDS and own code stay the ones that run, or the build stops
  with one line naming the conflict. TensorFlow itself is never installed here.
The layer is rebuilt when the interpreter, its installed distributions or the requirements
change (a key stored in the marker file). Exit 0 and the layer's python on the last line
of stdout; exit 2 and one `✗` line on stderr when it cannot be built.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

MARKER = "dlckpt-layer.json"  # runtime/environment.py reads it to say what ran
EXIT_USAGE = 2


def installed() -> list[str]:
    """`name==version` of every distribution this interpreter imports, sorted, first wins."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name not in seen:
            seen[name] = dist.version
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


def site_folders() -> list[str]:
    """This interpreter's site-packages folders (a virtual environment's, when it is one)."""
    return [folder for folder in site.getsitepackages() if Path(folder).is_dir()]


def layer_key(requirements: list[str], project: Path) -> str:
    text = json.dumps(
        [os.path.realpath(sys.executable), sys.prefix, installed(), requirements, str(project)]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layer_site(folder: Path) -> Path:
    found = sorted(folder.glob("lib*/python*/site-packages"))
    if not found:
        raise RuntimeError(f"no site-packages folder in the new environment {folder}")
    return found[0]


def _fail(message: str) -> int:
    print(f"✗ PYTHON={sys.executable}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _pip_conflict(output: str) -> str:
    """The line of pip's output that names the conflict (pip prints several)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "conflict" in line.lower() or "requires" in line or "No matching" in line:
            return line
    return lines[-1] if lines else "pip failed without a message"


def build(folder: Path, project: Path, requirements: list[str]) -> int:
    key = layer_key(requirements, project)
    marker = folder / MARKER
    try:
        if json.loads(marker.read_text())["key"] == key and (folder / "bin" / "python").exists():
            print(f"Layered environment {folder} is up to date")
            print(folder / "bin" / "python")
            return 0
    except (OSError, ValueError, KeyError):
        pass
    if folder.exists():
        if not marker.exists() and any(folder.iterdir()):
            return _fail(f"{folder} exists and is not a layer this tool built; not touching it")
        shutil.rmtree(folder)
    print(f"Building an environment layered on {sys.executable} in {folder} …")
    try:
        venv.EnvBuilder(system_site_packages=True, with_pip=True, symlinks=True).create(folder)
    except (OSError, subprocess.CalledProcessError) as error:
        return _fail(f"cannot make a virtual environment on it ({error}); is `venv` installed?")
    layer_site = _layer_site(folder)
    if sys.prefix != sys.base_prefix:  # a venv: --system-site-packages reaches its base only
        (layer_site / "_dlckpt_user_env.pth").write_text("\n".join(site_folders()) + "\n")
    (layer_site / "_dlckpt_project.pth").write_text(f"{project}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(installed()) + "\n")
    try:
        done = subprocess.run(
            [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "--constraint", constraints.name, *requirements],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        os.unlink(constraints.name)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        return _fail(
            "the tool's packages cannot be added without changing this environment's own: "
            + _pip_conflict(done.stderr or done.stdout)
        )
    marker.write_text(
        json.dumps({"key": key, "base_python": sys.executable, "base_prefix": sys.prefix}) + "\n"
    )
    print(folder / "bin" / "python")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, required=True, help="the layer's folder")
    parser.add_argument("--project", type=Path, required=True, help="the checkout's root")
    parser.add_argument("requirements", nargs="*", help="the tool's requirements, no tensorflow")
    args = parser.parse_args(argv)
    return build(args.into.resolve(), args.project.resolve(), list(args.requirements))


if __name__ == "__main__":
    sys.exit(main())
