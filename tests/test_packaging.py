"""The wheel carries everything a run needs (property files included) and runs
from a folder outside the checkout."""
import os
import subprocess
import sys
import tomllib
import venv

from conftest import REPO


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(root, REPO).replace(os.sep, ".")
             for root, _, files in os.walk(os.path.join(REPO, "recbole_llm")) if "__init__.py" in files}
    properties = {"recbole_llm.properties"} | {
        f"recbole_llm.properties.{d}" for d in os.listdir(os.path.join(REPO, "properties"))
        if os.path.isdir(os.path.join(REPO, "properties", d))}
    assert listed == found | properties


def test_installed_wheel_runs_a_model_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("recbole_llm-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import recbole_llm.paths as p; print(p.__file__); "
                            "print(p.PLUGIN_PROPERTIES)"],
                           capture_output=True, text=True, timeout=120, cwd=work)
    module, properties = where.stdout.split()
    assert module.startswith(str(env_dir)) and properties.startswith(str(env_dir)), where.stdout
    run = subprocess.run([str(env_dir / "bin" / "recbole-llm"), "--model=BPR", "--dataset=ml-100k",
                          "--epochs=1", "--show_progress=False"],
                         capture_output=True, text=True, timeout=300, cwd=work,
                         env=dict(os.environ, PYTHONPATH=""))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test result" in run.stdout + run.stderr
    assert "cpu_threads" in run.stdout + run.stderr   # the plugin's overall.yaml was layered in
    # the protocol files travel too: a comparison from the installed wheel
    run = subprocess.run([str(env_dir / "bin" / "recbole-llm"), "--compare", "--models=Pop",
                          "--dataset=ml-100k", "--epochs=1", "--show_progress=False",
                          "--results_dir=cmp"],
                         capture_output=True, text=True, timeout=300, cwd=work,
                         env=dict(os.environ, PYTHONPATH=""))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "cmp" / "results.md").read_text().count("| Pop |") == 1
