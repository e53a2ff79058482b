from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import write_jsonl
from draftheads.scripts.cli import VERBS, build_parser, main

SAMPLE = {"id": "s1", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]}


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v.words))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*verb.words, "--help"])
    assert done.value.code == 0 and verb.summary in " ".join(capsys.readouterr().out.split())


def test_data_inspect_prints_the_mask_and_statistics(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [SAMPLE, SAMPLE])
    assert main(["data", "inspect", "--data", str(path), "--color", "never", "--tokens", "data.max_length=256"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\n⟦Blue.<|im_end|>⟧\n" in out
    assert "training row 1 of 1:" in out and "2 records read, 2 kept" in out and "conversations: 2" in out
    assert "held out for evaluation: 1 conversations" in out
    assert "'Blue'" in out  # the per-token table


def test_data_inspect_colour_marks_the_trained_text(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [SAMPLE])
    main(["data", "inspect", "--data", str(path), "--color", "always"])
    assert "\x1b[30;42mBlue.<|im_end|>\x1b[0m" in capsys.readouterr().out


def test_packed_rows_show_document_boundaries(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [SAMPLE] * 3)
    main(["data", "inspect", "--data", str(path), "--color", "never", "data.packing=true", "data.max_length=512", "data.eval_fraction=0"])
    out = capsys.readouterr().out
    assert out.count("next packed document") == 2 and "packed rows: 1" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "inspect", "--data", "{bad}"], "error: {bad}: no such file or folder"),
        (["data", "inspect", "data.nope=1"], "error: defaults: data.nope: unknown key"),
        (["data", "inspect", "--base", "demo:nothing"], "error: unknown demo model 'demo:nothing'"),
        (["config", "missing.yaml"], "error: missing.yaml: no such recipe file"),
        (["data", "inspect", "--data", "{jsonl}", "--show", "9"], "error: --show 9: the dataset has rows 1..1"),
        (["data", "inspect", "--data", "{jsonl}", "--limit", "0"], "limit must be at least 1"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"conversations": [\n')
    jsonl = write_jsonl(tmp_path / "ok.jsonl", [SAMPLE])
    argv = [a.format(bad=tmp_path / "nope.jsonl", jsonl=jsonl) for a in argv]
    message = message.format(bad=tmp_path / "nope.jsonl")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_line_is_reported_by_the_console_script(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [SAMPLE, '{"conversations": [', SAMPLE])
    done = subprocess.run(["draftheads", "data", "inspect", "--data", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: {path}: line 2: malformed JSON" in done.stderr


def test_config_prints_and_saves_the_resolved_recipe(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "draftheads.scripts.cli", "config", "smollm2-135m/data", "data.max_length=99", "--save", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "max_length: 99" in done.stdout and (tmp_path / "recipe.yaml").read_text() in done.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="what a CPU-only machine launches")
def test_a_cpu_launch_runs_deepspeed_as_deepspeed_and_refuses_fsdp(tmp_path):
    """accelerate turns a launch with use_cpu into plain DDP whatever the config says: DeepSpeed
    configs must launch without it (DeepSpeed has its own CPU accelerator); FSDP cannot run on CPU,
    and saying so beats 2 processes that silently shard nothing."""
    from draftheads.scripts.launch import launch_command

    def args(config):
        return build_parser().parse_args(["train", "smollm2-135m/medusa1", "--accelerate-config", config])

    for config in ("deepspeed-zero2", "deepspeed-zero3"):
        assert "ACCELERATE_USE_CPU" not in launch_command(args(config), "train")[1]
    assert launch_command(args("cpu-2proc"), "train")[1]["ACCELERATE_USE_CPU"] == "true"
    done = subprocess.run([sys.executable, "-m", "draftheads.scripts.cli", "train", "smollm2-135m/medusa1", "--accelerate-config", "fsdp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        "--accelerate-config fsdp: accelerate runs FSDP on GPUs only; "
        "on CPU use deepspeed-zero3, which shards a frozen backbone's layers and the heads the same way"
    )


def test_quick_flags_become_the_overrides_a_relaunch_forwards(tmp_path):
    from draftheads.scripts.launch import launch_command

    a, b = write_jsonl(tmp_path / "a.jsonl", [SAMPLE]), write_jsonl(tmp_path / "b.jsonl", [SAMPLE])
    args = build_parser().parse_args(
        [
            "train", "smollm2-135m/medusa1", "train.max_steps=3", "--data", str(a), "--data", str(b), "--limit", "5", "--base",
            "demo:smollm2-135m", "--accelerate-config", "cpu-2proc"
        ]
    )
    command, env = launch_command(args, "train")
    assert command[command.index("draftheads.scripts.cli") + 1 : command.index("--in-process")] == ["train"]
    forwarded = command[command.index("--in-process") + 1 :]
    assert forwarded[:2] == ["smollm2-135m/medusa1", "train.max_steps=3"]
    assert "data.sources.0.limit=5" in forwarded and "data.sources.1.limit=5" in forwarded
    assert env["ACCELERATE_USE_CPU"] == "true" and command[command.index("--config_file") + 1].endswith("accelerate/cpu-2proc.yaml")
    from draftheads.train.config import load_recipe

    recipe = load_recipe(forwarded[0], forwarded[1:])  # what the relaunched process will train
    assert [s.path for s in recipe.data.sources] == [str(a), str(b)] and recipe.train.max_steps == 3


def test_overrides_may_follow_options_and_unknown_flags_are_refused(tmp_path, capsys):
    args = build_parser().parse_known_args(["train", "smollm2-135m/medusa1", "--accelerate-config", "cpu-2proc", "train.max_steps=3"])
    assert args[1] == ["train.max_steps=3"]  # what main() folds into the overrides
    path = write_jsonl(tmp_path / "d.jsonl", [SAMPLE, SAMPLE])
    assert (
        main(["data", "inspect", "--data", str(path), "--color", "never", "data.max_length=256", "--show", "1", "data.eval_fraction=0"])
        == 0
    )
    assert "training row 1 of 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "inspect", "--data", str(path), "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_gpu_configs_run_one_process_per_gpu(capsys, tmp_path):
    """The shipped fsdp config asks for 8 processes; on a 1-GPU machine 7 of them died at the first
    barrier ("invalid device ordinal"), seen on an H200. The shipped DeepSpeed configs ask for 2 (so
    that they run on a CPU): on 8 GPUs they run 8."""
    from draftheads.scripts.launch import _gpu_processes
    from draftheads.utils.paths import accelerate_config_path

    fsdp = accelerate_config_path("fsdp")
    assert _gpu_processes(fsdp, 1) == ["--num_processes", "1"]
    assert "num_processes 8 set to the 1 GPU(s) present" in capsys.readouterr().err
    assert _gpu_processes(fsdp, 8) == []
    assert _gpu_processes(accelerate_config_path("single-gpu"), 4) == []  # one process: as asked
    assert _gpu_processes(accelerate_config_path("cpu-2proc"), 1) == []  # CPU processes need no GPU
    assert _gpu_processes(accelerate_config_path("deepspeed-zero2"), 8) == ["--num_processes", "8"]  # shipped: one process per GPU
    own = tmp_path / "own.yaml"
    own.write_text(accelerate_config_path("deepspeed-zero2").read_text())
    assert _gpu_processes(own, 8) == []  # a config of one's own asks for 2 of 8: as asked
