"""Plots, the self-contained HTML report, the model card and the markdown summary."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import markdown_it
import numpy as np
import pytest
from scipy import special

from meddiag_pipelines.evaluation import (
    EvaluationInput,
    ModelCardInfo,
    evaluate,
    render_model_card,
    render_plots,
    render_report_html,
    standardized_mean_differences,
    summary_markdown,
)
from meddiag_pipelines.evaluation.report import fmt_ci, fmt_num
from meddiag_pipelines.specs import EvaluationSpec

PNG = b"\x89PNG\r\n\x1a\n"
FAST = EvaluationSpec(n_bootstrap=200)


def _binary_input() -> EvaluationInput:
    rng = np.random.default_rng(0)
    n = 1400
    y = rng.integers(0, 2, n)
    p = special.expit(rng.normal(2.4 * (y - 0.5), 1.0))
    p[1000:1300] = rng.random(300)  # site b: noise, flagged below overall
    site = np.array(["a"] * 1000 + ["b"] * 300 + ["c"] * 100, dtype=object)
    site[:12] = "tiny"
    base = np.clip(p + rng.normal(0, 0.2, n), 0, 1)
    dev = {"age": rng.normal(50, 10, 3000), "crp": rng.normal(10, 3, 3000)}
    test = {"age": rng.normal(56, 10, n), "crp": rng.normal(10, 3, n)}
    return EvaluationInput(
        task="sepsis",
        model_version="20240101-abc",
        model_name="xgboost <b>bold</b>",
        kind="binary",
        classes=["no sepsis", "sepsis"],
        y_true=y,
        proba=p,
        settings=FAST,
        n_train=5000,
        n_val=1500,
        n_test=n,
        baseline_name="logistic_regression",
        baseline_proba=base,
        subgroups={"site": site},
        flow={
            "landed_batches": 4,
            "landed_rows": 8000,
            "validated_rows": 7900,
            "quarantined_batches": 1,
            "train": 5000,
            "val": 1500,
            "test": n,
        },
        missing_data=[{"feature": "lactate", "n_missing": 314, "rate": 0.0393, "handling": "median + indicator"}],
        shift=standardized_mean_differences(dev, test),
    )


@pytest.fixture(scope="module")
def binary():
    inp = _binary_input()
    m = evaluate(inp)
    plots = render_plots(inp, m)
    return inp, m, plots


@pytest.fixture(scope="module")
def multiclass():
    rng = np.random.default_rng(1)
    n, k = 600, 3
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    inp = EvaluationInput(
        "lesion",
        "v2",
        "resnet18_small",
        "multiclass",
        ["benign", "malignant", "normal"],
        y,
        special.softmax(logits, 1),
        FAST,
        subgroups={"sex": rng.choice(["F", "M"], n)},
    )
    m = evaluate(inp)
    return inp, m, render_plots(inp, m)


@pytest.fixture(scope="module")
def multilabel():
    rng = np.random.default_rng(2)
    n = 500
    Y = (rng.random((n, 2)) < 0.3).astype(int)
    P = special.expit(rng.normal(0, 1, (n, 2)) + 2 * (Y - 0.5) - 0.8)
    inp = EvaluationInput(
        "chest", "v1", "resnet18_small", "multilabel", ["Pleural effusion", "nodule/mass"], Y, P, FAST
    )
    m = evaluate(inp)
    return inp, m, render_plots(inp, m)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data") and value is not None:
                self.refs.append((tag, name, value))


def _assert_self_contained(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    for tag, name, value in parser.refs:
        v = value.strip().lower()
        assert not v.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value[:80])
        if tag == "img":
            assert v.startswith("data:image/png;base64,")
    assert "http://" not in html and "https://" not in html
    assert "url(" not in html and "@import" not in html
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    return parser


def test_binary_plots_are_pngs_without_software_metadata(binary):
    _, _, plots = binary
    assert set(plots) == {"roc", "calibration", "decision_curve", "pr", "confusion"}
    for name, png in plots.items():
        assert png.startswith(PNG), name
        assert b"matplotlib" not in png.lower() and b"http" not in png


def test_multiclass_and_multilabel_plots(multiclass, multilabel):
    assert set(multiclass[2]) == {"roc", "confusion"}
    assert set(multilabel[2]) == {"roc_pleural_effusion", "roc_nodule_mass", "confusion"}
    for plots in (multiclass[2], multilabel[2]):
        assert all(png.startswith(PNG) for png in plots.values())


def test_report_is_self_contained_and_shows_the_key_numbers(binary, tmp_path):
    _, m, plots = binary
    html = render_report_html(m, plots, [("Top terms", "<p>fever, <b>cough</b></p>")])
    (tmp_path / "report.html").write_text(html, encoding="utf-8")
    parser = _assert_self_contained(html)
    assert sum(1 for tag, name, _ in parser.refs if tag == "img") == len(plots)
    assert "@media print" in html
    # headline numbers, rounded to 3 decimals, with CIs
    assert fmt_num(m["auroc"]) in html and fmt_ci(m["auroc_ci"]) in html
    assert fmt_ci(m["auprc_ci"]) in html
    assert fmt_num(m["calibration_slope"]) in html and fmt_num(m["brier"]) in html
    assert fmt_ci(m["comparison"]["ci"]) in html and fmt_num(m["baseline"]["auroc"]) in html
    assert m["thresholds"]
    for row in m["thresholds"]:
        assert fmt_num(row["threshold"]) in html and fmt_num(row["sensitivity"]) in html
    # subgroups: flagged and too few to judge
    rows = {r["value"]: r for r in m["subgroups"]["site"]}
    assert rows["b"]["flag_below"] and rows["tiny"]["status"] == "too few to judge"
    assert re.search(r'<tr class="flag"><td>b</td>', html)
    assert re.search(r'<tr class="few"><td>tiny</td>.*?too few to judge', html, re.S)
    assert not re.search(r'<tr class="flag"><td>a</td>', html)
    assert "Subgroups performing below the overall AUROC" in html and "site = b" in html
    assert fmt_ci(rows["b"]["auroc_ci"]) in html
    # engineer sections
    for text in (
        "Data flow",
        "landed batches",
        "Missing data",
        "lactate",
        "median + indicator",
        "Dataset shift",
        "Evaluation settings",
        "Model versus baseline",
        "Decision curve",
        "Calibration",
        "Top terms",
    ):
        assert text in html
    assert "<b>cough</b>" in html  # the extra fragment is inserted as HTML
    # autoescape: values from the metrics are escaped
    assert "xgboost &lt;b&gt;bold&lt;/b&gt;" in html and "xgboost <b>bold</b>" not in html
    assert not re.search(r"\bnan\b|None", html)


def test_report_refuses_sections_that_load_external_resources(binary):
    _, m, plots = binary
    for bad in (
        '<img src="https://example.org/x.png">',
        "<a href='//cdn.example/x'>x</a>",
        '<div style="background:url(http://x/y.png)"></div>',
    ):
        with pytest.raises(ValueError, match="external"):
            render_report_html(m, plots, [("Saliency", bad)])
    ok = render_report_html(m, {}, [("Saliency", '<img src="data:image/png;base64,AAAA" alt="map">')])
    _assert_self_contained(ok)


def test_multiclass_and_multilabel_reports(multiclass, multilabel):
    for inp, m, plots in (multiclass, multilabel):
        html = render_report_html(m, plots)
        _assert_self_contained(html)
        assert fmt_num(m["auroc"]) in html and fmt_ci(m["auroc_ci"]) in html
        for c in inp.classes:
            assert c in html
    assert "Per class" in render_report_html(multiclass[1], {})
    assert "Per finding" in render_report_html(multilabel[1], {})


SELECTION = {
    "chosen": "logistic",
    "metric": "AUROC",
    "z": 1.645,
    "cv_below_rows": 20000,
    "evidence": "cross-validation",
    "method": "2 x 5-fold cross-validation over 2,314 train+validation rows",
    "n_rows": 2314,
    "n_folds": 10,
    "reason": "the simpler logistic baseline kept: xgboost's AUROC advantage, -0.021, does not exceed 1.645 x its "
    "standard error 0.012 (2 x 5-fold cross-validation over 2,314 train+validation rows)",
    "candidates": {"xgboost": {"score": 0.7013, "se": 0.0151}, "logistic": {"score": 0.7224, "se": 0.0142}},
    "difference": -0.0211,
    "difference_se": 0.0118,
    "validation": {"xgboost": 0.7325, "logistic": 0.7299},
}


def test_report_shows_both_candidates_the_rule_and_the_decision(binary):
    """Issue 25 #11: the choice between the models is in the report, from metrics.json, not only in the card."""
    _, m, _ = binary
    assert "Model selection" not in render_report_html(m, {})  # no choice recorded (image and text tasks)
    html = render_report_html({**m, "model_selection": SELECTION}, {})
    _assert_self_contained(html)
    section = html[html.index("<h2>Model selection</h2>") :]
    section = section[: section.index("<h2>", 5)]
    for figure in ("0.701", "0.015", "0.722", "0.014", "0.733", "0.730", "-0.021", "0.012", "0.003"):
        assert f'<td class="n">{figure}</td>' in section, figure
    assert '<tr class="op"><td>logistic (chosen)</td>' in section and "xgboost (chosen)" not in section
    assert "exceeds 1.645 times its standard error" in section and "Below 20,000" in section
    assert "does not exceed 1.645 x its standard error 0.012 (2 x 5-fold cross-validation" in section
    assert not re.search(r"\bnan\b|None", section)


