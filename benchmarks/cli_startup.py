"""The first minutes with `llm-unlearn`: how fast the command answers, and how much the default
demo prints.

- Startup: wall time of `llm-unlearn --help` (and of a subcommand's help, `--version`, an argument
  error and a data-validation error), each the median of `--repeats` fresh processes, with the peak
  RSS of the child. Baselines in the same run: `python -c pass` and `python -c "import torch"`, so
  the figures can be read as ratios on a noisy host.
- Console: the default `llm-unlearn demo` (minutes; `--skip-demo` leaves it out) with stdout and
  stderr captured together, as a terminal shows them: a line is a newline; a progress bar redrawn
  with carriage returns stays one line. Also counted: Trainer dict lines and warnings. The captured
  console is saved beside the JSON. `--verbose-demo` runs it again with `--verbose` for comparison.

Writes benchmarks/results/cli_startup.json with the machine, the command, the settings and the
targets (help < 1.5 s wall; errors < 1 s; default demo console <= 60 lines).

    flock /tmp/heavy.lock python benchmarks/cli_startup.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, fmt_table, machine_info  # noqa: E402

HELP_LIMIT_S = 1.5
ERROR_LIMIT_S = 1.0
DEMO_LINES_LIMIT = 60


def cli_command() -> tuple[list[str], str]:
    """How to start this checkout's `llm-unlearn`: the console script when it runs this code, else
    ``python -m llm_unlearn``."""
    script = shutil.which("llm-unlearn")
    if script:
        probe = subprocess.run([sys.executable, "-c", "import llm_unlearn, sys; print(llm_unlearn.__file__)"],
                               capture_output=True, text=True, env=_env())
        if probe.returncode == 0 and Path(probe.stdout.strip()).resolve().is_relative_to(REPO):
            return [script], "llm-unlearn (console script)"
    return [sys.executable, "-m", "llm_unlearn"], "python -m llm_unlearn"


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def timed(cmd: list[str], repeats: int, expect: int) -> dict[str, float | int]:
    """Median / min / max wall seconds of `repeats` fresh processes, and the largest peak RSS."""
    walls, rss = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode != expect:
            raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}, expected {expect}\n{err[-2000:]}")
        rss.append(usage.ru_maxrss / 1024)  # KiB -> MiB
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "max_s": round(max(walls), 3), "peak_rss_mb": round(max(rss), 1), "repeats": repeats}


def demo_console(cli: list[str], out: Path, verbose: bool) -> dict:
    cmd = [*cli, *(["--verbose"] if verbose else []), "demo", "--output", str(out), "--overwrite"]
    env = _env()
    env.pop("OMP_NUM_THREADS", None)  # the demo command pins the tiny model to one thread itself
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{text[-3000:]}")
    # a line ends with a newline; str.splitlines would also split at the bars' carriage returns
    lines = text.rstrip("\n").split("\n")
    visible = [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in lines]  # what stays on screen of each line
    return {"command": " ".join(["llm-unlearn", *cmd[len(cli):]]), "wall_s": round(wall, 1),
            "lines": len(lines), "trainer_dict_lines": sum("{'loss'" in ln for ln in lines),
            "warning_lines": sum("Warning" in ln or ln.startswith("warning") for ln in visible),
            "trainer_log_records": _count_lines(out / "trainer_log.jsonl"), "console": "\n".join(visible)}


def _count_lines(path: Path) -> int | None:
    return len(path.read_text().splitlines()) if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="fresh processes per startup measurement (median)")
    p.add_argument("--skip-demo", action="store_true", help="only the startup measurements")
    p.add_argument("--verbose-demo", action="store_true", help="also run the demo with --verbose, for comparison")
    p.add_argument("--out", default=str(RESULTS / "cli_startup.json"))
    args = p.parse_args()

    cli, how = cli_command()
    work = Path(tempfile.mkdtemp(prefix="cli_startup_"))
    data = work / "synth"
    subprocess.run([*cli, "data", "synth", "--authors", "10", "--qa-per-author", "10", "--out", str(data)],
                   check=True, stdout=subprocess.DEVNULL, env=_env())
    cases = {
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        "--help": ([*cli, "--help"], 0),
        "unlearn --help": ([*cli, "unlearn", "--help"], 0),
        "--version": ([*cli, "--version"], 0),
        "argument error (finetune without --data)": ([*cli, "finetune"], 2),
        "data error (unknown split)": ([*cli, "finetune", "--data", str(data), "--split", "retain42",
                                        "--output", str(work / "o")], 2),
    }
    startup = {}
    for name, (cmd, expect) in cases.items():
        startup[name] = timed(cmd, args.repeats, expect)
        print(f"{name:45s} median {startup[name]['median_s']:.3f} s  peak RSS {startup[name]['peak_rss_mb']:.0f} MB",
              flush=True)
    torch_s = startup["python -c 'import torch'"]["median_s"]
    for name in cases:
        startup[name]["ratio_to_import_torch"] = round(startup[name]["median_s"] / torch_s, 3)

    demos = {}
    if not args.skip_demo:
        demos["default"] = demo_console(cli, work / "demo", verbose=False)
        print(f"demo: {demos['default']['lines']} console lines in {demos['default']['wall_s']} s", flush=True)
        if args.verbose_demo:
            demos["verbose"] = demo_console(cli, work / "demo_verbose", verbose=True)
            print(f"demo --verbose: {demos['verbose']['lines']} console lines", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    errors = max(startup["argument error (finetune without --data)"]["median_s"],
                 startup["data error (unknown split)"]["median_s"])
    targets = [
        {"target": "llm-unlearn --help, median wall", "limit": f"< {HELP_LIMIT_S} s",
         "measured": startup["--help"]["median_s"], "pass": startup["--help"]["median_s"] < HELP_LIMIT_S},
        {"target": "argument and data-validation errors, median wall", "limit": f"< {ERROR_LIMIT_S} s",
         "measured": errors, "pass": errors < ERROR_LIMIT_S},
    ]
    if "default" in demos:
        d = demos["default"]
        targets.append({"target": "default demo console lines", "limit": f"<= {DEMO_LINES_LIMIT}",
                        "measured": d["lines"], "pass": d["lines"] <= DEMO_LINES_LIMIT
                        and d["trainer_dict_lines"] == 0})
    rows = [[name, s["median_s"], s["min_s"], s["max_s"], s["peak_rss_mb"], s["ratio_to_import_torch"]]
            for name, s in startup.items()]
    print()
    print(fmt_table(["command", "median s", "min s", "max s", "peak RSS MB", "x import torch"], rows))
    for name, d in demos.items():
        print(f"demo ({name}): {d['lines']} lines, {d['trainer_dict_lines']} Trainer dict lines, "
              f"{d['warning_lines']} warning lines, {d['wall_s']} s")
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['measured']} (target {t['limit']})")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, d in demos.items():
        (out.parent / f"{out.stem}_demo_{name}.txt").write_text(d.pop("console") + "\n")
    result = {
        "machine": machine_info(),
        "command": "python benchmarks/cli_startup.py " + " ".join(sys.argv[1:]),
        "settings": {"cli": how, "repeats": args.repeats, "demo": "default config (tiny model, 20 authors)"},
        "startup": startup, "demo": demos, "targets": targets,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
