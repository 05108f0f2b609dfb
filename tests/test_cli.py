"""The CLI prints text + metrics, or one JSON object with the names scripts rely on."""

import json
import subprocess
import sys

import pytest

from specviz.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "specviz", *args], capture_output=True, text=True, timeout=300)


def test_generate_json(tiny_model_dir):
    out = run_cli("generate", "--model", tiny_model_dir, "--drafter", "static-skip", "--prompt", "def add(a, b):",
                  "--max-new-tokens", "12", "--k", "3", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"text", "token_ids", "metrics", "steps"}
    assert len(data["token_ids"]) == 12
    assert {"tokens_per_s", "tau", "acceptance_rate"} <= set(data["metrics"])
    assert sum(len(s["committed"]) for s in data["steps"]) == 12


def test_generate_text(tiny_model_dir, capsys):
    code = main(["generate", "--model", tiny_model_dir, "--drafter", "prompt-lookup", "--prompt",
                 "for i in range(10):", "--max-new-tokens", "8", "--max-ngram", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("for i in range(10):") and "tok/s" in out and "tau" in out


def test_generate_with_adaptive_length(tiny_model_dir, capsys):
    """The flag reaches the engine: each step records the cost model's length, at most --k (0: the
    model switched drafting off for that step)."""
    code = main(["generate", "--model", tiny_model_dir, "--drafter", "early-exit", "--prompt", "def add(a, b):",
                 "--max-new-tokens", "24", "--k", "5", "--adaptive-length", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    caps = [s["draft_cap"] for s in data["steps"][1:]]
    assert caps and all(0 <= c <= 5 for c in caps) and max(caps) >= 1 and data["trace"]["settings"]["adaptive_length"] is True


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "prompt must not be empty"),
    (["--prompt", "x", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--prompt", "x", "--drafter", "warp"], "unknown drafter 'warp'"),
    (["--prompt", "x", "--drafter", "early-exit", "--exit-layer", "9"], r"exit_layer \(E\) must be an integer in \[1, 5\]"),
    (["--prompt", "x", "--drafter", "static-skip", "--k", "0"], r"k \(max draft length\)"),
    (["--prompt", "x", "--drafter", "prompt-lookup", "--answers", "maybe"], r"--answers takes true or false, got 'maybe'"),
    (["--prompt", "x", "--drafter", "prompt-lookup", "--answers", "on"], r"answer store \(answer_store\.safetensors\)"),
])
def test_bad_input_is_a_message_not_a_traceback(tiny_model_dir, capsys, args, message):
    import re
    code = main(["generate", "--model", tiny_model_dir, *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and "Traceback" not in err


def test_unknown_model_message(capsys):
    assert main(["generate", "--model", "nope/nope", "--prompt", "x"]) == 2
    assert "unknown model 'nope/nope'" in capsys.readouterr().err


def test_help_documents_every_option():
    out = run_cli("generate", "--help").stdout
    for flag in ("--model", "--drafter", "--prompt", "--max-new-tokens", "--temperature", "--top-p", "--seed",
                 "--k", "--threshold", "--exit-layer", "--skip", "--max-ngram", "--json"):
        assert flag in out


@pytest.mark.parametrize("args,message", [
    (["--prompt", "x", "--temperature", "1e-38"], r"sampling temperature must be at least 0\.001"),
    (["--prompt", "x" * 3000], r"prompt too long: \d+ tokens, limit 511"),
    (["--prompt", "x", "--drafter", "static-skip", "--skip", "-1,3"], r"skip_layers must be .*got \[-1, 3\]"),
])
def test_adversarial_input_is_a_message(tiny_model_dir, capsys, args, message):
    import re
    code = main(["generate", "--model", tiny_model_dir, *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and "Traceback" not in err, err


def test_options_a_drafter_does_not_take_are_ignored_with_a_note(tiny_model_dir, capsys):
    assert main(["generate", "--model", tiny_model_dir, "--drafter", "ar", "--k", "5", "--prompt", "x",
                 "--max-new-tokens", "3"]) == 0
    assert "drafter 'ar' does not use --k; ignored" in capsys.readouterr().err


def test_folder_without_weights_is_a_message(tmp_path, tiny_model_dir, capsys):
    import shutil
    shutil.copy(f"{tiny_model_dir}/config.json", tmp_path / "config.json")
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "could not load model" in err and "Traceback" not in err
