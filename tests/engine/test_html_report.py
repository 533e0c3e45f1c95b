"""report.html: one self-contained page per report.md (images inlined as data: URIs), checked as text
and, where Debian's chromium is installed, in a real headless browser; and Maze2D's one-seed grid."""

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from rrf_ray.engine.report import save_figure_atomic, write_html_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path: Path, title: str = "a figure") -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0, 1, 4])
    ax.set_title(title)
    return save_figure_atomic(fig, path, dpi=60)


@pytest.fixture
def small_report(tmp_path) -> Path:
    """A report.md as the experiments write them: headings, a table, figures under figures/ and trials/,
    a link to results.csv, one image that is not there, and text that looks like HTML."""
    sweep = tmp_path / "sweep"
    _png(sweep / "figures" / "umaze.png", "umaze")
    _png(sweep / "trials" / "seed 0" / "extremes.png", "seed 0")
    (sweep / "results.csv").write_text("trial_id,accuracy\nt0,0.9\n")
    md = sweep / "report.md"
    md.write_text("\n".join([
        "# Maze2D sweep `smoke`: goal recovery", "",
        "| maze | goals recovered | accuracy |", "|---|---|---|", "| umaze | 7 / 8 | 0.91 |", "| open | 8 / 8 | 0.95 |", "",
        "## Failures", "",
        "| trial | error |", "|---|---|", "| open-goal2-seed1 | TypeError: <class 'X'> <script>alert(1)</script> |", "",
        "## Figures", "",
        "![umaze heatmaps](figures/umaze.png)", "",
        "Seed 0: ![extremes](trials/seed%200/extremes.png) and ![gone](figures/gone.png)", "",
        "Full numbers: [results.csv](results.csv).", ""]))
    return md


def test_html_report_inlines_images_and_keeps_links(small_report):
    path = write_html_report(small_report)
    assert path == small_report.with_name("report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Maze2D sweep smoke: goal recovery</title>" in page
    uris = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    assert base64.b64decode(uris[0]) == (small_report.parent / "figures" / "umaze.png").read_bytes()
    assert all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)
    assert 'src="figures/' not in page and 'src="trials/' not in page
    assert re.search(r'<span class="missing-image"[^>]*>\[image missing: figures/gone.png \(gone\)\]</span>', page)
    assert '<a href="results.csv">results.csv</a>' in page  # links to other files stay relative
    assert page.count("<table>") == 2 and "<th>goals recovered</th>" in page
    # Plain HTML: no JavaScript; text from an error message that looks like HTML is shown, not run.
    assert "<script" not in page and "&lt;script&gt;" in page and "&lt;class 'X'&gt;" in page
    assert "<style>" in page and "max-width: 100%" in page
    assert not list(small_report.parent.glob(".*tmp*"))  # written atomically


def test_html_report_title_falls_back_and_other_path(tmp_path):
    md = tmp_path / "notes.md"
    md.write_text("No heading here.\n")
    out = write_html_report(md, tmp_path / "out" / "page.html")
    assert out == tmp_path / "out" / "page.html"
    assert "<title>report</title>" in out.read_text()


# -- Maze2D: the writer writes report.html; one seed lays goals out in a grid ---------------------

def _maze2d_sweep(sweep: Path, goals, seeds, failed=()) -> Path:
    """A Maze2D sweep directory of failed / missing trials (no training): the real report writer's
    figures (labelled panels), tables and results.csv."""
    entries = []
    for goal in goals:
        for seed in seeds:
            tid = f"umaze-goal{goal}-seed{seed}"
            entries.append({"trial_id": tid, "maze": "umaze", "goal": goal, "seed": seed})
            if (goal, seed) in failed:
                (sweep / "trials" / tid).mkdir(parents=True)
                (sweep / "trials" / tid / "result.json").write_text(json.dumps({
                    "trial_id": tid, "maze": "umaze", "goal": goal, "seed": seed, "status": "failed",
                    "error": "Traceback (most recent call last):\nRuntimeError: CUDA out of memory", "metrics": None}))
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "trials.json").write_text(json.dumps(entries))
    return sweep


def _grid(fig) -> dict[str, tuple[int, int]]:
    """Each panel's title -> (row, column) in the figure's grid."""
    out = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        out[ax.get_title()] = (spec.rowspan.start, spec.colspan.start)
    return out


