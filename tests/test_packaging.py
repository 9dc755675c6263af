"""The distribution installs without the source tree, and the README and CI agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_into_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    # system site packages provide the (large) dependencies; meshscope itself is built and installed fresh
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    # from a copy without build artefacts: a stale build/ would hide files missing from the package data
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "bench-data", "meshscope-data", "test-artifacts", ".git", "__pycache__",
        ".hypothesis", ".pytest_cache"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, cwd=tmp_path, timeout=300)
    probe = (
        "import meshscope, meshscope.collector.otlp_http, meshscope.query.http_api, meshscope.schema as s\n"
        "assert 'site-packages' in meshscope.__file__, meshscope.__file__\n"
        "names = [n for n, _ in s.schema_files()]\n"
        "assert names and all(n.endswith('.sql') for n in names), names\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('collector') is None and importlib.util.find_spec('query') is None\n"
        # the web dashboard's assets and the shipped dashboards come with the wheel (nothing is built at run time)
        "from meshscope.ui.routes import STATIC_DIR, PAGES, default_dashboards_dir\n"
        "assert 'site-packages' in str(STATIC_DIR) and (STATIC_DIR / 'index.html').is_file()\n"
        "assert all((STATIC_DIR / 'pages' / f'{p}.js').is_file() for p in PAGES), PAGES\n"
        "assert {'mesh-overview', 'service-detail', 'meshscope-self'} <= "
        "{f.stem for f in default_dashboards_dir().glob('*.json')}\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    helped = subprocess.run([str(venv / "bin" / "meshscope"), "serve", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "--otlp-http-port" in helped.stdout


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "pip install" in run_cmd and "meshscope serve" in run_cmd
    assert readme.index(run_cmd) < 200, "the README must open with the two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    pytest_part = test_cmd.split("&&")[-1].strip()
    install_part = next(p for p in test_cmd.split("&&") if "pip install" in p).strip()
    assert "sh .ci/system-deps" in test_cmd and "sh .ci/system-deps" in ci
    assert pytest_part in ci and "-e '.[test]'" in install_part and ".[test]" in ci
