"""kacnum.core.progress: log lines (steps, rate, loss, ETA) when the stream is not a terminal, bars when it is,
and the training loops use it (a teacher run with its output in a file reports while it runs)."""
import io
import re

import pytest

from kacnum.core.progress import Progress, format_seconds

LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] step (?P<n>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)  (?P<rate>[\d.e+-]+|\?) "
                  r"step/s(?P<post>.*)  elapsed (?P<el>\S+)  (?:ETA (?P<eta>\S+)|done)$")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr("kacnum.core.progress.time.perf_counter", c)
    return c


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 75.2, 3599, 4000, float("nan"), -1)] == \
        ["0s", "59s", "1m15s", "59m59s", "1h06m", "?", "?"]


def test_log_lines_every_n_steps_with_rate_loss_and_eta(clock):
    out = io.StringIO()  # not a terminal
    bar = Progress(100, "train", stream=out, every_seconds=1e9)
    assert bar.mode == "log"
    for i in range(100):
        clock.t += 0.5  # 2 steps/s
        bar.set_postfix(loss=1.0 / (i + 1))
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    # the first step, then every 10 steps (10 % of the run), then the end
    steps = [int(LINE.match(ln)["n"]) for ln in lines]
    assert steps == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    m = LINE.match(lines[5])
    assert (m["desc"], m["total"], m["pct"]) == ("train", "100", "51")
    assert float(m["rate"]) == pytest.approx(2.0)
    assert m["post"] == "  loss 0.01961" and m["el"] == "26s" and m["eta"] == "24s"  # 49 steps at 2/s
    assert lines[-1].endswith("elapsed 50s  done")


def test_log_lines_every_s_seconds_and_resume_offset(clock):
    out = io.StringIO()
    bar = Progress(1000, "distill 4->2", initial=400, stream=out, every_steps=10**6, every_seconds=30)
    for _ in range(600):
        clock.t += 1.0  # one step a second: a line every 30 steps
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 600 // 30  # first step, every 30 s, the end (the 600th step ends the run)
    first = LINE.match(lines[0])
    assert first["n"] == "401" and float(first["rate"]) == pytest.approx(1.0)  # rate of this run only
    assert first["eta"] == "9m59s"  # 599 steps left at 1 step/s
    assert LINE.match(lines[1])["n"] == "431"


def test_disabled_and_forced_modes(clock, monkeypatch):
    out = io.StringIO()
    bar = Progress(10, "x", stream=out, enabled=False)
    for _ in range(10):
        bar.update()
    bar.close()
    assert out.getvalue() == "" and bar.mode == "off"
    monkeypatch.setenv("KACNUM_PROGRESS", "off")
    assert Progress(10, "x", stream=io.StringIO()).mode == "off"
    monkeypatch.setenv("KACNUM_PROGRESS", "bar")
    bar = Progress(10, "x", stream=io.StringIO())
    assert bar.mode == "bar"
    bar.close()


def test_terminal_gets_a_bar(clock):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = Progress(5, "train", stream=out)
    assert bar.mode == "bar"
    for _ in bar.iterate(range(5)):
        pass
    bar.close()
    assert "train" in out.getvalue() and "[train] step" not in out.getvalue()


def test_trainer_reports_to_a_log_file(tmp_path, capsys):
    """The teacher loop writes progress lines to stderr when it is a file (here: captured)."""
    from kacnum.images.data import load_dataset
    from kacnum.images.train import TrainConfig, Trainer

    x, y = load_dataset("digits", split="train")
    cfg = TrainConfig(model="tiny", model_overrides={"num_classes": 10}, dataset="digits", batch_size=8, total_steps=20,
                      log_every=5, checkpoint_every=0, num_samples=2, sample_steps=2, lr=1e-3)
    capsys.readouterr()
    Trainer(cfg, None, device="cpu", data=(x[:128], y[:128])).fit(progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[train]")]
    assert [int(LINE.match(ln)["n"]) for ln in lines] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 20]
    assert "loss " in lines[-1] and "img/s " in lines[-1] and lines[-1].endswith("done")


def test_unknown_total_shows_the_count_only(clock):
    """total 0 (an iterable of unknown length) must not print 'batch 2/0' nor an ETA."""
    out = io.StringIO()
    bar = Progress(0, "features", unit="batch", stream=out)
    for _ in range(3):
        clock.t += 1.0
        bar.update()
    assert bar.line() == "[features] batch 3  1 batch/s  elapsed 3s"
    bar.close()
    assert out.getvalue().splitlines()[-1] == "[features] batch 3  1 batch/s  elapsed 3s  done"


def test_feature_extraction_knows_its_batch_count(monkeypatch):
    import numpy as np
    import torch

    from kacnum.images import metrics
    from kacnum.images.metrics import features  # where extract_features looks Progress up
    totals = []

    class Spy(Progress):
        def __init__(self, total, *a, **k):
            totals.append(total)
            super().__init__(total, *a, **k)

    monkeypatch.setattr(features, "Progress", Spy)

    class Ext:
        batch_size = 4

        def __call__(self, x):
            return x.flatten(1)[:, :3]

    x = torch.zeros(10, 1, 2, 2)
    assert metrics.extract_features(x, Ext()).shape == (10, 3)
    assert metrics.extract_features(np.zeros((10, 1, 2, 2), np.float32), Ext(), max_images=5).shape == (5, 3)
    assert metrics.extract_features(iter([x[:4], x[4:]]), Ext()).shape == (10, 3)
    assert totals == [3, 2, 0]


def test_rate_and_eta_exclude_a_slow_setup_before_the_first_step(clock):
    """A stage that spends 120 s building a pool and then runs 2 steps/s must not report 0.008 step/s, ETA 37 h."""
    out = io.StringIO()
    bar = Progress(1000, "distill", stream=out, every_seconds=1e9)
    clock.t += 120.0  # set-up, then the first step
    bar.update()
    for _ in range(99):
        clock.t += 0.5
        bar.update()
    m = LINE.match(bar.line())
    assert float(m["rate"]) == pytest.approx(2.0)
    assert m["eta"] == "7m30s" and m["el"] == "2m50s"  # 900 steps at 2/s; elapsed counts the set-up
    bar.close()
