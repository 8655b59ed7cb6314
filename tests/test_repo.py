"""Repository invariants: CI runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert "python -m fastood demo" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci


def test_ci_requires_the_extension_and_the_emulator_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export FASTOOD_REQUIRE_EXT=1" in ci and "export FASTOOD_REQUIRE_EMU=1" in ci


def test_require_emu_turns_an_emulator_skip_into_a_failure(tmp_path):
    """tests/conftest.py under FASTOOD_REQUIRE_EMU=1: a skipped emulator test fails (naming
    why), an intended skip stays a skip, other tests' skips are untouched; without the
    variable every skip stays a skip."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cuda_emulator.py").write_text(
        "import pytest\n"
        "def test_sanitizer():\n    pytest.skip('g++ has no tsan runtime here')\n"
        "def test_big():\n    pytest.skip('one 128-row block is enough on the emulator: minutes')\n")
    (tmp_path / "test_other.py").write_text(
        "import pytest\n"
        "@pytest.fixture(params=['gpu', 'emu'])\ndef kernel(request):\n    return request.param\n"
        "def test_kernel(kernel):\n    pytest.skip('needs a CUDA GPU' if kernel == 'gpu' else 'no CUDA headers')\n"
        "def test_unrelated():\n    pytest.skip('not an emulator test')\n")

    def run(require: bool) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "FASTOOD_REQUIRE_EMU"}
        if require:
            env["FASTOOD_REQUIRE_EMU"] = "1"
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    strict = run(True)
    assert strict.returncode == 1, strict.stdout
    assert "2 failed, 3 skipped" in strict.stdout
    assert "FASTOOD_REQUIRE_EMU=1 but this CUDA-emulator test was skipped: g++ has no tsan runtime here" in strict.stdout
    assert "skipped: no CUDA headers" in strict.stdout
    lenient = run(False)
    assert lenient.returncode == 0 and "5 skipped" in lenient.stdout, lenient.stdout
