"""The documentation cannot rot: every relative link resolves, and README's tours run as written."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    missing = [t for t in LINK.findall(text) if "://" not in t and not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_pages_do_not_point_outside_the_repository():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page.name


def _blocks(page: Path, lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def cli_tour(tmp_path_factory):
    """Run README's ten-line CLI tour, line by line, in a fresh directory (the installed entry
    point); returns the directory and the failures (line, stderr)."""
    work = tmp_path_factory.mktemp("readme_tour")
    tour = next(b for b in _blocks(ROOT / "README.md", "bash") if "infoplane train" in b)
    exe = Path(sys.executable).with_name("infoplane")
    failures = []
    for line in tour.strip().splitlines():
        cmd = line.split("  #")[0].strip()
        assert shlex.split(cmd)[0] == "infoplane", line
        if " report " in cmd:
            cmd += " --reconstruct 0 --no-probe"  # keep the test short; the report itself runs
        r = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, timeout=600,
                           env={"PATH": f"{exe.parent}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                                "HOME": str(work)})
        if r.returncode != 0:
            failures.append((line, r.stderr[-2000:]))
    return work, failures


def test_readme_cli_tour_runs_as_written(cli_tour):
    work, failures = cli_tour
    assert not failures
    assert (work / "plane.png").exists() and (work / "report" / "report.md").exists()


def test_readme_notebook_tour_runs_as_written(cli_tour, monkeypatch):
    """README's notebook tour, on the checkpoints the CLI tour trained."""
    import runpy

    import matplotlib

    matplotlib.use("Agg")
    work, failures = cli_tour
    assert not failures
    monkeypatch.chdir(work)
    code = next(b for b in _blocks(ROOT / "README.md", "python") if "import infoplane as ip" in b)
    script = work / "notebook_tour.py"
    script.write_text(code)
    namespace = runpy.run_path(str(script))
    assert {"df", "r", "fig"} <= set(namespace)


def test_readme_bring_your_own_example_runs_as_written(tmp_path, monkeypatch):
    """README's torchvision-model-on-your-Dataset example, verbatim, in a fresh directory."""
    import runpy

    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    code = next(b for b in _blocks(ROOT / "README.md", "python") if "torchvision.models" in b)
    script = tmp_path / "byo.py"
    script.write_text(code)
    namespace = runpy.run_path(str(script))
    df = namespace["df"]
    assert set(df["layer"]) == {"layer1", "layer4"} and df["z"].notna().all()