SECTIONS = [
    "## Model details",
    "## Intended use",
    "## Factors",
    "## Metrics",
    "## Evaluation data",
    "## Training data",
    "## Quantitative analyses",
    "### Disaggregated (subgroup) results",
    "## Ethical considerations",
    "## Caveats and recommendations",
]


def _card(**kw) -> ModelCardInfo:
    args = dict(
        task="sepsis",
        description="Flags likely sepsis.",
        intended_use="ED triage support.",
        modality="tabular",
        training_data="EHR extract, 2019-2023.",
        model_name="xgboost",
        model_version="20240101-abc",
        hyperparameters={"max_depth": 4, "objective": "a|b"},
        limitations=["Single hospital."],
        ethical_notes=["Reviewed by the ethics board."],
    )
    args.update(kw)
    return ModelCardInfo(**args)


def test_model_card_has_mitchell_sections_and_subgroup_results(binary):
    _, m, _ = binary
    md = render_model_card(m, _card())
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert fmt_num(m["auroc"]) in md and fmt_ci(m["auroc_ci"]) in md
    assert re.search(r"^\| b \| 300 \|.*\| below overall \|$", md, re.M)
    assert re.search(r"^\| tiny \| 12 \|.*\| too few to judge \|$", md, re.M)
    assert re.search(r"^\| a \| 988 \|.*\| ok \|$", md, re.M)
    assert "a\\|b" in md  # pipes escaped inside table cells
    assert "Single hospital." in md and "Reviewed by the ethics board." in md
    assert "site = b" in md  # derived caveat naming the flagged subgroup
    assert "age" in md  # shifted feature named in the caveats


