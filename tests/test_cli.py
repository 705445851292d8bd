import subprocess
import sys

import numpy as np
import pytest
import torch

from diffeel import __version__, scores
from diffeel.cli import main


def run_cli(*args):
    """Run the installed entry point the way a user does (exit code, stdout, stderr)."""
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *map(str, args)], capture_output=True, text=True)
    return process.returncode, process.stdout, process.stderr


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"diffeel {__version__}"
    assert main([]) == 0 and "score" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "--smooth" in capsys.readouterr().out


def test_score_command_writes_library_scores_and_resumes(tmp_path, rng, capsys):
    logits_dir = tmp_path / "logits"
    logits_dir.mkdir()
    first = rng.normal(size=(19, 12, 16)).astype(np.float32)
    np.save(logits_dir / "frame_a.npy", first)
    np.savez(logits_dir / "frame_b.npz", logits=rng.normal(size=(1, 19, 12, 16)).astype(np.float32))
    torch.save(torch.from_numpy(first), logits_dir / "frame_c.pt")
    out = tmp_path / "scores"
    assert main(["score", str(logits_dir), "--score", "energy", "--smooth", "--out", str(out), "--quiet"]) == 0
    written = np.load(out / "frame_a.npy")
    # Against the float64 result: float32 rounding may differ by a few ulps between CPUs and calls,
    # while a missing blur or another score is off by more than 0.01.
    energy_map = scores.energy(first[None].astype(np.float64))[0]
    expected = scores.gaussian_smooth(energy_map)
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-4)
    assert np.abs(expected - energy_map).max() > 0.01
    np.testing.assert_array_equal(np.load(out / "frame_c.npy"), written)
    assert np.load(out / "frame_b.npy").shape == (12, 16)  # a batch of one is one frame
    assert "wrote 3 score map(s)" in capsys.readouterr().out

    (out / "frame_a.npy").unlink()
    assert main(["score", str(logits_dir), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("wrote 1 score map(s) to " + str(out) + ", kept 2 existing")
    assert sorted(p.name for p in out.iterdir()) == ["frame_a.npy", "frame_b.npy", "frame_c.npy"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a numpy file", "could not be read as an array file"),
        ("integer", "expected float logits"),
        ("nan", "non-finite"),
    ],
)
def test_score_command_bad_input_is_one_sentence_without_output(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "integer":
        np.save(path, np.zeros((19, 4, 4), dtype=np.int64))
    elif content == "nan":
        np.save(path, np.full((19, 4, 4), np.nan, dtype=np.float32))
    code, stdout, stderr = run_cli("score", path, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.strip().endswith(".")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_score_command_writes_one_map_per_frame_of_a_batch_that_eval_reads(tmp_path, rng, capsys):
    logits = rng.normal(size=(3, 19, 8, 10)).astype(np.float32)
    np.save(tmp_path / "batch.npy", logits)
    out = tmp_path / "scores"
    assert main(["score", str(tmp_path / "batch.npy"), "--score", "msp", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_0000.npy", "batch_0001.npy", "batch_0002.npy"]
    expected = scores.msp(logits.astype(np.float64))
    for index in range(3):
        np.testing.assert_allclose(np.load(out / f"batch_{index:04d}.npy"), expected[index], rtol=0, atol=1e-6)
    assert main(["score", str(tmp_path / "batch.npy"), "--score", "msp", "--out", str(out), "--quiet"]) == 0
    assert "kept 3 existing" in capsys.readouterr().out


def readme_torchrun_lines() -> list[list[str]]:
    """The README's torchrun commands as argument lists (continuation lines joined, comments cut)."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
    return [shlex.split(line.split("#")[0]) for line in text.splitlines() if line.lstrip().startswith("torchrun ")]


def test_the_readmes_torchrun_lines_parse_in_torchrun_and_in_diffeel():
    """torchrun reads any prefix of its own options as its own (``--n`` for ``--nnodes``): every
    README torchrun line must get past torchrun's parser with diffeel's arguments intact, and no
    option of a command that runs under torchrun may be such a prefix."""
    from torch.distributed.run import get_args_parser

    from diffeel.cli import build_parser

    lines = readme_torchrun_lines()
    assert len(lines) >= 4
    torchrun = get_args_parser()
    for line in lines:
        parsed = torchrun.parse_args(line[1:])
        assert parsed.module and parsed.training_script == "diffeel", line
        build_parser().parse_args(parsed.training_script_args)  # diffeel takes the rest as written
    torchrun_options = [o for action in torchrun._actions for o in action.option_strings if o.startswith("--") and o != "--help"]
    commands = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices

    def options(parser):
        for action in parser._actions:
            yield from (o for o in action.option_strings if o.startswith("--") and o != "--help")
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from options(action.choices[sub])

    for command in ("score", "train", "synth"):
        clashes = sorted({o for o in options(commands[command]) if any(t.startswith(o) for t in torchrun_options)})
        assert not clashes, f"{command}: {clashes} are prefixes of torchrun's options"


def test_ctrl_c_while_starting_is_one_sentence(monkeypatch, capsys):
    """An interrupt while the command-line interface (and torch) imports: exit 130, one line."""
    import builtins

    from diffeel import _entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "cli" or name.endswith(".cli"):
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert _entry.main() == 130
    assert capsys.readouterr().err == "diffeel: interrupted while starting; nothing was written.\n"
