"""`libraries.reports`: the table formatter, the moving average and the training-curve figure."""

from __future__ import annotations

import matplotlib
import numpy as np

from libraries import reports


def test_format_table_aligns_numbers_right_and_text_left():
    table = reports.format_table(("band", "n_slide", "score"), [("NIR", None, 0.98765), ("RED", 12, 1.5)], digits=3)
    assert table.splitlines() == ["band  n_slide  score",
                                  "NIR         -  0.988",
                                  "RED        12  1.500"]


def test_moving_average_is_the_mean_of_the_last_values():
    values = [4.0, 2.0, 6.0, 8.0, 0.0]
    expected = [4.0, 3.0, 4.0, 16 / 3, 14 / 3]  # means of the last 3 (fewer at the start), by hand
    np.testing.assert_allclose(reports.moving_average(values, 3), expected)
    assert reports.moving_average([], 3).size == 0


def test_plot_history_draws_steps_validations_and_the_smoothed_curve():
    matplotlib.use("Agg")  # a test may choose the backend; the library does not
    history = {"step": [1, 2, 3, 4], "loss": [4.0, 3.0, 2.5, 2.0],
               "validation": [{"step": 2, "loss": 3.5}, {"step": 4, "loss": 2.2}]}
    ax = reports.plot_history(history, smooth=2, title="t")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss (batch)", "loss (mean of 2 steps)", "validation loss"}
    np.testing.assert_allclose(lines["loss (mean of 2 steps)"].get_ydata(), [4.0, 3.5, 2.75, 2.25])
    np.testing.assert_allclose(lines["validation loss"].get_xdata(), [2, 4])
    assert ax.get_title() == "t"
