"""fastood.progress: lines (no carriage returns, bounded count) off a terminal, a tqdm bar on one.

Truth: the exact lines expected from a fake clock (hand-computed), the line bound
⌊S/interval⌋ + 1 of the module's contract, and tqdm's own output on a fake TTY.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from fastood.progress import LogProgress, NullProgress, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_writes_one_line_per_short_stage():
    out, clock = io.StringIO(), FakeClock()
    bar = progress(desc="scoring", total=40, unit="img", stream=out, mode="auto", clock=clock, interval=30)
    assert isinstance(bar, LogProgress)
    for _ in range(4):
        clock.t += 0.5
        bar.update(10)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue() == "scoring: 40/40 img in 2.0 s, 20.0 img/s [loss=0.1234]\n"


def test_non_tty_long_stage_heartbeat_lines_are_bounded_and_have_no_carriage_returns():
    out, clock = io.StringIO(), FakeClock()
    total, seconds, interval = 10_000, 600.0, 30.0  # a 10-minute stage, 10k updates
    with progress(desc="images", total=total, unit="img", stream=out, clock=clock, interval=interval) as bar:
        for _ in range(total):
            clock.t += seconds / total
            bar.update(1)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert len(lines) <= int(seconds // interval) + 1 and len(lines) >= int(seconds // interval)
    assert len(text) < 2_000  # a tqdm bar redrawing 10k times would write far more
    assert lines[0].startswith("images: 500/10000 img (5 %), 30.0 s, 16.7 img/s")
    assert lines[-1] == "images: 10000/10000 img in 600.0 s, 16.7 img/s"


def test_iterable_unknown_total_initial_and_description():
    out, clock = io.StringIO(), FakeClock()

    def gen():
        for i in range(3):
            clock.t += 1.0
            yield i

    assert list(progress(gen(), desc="batches", stream=out, clock=clock)) == [0, 1, 2]
    assert out.getvalue() == "batches: 3 it in 3.0 s, 1.00 it/s\n"
    out2 = io.StringIO()
    bar = progress(desc="x", total=10, initial=4, unit="img", stream=out2, clock=clock)
    clock.t += 2.0
    bar.update(6)
    bar.set_description("resumed scoring")
    bar.close()
    assert out2.getvalue() == "resumed scoring: 10/10 img in 2.0 s, 3.00 img/s\n"  # rate counts new images only
    assert list(progress([1, 2], stream=io.StringIO(), clock=clock)) == [1, 2]
    out3 = io.StringIO()  # reset() closes a sub-stage with its line (encode_texts: tokenizing, then encoding)
    with progress(desc="texts (tokenizing)", total=4, unit="prompt", stream=out3, clock=clock) as bar:
        clock.t += 1.0
        bar.update(4)
        bar.reset()
        bar.set_description("texts")
        clock.t += 4.0
        bar.update(4)
    assert out3.getvalue() == ("texts (tokenizing): 4/4 prompt in 1.0 s, 4.00 prompt/s\n"
                               "texts: 4/4 prompt in 4.0 s, 1.00 prompt/s\n")


def test_quiet_is_silent_and_tty_gets_a_tqdm_bar():
    out = io.StringIO()
    bar = progress(range(5), desc="q", disable=True, stream=out)
    assert isinstance(bar, NullProgress) and list(bar) == list(range(5)) and bar.n == 5
    bar.update(3)
    bar.set_postfix(a=1)
    bar.close()
    assert out.getvalue() == ""
    assert progress(desc="off", stream=out, mode="off").total is None and out.getvalue() == ""
    tty = FakeTTY()
    bar = progress(desc="live", total=3, unit="img", stream=tty)
    assert type(bar).__module__.startswith("tqdm")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue() and "live" in tty.getvalue() and "3/3" in tty.getvalue()
    log = io.StringIO()
    progress(desc="forced", total=1, stream=tty, mode="log").close()  # the mode wins over the stream
    bar = progress(desc="bar", total=1, stream=log, mode="bar")
    bar.update(1)
    bar.close()
    assert "\r" in log.getvalue()


def test_env_override_and_bad_input(monkeypatch):
    monkeypatch.setenv("FASTOOD_PROGRESS", "off")
    assert isinstance(progress(desc="x", stream=FakeTTY()), NullProgress)
    monkeypatch.setenv("FASTOOD_PROGRESS", "chatty")
    with pytest.raises(ValueError, match=r"mode \(or \$FASTOOD_PROGRESS\) must be one of auto, bar, log, off"):
        progress(desc="x")
    monkeypatch.delenv("FASTOOD_PROGRESS")
    monkeypatch.setenv("FASTOOD_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="FASTOOD_PROGRESS_INTERVAL must be a number"):
        progress(desc="x", stream=io.StringIO())
    with pytest.raises(ValueError, match="interval must be a number of seconds > 0"):
        progress(desc="x", interval=0)
    with pytest.raises(ValueError, match="initial must be an int >= 0"):
        progress(desc="x", initial=-1)
    with pytest.raises(TypeError, match="without an iterable"):
        list(LogProgress(desc="x", stream=io.StringIO()))


def test_a_child_process_with_stderr_in_a_file_writes_one_line(tmp_path):
    """A real child process whose stderr is a file: tqdm.auto would draw a bar there; progress() writes lines."""
    code = ("from fastood.progress import progress\n"
            "bar = progress(desc='stage', total=500, unit='img')\n"
            "[bar.update(1) for _ in range(500)]\nbar.close()\n")
    with open(tmp_path / "err.log", "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True)
    text = (tmp_path / "err.log").read_text()
    assert "\r" not in text and text.count("\n") == 1 and text.startswith("stage: 500/500 img in ")


def test_library_call_sites_write_lines_not_bars_when_stderr_is_a_log(monkeypatch):
    """encode_texts and iter_image_batches (progress=True) into a non-TTY stderr: whole lines, no \\r."""
    import torch

    from fastood.images import iter_image_batches
    from fastood.models import encode_texts
    from tests.tiny import tiny_clip

    monkeypatch.delenv("FASTOOD_PROGRESS", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clip = tiny_clip()
    emb = encode_texts(clip.model, clip.tokenizer, ["a dog", "a cat", "a tree"], batch_size=2, progress=True,
                       desc="prompts")
    assert emb.shape[0] == 3
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    assert sum(len(b.names) for b in iter_image_batches(images, clip.preprocess, batch_size=2, progress=True)) == 5
    text = err.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert any(ln.startswith("prompts: 3/3 prompt in ") for ln in lines)
    assert any(ln.startswith("images: 5/5 img in ") for ln in lines)


def test_demo_into_a_log_file_writes_lines_not_redraws(tmp_path):
    """The issue's case: `fastood demo` with stderr redirected (tqdm wrote ~30 KB of carriage returns)."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FASTOOD_PROGRESS",)}
    with open(tmp_path / "err.log", "w") as err:
        subprocess.run([sys.executable, "-m", "fastood", "demo", "--max-candidates", "200", "--cache",
                        str(tmp_path / "cache"), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=err,
                       check=True, env=env, timeout=600)
    text = (tmp_path / "err.log").read_text()
    assert "\r" not in text and len(text) < 4_000
    assert any(ln.startswith("encoding ID labels: 1000/1000 prompt in ") for ln in text.splitlines())
