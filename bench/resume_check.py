"""Benchmark: a training run killed (SIGKILL) or stopped (SIGTERM) and resumed ends exactly as an uninterrupted one.

    python bench/resume_check.py --shapesworld data/shapesworld

Three runs of the same short stage-2 schedule (the shipped model's preset, started from the shipped model, bf16,
`--steps` steps, a checkpoint every `--save-every`), each a real `visionllm train` process:
1. uninterrupted;
2. killed with SIGKILL at step `--kill-at`, then `--resume`d from its last periodic checkpoint;
3. sent SIGTERM at step `--term-at`: it must save that step and exit with 143; then `--resume`d.
Compared with run 1: every logged step's loss, and every weight of the final model (bit for bit).
Results go to docs/RELIABILITY.md (section `resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from harness import machine, update_section


def write_preset(folder: Path, name: str, args: argparse.Namespace) -> Path:
    preset = yaml.safe_load(Path("configs/tiny_stage2.yaml").read_text())
    preset["base"] = str(Path("configs/tiny.yaml").resolve())
    preset["train"].update(
        output_dir=str(folder / name),
        init_from=str(args.model.resolve()),
        max_steps=args.steps,
        save_every=args.save_every,
        log_every=1,
        eval_every=0,
    )
    preset["train"]["data"]["root"] = str(args.shapesworld.resolve())
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def logged_step(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    steps = [0]
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line).get("step", 0))
    return max(steps)


def train(preset: Path, resume: bool = False, signal_at: tuple[int, int] | None = None) -> int:
    """Run `visionllm train`; with `signal_at=(step, signal)`, send the signal once the log reaches that step."""
    command = [sys.executable, "-m", "visionllm.cli", "train", "--config", str(preset)]
    process = subprocess.Popen(
        command + (["--resume"] if resume else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if signal_at is not None:
        step, number = signal_at
        run = Path(yaml.safe_load(preset.read_text())["train"]["output_dir"])
        while process.poll() is None and logged_step(run) < step:
            time.sleep(0.05)
        process.send_signal(number)
    _, err = process.communicate()
    if process.returncode not in (0, -signal.SIGKILL, 128 + signal.SIGTERM):
        raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}: {err[-2000:]}")
    return process.returncode


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    if len(steps) != len(set(steps)):
        raise RuntimeError(f"{run}: duplicate step records {steps}")
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def same_weights(a: Path, b: Path) -> bool:
    ours, theirs = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapesworld", type=Path, default=Path("data/shapesworld"))
    parser.add_argument("--model", type=Path, default=Path("checkpoints/visionllm-v1-tiny"))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--kill-at", type=int, default=8)
    parser.add_argument("--term-at", type=int, default=7)
    parser.add_argument("--no-report", action="store_true", help="print only; leave docs/RELIABILITY.md as it is")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        whole = write_preset(work, "whole", args)
        train(whole)
        reference = losses(work / "whole")

        killed = write_preset(work, "killed", args)
        kill_code = train(killed, signal_at=(args.kill_at, signal.SIGKILL))
        kill_saved = sorted(int(p.name.split("-")[1]) for p in (work / "killed" / "checkpoints").glob("step-*"))
        train(killed, resume=True)

        stopped = write_preset(work, "stopped", args)
        term_code = train(stopped, signal_at=(args.term_at, signal.SIGTERM))
        term_saved = sorted(int(p.name.split("-")[1]) for p in (work / "stopped" / "checkpoints").glob("step-*"))
        train(stopped, resume=True)

        rows = []
        for name, run, code, saved in [
            ("SIGKILL", "killed", kill_code, kill_saved),
            ("SIGTERM", "stopped", term_code, term_saved),
        ]:
            logged = losses(work / run)
            differing = [s for s in reference if logged.get(s) != reference[s]]
            rows.append(
                (
                    name,
                    code,
                    saved,
                    len(logged),
                    len(differing),
                    same_weights(work / run / "final", work / "whole" / "final"),
                )
            )
    elapsed = time.perf_counter() - started

    lines = [
        "## Resume after SIGKILL and SIGTERM",
        "",
        f"Command: `python bench/resume_check.py --shapesworld {args.shapesworld} --steps {args.steps} "
        f"--save-every {args.save_every} --kill-at {args.kill_at} --term-at {args.term_at}` "
        f"({elapsed:.0f} s; {machine()}).",
        "",
        f"The shipped model's stage-2 preset, started from `{args.model}`, {args.steps} steps of batch 16 in bf16, "
        f"a checkpoint every {args.save_every} steps; each run a `visionllm train` process. An uninterrupted run "
        f"logged {len(reference)} steps (final loss {reference[max(reference)]:.4f}).",
        "",
        "| interruption | exit status | checkpoints left | steps logged after resume | steps whose loss differs "
        "| final weights identical |",
        "|---|---|---|---|---|---|",
    ]
    for name, code, saved, logged, differing, same in rows:
        lines.append(f"| {name} | {code} | {saved} | {logged} | {differing} | {'yes' if same else 'NO'} |")
    lines += [
        "",
        "SIGKILL arrives without warning: the run resumes from its last periodic checkpoint. SIGTERM (and Ctrl-C) "
        "is caught: the run finishes the step in progress, saves it and exits with 143 (130 for Ctrl-C).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_report:
        update_section("resume", text)


if __name__ == "__main__":
    main()