def test_maze_figure_one_seed_is_a_grid_several_seeds_goals_by_seeds(tmp_path):
    from rrf_ray.maze2d.report import ONE_SEED_COLUMNS, load_trials, maze_figure

    one = _maze2d_sweep(tmp_path / "one", goals=range(1, 9), seeds=[0], failed={(g, 0) for g in range(1, 9)})
    fig = maze_figure(one, "umaze", load_trials(one))
    assert ONE_SEED_COLUMNS == 4
    assert _grid(fig) == {f"goal {g}, seed 0": divmod(g - 1, 4) for g in range(1, 9)}  # 2 rows of 4
    w, h = fig.get_size_inches()
    assert w > h

    odd = _maze2d_sweep(tmp_path / "odd", goals=range(1, 6), seeds=[3], failed={(g, 3) for g in range(1, 6)})
    fig = maze_figure(odd, "umaze", load_trials(odd))
    assert len(fig.axes) == 5  # the unfilled cells of the last row are removed, not blank panels
    assert _grid(fig)["goal 5, seed 3"] == (1, 0)

    two = _maze2d_sweep(tmp_path / "two", goals=[1, 2, 3], seeds=[0, 1],
                        failed={(g, s) for g in (1, 2, 3) for s in (0, 1)})
    fig = maze_figure(two, "umaze", load_trials(two))
    assert _grid(fig) == {f"goal {g}, seed {s}": (g - 1, s) for g in (1, 2, 3) for s in (0, 1)}  # goals x seeds


def test_maze2d_write_report_writes_report_html(tmp_path):
    from rrf_ray.maze2d.report import write_report

    sweep = _maze2d_sweep(tmp_path / "sweep", goals=[1, 2], seeds=[0], failed={(1, 0)})
    md = write_report(sweep)
    page = (sweep / "report.html").read_text()
    assert "![" in md.read_text() and "figures/umaze.png" in md.read_text()
    assert 'src="data:image/png;base64,' in page and 'src="figures/' not in page
    assert "<table>" in page and '<a href="results.csv">' in page and "<script" not in page


def test_locomotion_writer_writes_report_html(tmp_path):
    from rrf_ray.locomotion.report import write_locomotion_report

    md = write_locomotion_report(tmp_path)  # no trials yet: still a report, and its page
    assert "<title>Locomotion steering: " in (tmp_path / "report.html").read_text()
    assert md == tmp_path / "report.md"


# -- in a real browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does) "
                    "to check report.html in a headless browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path: Path) -> tuple[dict, list[str]]:
    """Load `path` from file://; returns what the page shows and every URL it requested."""
    page = browser.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        page.goto(path.as_uri(), wait_until="load")
        shown = page.evaluate("""() => ({
            title: document.title,
            images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth,
                                                     src: i.getAttribute('src').slice(0, 22)})),
            tables: document.querySelectorAll('table').length,
            cells: document.querySelectorAll('table td').length,
            missing: [...document.querySelectorAll('.missing-image')].map(e => e.textContent),
            scripts: document.scripts.length,
            overflow: [...document.images].some(i => i.getBoundingClientRect().width > innerWidth),
        })""")
    finally:
        page.close()
    return shown, requested


def _external(requested: list[str], page_url: str) -> list[str]:
    return [u for u in requested if u != page_url and not u.startswith("data:")]


def test_report_html_in_headless_chromium(browser, small_report, tmp_path):
    html = write_html_report(small_report)
    alone = tmp_path / "copied" / "report.html"  # the one file, away from figures/: still whole
    alone.parent.mkdir()
    shutil.copy(html, alone)
    for path in (html, alone):
        shown, requested = _open(browser, path)
        assert shown["title"] == "Maze2D sweep smoke: goal recovery"
        assert len(shown["images"]) == 2
        assert all(i["complete"] and i["width"] > 0 and i["src"] == "data:image/png;base64," for i in shown["images"])
        assert shown["tables"] == 2 and shown["cells"] == 8
        assert shown["missing"] == ["[image missing: figures/gone.png (gone)]"]
        assert shown["scripts"] == 0 and not shown["overflow"]
        assert _external(requested, path.as_uri()) == []


def test_maze2d_report_html_in_headless_chromium(browser, tmp_path):
    from rrf_ray.maze2d.report import write_report

    sweep = _maze2d_sweep(tmp_path / "sweep", goals=range(1, 9), seeds=[0], failed={(1, 0), (2, 0)})
    write_report(sweep)
    shown, requested = _open(browser, sweep / "report.html")
    assert shown["images"] and all(i["complete"] and i["width"] > 0 for i in shown["images"])
    assert shown["tables"] >= 1 and shown["missing"] == [] and shown["scripts"] == 0
    assert _external(requested, (sweep / "report.html").as_uri()) == []


def test_the_request_check_sees_an_external_image(browser, tmp_path):
    """The check above would catch a page that fetches anything (here a refused local port)."""
    page = tmp_path / "external.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    shown, requested = _open(browser, page)
    assert _external(requested, page.as_uri()) == ["http://127.0.0.1:9/x.png"]
    assert shown["images"][0]["width"] == 0
