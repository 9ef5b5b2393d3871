"""The shared charts draw what they are given, and write through storage (a bucket included)."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from tests.gcs_fixtures import gcs_bucket  # noqa: F401
from vlguard_jax import charts, storage


@pytest.fixture
def drawn(monkeypatch):
    """The figures `storage.save_figure` is handed, kept open to be read."""
    figures = []
    monkeypatch.setattr(storage, "save_figure", lambda figure, target: figures.append(figure))
    yield figures
    for figure in figures:
        plt.close(figure)


def test_grouped_bars_sit_side_by_side_with_a_legend(drawn):
    charts.bars("x.png", ["a", "b", "c"], {"before": [10.0, None, 90.0], "after": [20.0, 30.0, 40.0]}, "%",
                title="t")
    ax = drawn[0].axes[0]
    heights = [p.get_height() for p in ax.patches]
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert heights == [10.0, 0.0, 90.0, 20.0, 30.0, 40.0]  # None draws no bar
    np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["before", "after"]
    assert ax.get_ylim() == (0, 100) and ax.get_title() == "t"


def test_one_series_of_many_names_is_rows_without_a_legend(drawn):
    names = [f"subject {i}" for i in range(13)]
    charts.bars("x.png", names, {"accuracy %": [float(i) for i in range(13)]}, "accuracy %")
    ax = drawn[0].axes[0]
    assert [p.get_width() for p in ax.patches] == [float(i) for i in range(13)]  # horizontal: values are widths
    assert [t.get_text() for t in ax.get_yticklabels()] == names and ax.get_legend() is None


def test_lines_are_sorted_by_setting_and_an_empty_series_is_named_not_drawn():
    fig, ax = storage.figure()
    charts.lines(ax, {"none": [(0.1, 40.0), (0.0, 10.0)], "vlguard": []}, "poison ratio p", "harmful score %")
    ax.legend()
    drawn = ax.get_lines()
    assert drawn[0].get_xdata().tolist() == [0.0, 0.1] and drawn[0].get_ydata().tolist() == [10.0, 40.0]
    assert len(drawn[1].get_xdata()) == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["none", "vlguard: n/a"]
    plt.close(fig)


def test_bars_are_written_to_a_bucket(gcs_bucket):  # noqa: F811
    target = storage.path(f"{gcs_bucket}/eval/summary.png")
    charts.bars(target, ["a", "b"], {"%": [50.0, 75.0]}, "%")
    image = Image.open(io.BytesIO(target.read_bytes()))
    assert image.format == "PNG" and image.size == (480, 420)  # 4 × 3.5 inches at 120 dpi