def test_model_card_for_multiclass_and_multilabel(multiclass, multilabel):
    for inp, m, _ in (multiclass, multilabel):
        md = render_model_card(m, _card(task=inp.task, hyperparameters={}))
        for s in SECTIONS[:7] + SECTIONS[8:]:
            assert s in md
        for c in inp.classes:
            assert c in md


def test_summary_markdown(binary, multiclass):
    _, m, _ = binary
    md = summary_markdown(m)
    assert md.splitlines()[2] == "| metric | value | 95% CI |"
    assert f"| AUROC | {fmt_num(m['auroc'])} | {fmt_ci(m['auroc_ci'])} |" in md
    assert f"| {fmt_num(m['comparison']['difference'])} | {fmt_ci(m['comparison']['ci'])} |" in md
    assert "| subgroups flagged below overall / too few to judge | 1 / 1 |" in md
    assert f"| macro AUROC | {fmt_num(multiclass[1]['auroc'])} |" in summary_markdown(multiclass[1])


HOSTILE = [
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "![i](javascript:alert(2))",
    "<img src=x onerror=alert(3)>",
    "a|b\n| forged | row |",
    "# heading\n- item",
    "**bold** _em_ `code`",
    "<javascript:alert(4)>",
]


def _rendered(md: str) -> _Refs:
    """The card as a Markdown viewer shows it (CommonMark with GFM tables)."""
    parser = _Refs()
    parser.feed(markdown_it.MarkdownIt("commonmark").enable("table").render(md))
    return parser


def test_model_card_escapes_every_data_derived_string():
    """Description, class labels, subgroup names and values, feature names and the model's parameters render as
    their own text: no tag, link, image, forged table row or heading comes out of them."""
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 2, n)
    values = np.array([HOSTILE[i % len(HOSTILE)] for i in range(n)], dtype=object)
    inp = EvaluationInput(
        task="t",
        model_version="v1",
        model_name=HOSTILE[1],
        kind="binary",
        classes=[HOSTILE[0], HOSTILE[1]],
        y_true=y,
        proba=special.expit(rng.normal(2 * (y - 0.5), 1.0)),
        settings=EvaluationSpec(n_bootstrap=100, min_subgroup_n=5),
        n_train=800,
        n_val=200,
        n_test=n,
        subgroups={HOSTILE[4]: values, HOSTILE[3]: values},
        missing_data=[{"feature": HOSTILE[2], "n_missing": 3, "rate": 0.01, "handling": HOSTILE[6]}],
        shift=standardized_mean_differences({HOSTILE[7]: rng.normal(0, 1, 500)}, {HOSTILE[7]: rng.normal(3, 1, n)}),
    )
    m = evaluate(inp)
    md = render_model_card(
        m,
        _card(
            description="\n".join(HOSTILE),
            training_data=HOSTILE[5],
            model_name=HOSTILE[2],
            hyperparameters={HOSTILE[0]: HOSTILE[4]},
            limitations=[HOSTILE[1]],
        ),
    )
    refs = _rendered(md)
    assert not refs.refs, refs.refs
    assert not {"script", "img", "a", "em"} & set(refs.tags)
    # only the card's own markup: one title, the version's code span, one bold name per subgroup column
    assert (refs.tags.count("h1"), refs.tags.count("code"), refs.tags.count("strong")) == (1, 1, 2)
    for token in ("<script", "<img", "<javascript:", "\n| forged"):
        assert token not in md, token
    assert not re.search(r"(?<!\\)\]\(javascript:", md)  # every bracket of a link is escaped
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert rows
    for row in rows:  # no cell break forged: every row of a table as wide
        assert row.count("<td") in (0, 2, 3, 4, 6, 7, 9), row[:200]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text


def test_model_card_keeps_plain_names_readable(binary):
    _, m, _ = binary
    md = render_model_card(m, _card(description="Sepsis within 48 h; age_band and site."))
    assert "Sepsis within 48 h; age_band and site." in md and "| a | 988 |" in md
