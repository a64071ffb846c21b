"""`libraries.reports`: the table formatter, the moving average and the training-curve figure."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

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


def test_moving_average_matches_the_trailing_windows_of_numpy():
    values = np.random.default_rng(3).lognormal(0.0, 1.0, 50)  # heavy-tailed, like batch losses
    for window in (1, 7, 50, 80):
        expected = [values[max(0, i - window + 1):i + 1].mean() for i in range(values.size)]
        np.testing.assert_allclose(reports.moving_average(values, window), expected, rtol=1e-12)


def test_plot_history_puts_the_validation_on_its_own_axis_and_fits_the_smoothed_curve():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(4)
    steps = np.arange(1, 101)
    loss = 3.0 - steps / 100 + rng.lognormal(0.0, 1.0, 100)  # a falling trend under heavy noise
    history = {"step": list(steps), "loss": list(loss),
               "validation": [{"step": 50, "loss": 1.5}, {"step": 100, "loss": 1.2}]}
    figure, (ax, validation_ax) = plt.subplots(1, 2)
    reports.plot_history(history, ax=ax, validation_ax=validation_ax, smooth=10, zoom=True)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss (batch)", "loss (mean of 10 steps)"}
    expected = [loss[max(0, i - 9):i + 1].mean() for i in range(100)]
    np.testing.assert_allclose(lines["loss (mean of 10 steps)"].get_ydata(), expected, rtol=1e-12)
    validation, = validation_ax.get_lines()
    assert validation.get_label() == "validation loss"
    np.testing.assert_allclose(validation.get_xydata(), [[50, 1.5], [100, 1.2]])
    low, high = ax.get_ylim()  # the smoothed curve fills the axis, the raw extremes run off it
    margin = 0.15 * (max(expected) - min(expected))
    assert (low, high) == pytest.approx((min(expected) - margin, max(expected) + margin))
    assert loss.max() > high
    plt.close(figure)


def test_plot_validation_scene_shows_images_errors_fills_and_the_note():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(5)
    hr = rng.uniform(5000, 9000, (24, 24))
    error = np.abs(rng.normal(0, 100, (18, 18)))
    error[:3, :3] = np.nan  # cloudy in HR
    filled = np.zeros((24, 24), int)
    filled[5:9, 5:9] = 2
    figure = reports.plot_validation_scene(hr[::3, ::3], hr, hr, hr, error, error / 2, filled, "scene", "a note")
    images = [axis for axis in figure.axes if axis.get_images() and axis.get_label() != "<colorbar>"]
    assert [axis.get_title().split("\n")[0] for axis in images] == [
        "clearest LR frame 8x8", "bicubic baseline 24x24", "DeepSUM 24x24", "HR (target) 24x24",
        "|bicubic - HR|", "|DeepSUM - HR|", "frames cloudy at each pixel"]
    assert images[4].get_title().endswith(f"mean {np.nanmean(error):.0f} DN, grey: cloudy in HR")
    # both error maps on one colour scale
    assert images[4].get_images()[0].get_clim() == images[5].get_images()[0].get_clim()
    assert len(figure.axes) == 10  # 8 panels and 2 colour bars
    assert [text.get_text() for text in figure.axes[7].texts] == ["a note"]
    assert figure.get_suptitle() == "scene"
    plt.close(figure)


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_moving_average_refuses_a_window_that_is_not_a_count_of_steps(window):
    with pytest.raises(reports.domain.DeepSUMError, match=rf"^window: expected a number of steps >= 1, got {window!r}$"):
        reports.moving_average([1.0, 2.0, 3.0], window)


def test_plot_history_names_a_key_the_history_does_not_hold_and_draws_an_empty_one():
    matplotlib.use("Agg")
    history = {"step": [1, 2], "loss": [4.0, 3.0], "validation": [{"step": 2, "loss": 3.5, "score": 1.1}]}
    with pytest.raises(reports.domain.DeepSUMError, match=r"^plot_history: no \['los'\] in the history; it holds "
                                                          r"\['loss', 'score'\]$"):
        reports.plot_history(history, keys=("los",))
    with pytest.raises(reports.domain.DeepSUMError, match=r"^plot_history: no \['cpsnr'\]"):
        reports.plot_history(history, validation_keys=("cpsnr",))
    ax = reports.plot_history({"step": [], "validation": []})  # a finished run resumed: nothing to draw, no error
    assert ax.get_lines() == []
