"""`dvc plots show` writes a page that draws with no internet: vega, vega-lite and vega-embed
inline from configs/plots/offline.html (the versions dvc-render would fetch from a CDN)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dvc_render.vega

REPO = Path(__file__).resolve().parents[1]


def test_dvc_plots_show_inlines_the_cdn_scripts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in (".dvc/config", "configs/plots/offline.html"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    (repo / "curve.csv").write_text("step,loss\n0,2.0\n1,1.0\n")
    (repo / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: step\n      y: loss\n")
    env = {"DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "out"], cwd=repo,
                   check=True, env=env, capture_output=True)

    page = (repo / "out" / "index.html").read_text(encoding="utf-8")
    cdn = re.findall(r'<script src="https://cdn\.jsdelivr\.net/npm/([^"]+)"></script>',
                     dvc_render.vega.VegaRenderer.SCRIPTS)
    assert cdn == ["vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"]
    assert re.findall(r"<script>/\* (\S+), Copyright", page) == cdn
    assert "<script src=" not in page and "vegaEmbed" in page and '"loss"' in page
