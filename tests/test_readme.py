"""The README (and the docs/ files it links) as a user reads them: every console command copy-pasteable.

For every `rehrseg_*` and `nnUNetv2_*` command in a ```bash block, each flag it uses must be one of the options
that the installed command lists in its `-h` (exactly: argparse's abbreviations do not count); every shell variable a
file's blocks use must be defined in an earlier line of that file (or be one of nnU-Net's folder variables); every
block must parse as bash. The README is at most 170 lines, keeps the two Quick start commands, and .ci/run runs
exactly its test command.
"""

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
#: the docs files the README links (BENCHMARKS.md is a record of measurements, with its own scripts' commands)
DOCS = sorted(os.path.join(ROOT, "docs", name) for name in set(re.findall(r"\(docs/(\w+\.md)\)", open(README).read()))
              if name != "BENCHMARKS.md")
#: one topic a file (issue 35)
TOPICS = {"usage.md", "variants.md", "nnunet_workflow.md", "crash_safety.md", "sr_stage.md", "conventions.md",
          "recipe.md"}
FILES = [README, *DOCS]
QUICKSTART_MAIN = "bash examples/quickstart.sh"
QUICKSTART_TESTS = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest -q'
#: set by the user once per shell (nnU-Net's documentation); HOME and PWD are the shell's own
ENVIRONMENT = {"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "HOME", "PWD"}
SHELL_WORDS = {"for", "do", "done", "then", "fi", "if", "while", "time", "nice", "env", "command"}


def bash_blocks(path: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", open(path).read(), re.DOTALL)


def without_heredocs(block: str) -> str:
    """The block without the bodies of its here-documents (Python code, not shell)."""
    return re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", block, flags=re.DOTALL)


def console_commands(block: str) -> list[list[str]]:
    """Each rehrseg_* / nnUNetv2_* command of a bash block as its words (comments and assignments dropped)."""
    commands = []
    text = without_heredocs(block).replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word in {";", "&&", "||", "|", "&"} or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    segment.append(word[:-1])
                while segment and (segment[0] in SHELL_WORDS or re.match(r"^[A-Za-z_]\w*=", segment[0])):
                    segment.pop(0)
                if segment and re.match(r"^(rehrseg_|nnUNetv2_)", segment[0]):
                    commands.append(segment)
                segment = []
            else:
                segment.append(word)
    return commands


def flags(command: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in command[1:] if re.match(r"^--?[A-Za-z]", w)]


def options_in_help(text: str) -> set[str]:
    """The option strings of an argparse help: the usage block and each option line (with its aliases)."""
    usage = text.split("\n\n", 1)[0]
    found = set(re.findall(r"\[(--?[A-Za-z][\w-]*)", usage)) | set(re.findall(r"\s(--?[A-Za-z][\w-]*)\s", usage))
    for line in text.splitlines():
        if re.match(r"^\s+-", line):
            found |= set(re.findall(r"(?:^\s+|,\s)(--?[A-Za-z][\w-]*)", line))
    return found


ALL_COMMANDS = sorted({c[0] for path in FILES for block in bash_blocks(path) for c in console_commands(block)})


@pytest.fixture(scope="module")
def help_options(tmp_path_factory):
    """`<cmd> -h` of every command the docs use, run from the venv's bin folder."""
    folder = tmp_path_factory.mktemp("nnunet")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           **{name: str(folder) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}

    def help_text(name: str) -> subprocess.CompletedProcess:
        script = os.path.join(os.path.dirname(sys.executable), name)
        assert os.path.isfile(script), f"{name} is used in the docs but not installed in {os.path.dirname(script)}"
        return subprocess.run([script, "-h"], env=env, capture_output=True, text=True, timeout=300)

    options = {}
    with ThreadPoolExecutor(max_workers=4) as pool:  # nnU-Net's commands import torch for -h: a few s each
        for name, result in zip(ALL_COMMANDS, pool.map(help_text, ALL_COMMANDS), strict=True):
            assert result.returncode == 0, (name, result.stderr[-2000:])
            options[name] = options_in_help(result.stdout)
            assert "-h" in options[name], (name, result.stdout[:500])
    return options


def test_extraction_finds_the_pipeline():
    commands = [c for block in bash_blocks(README) for c in console_commands(block)]
    names = {c[0] for c in commands}
    for name in ("rehrseg_train_sr", "rehrseg_make_pseudohr", "nnUNetv2_plan_and_preprocess", "rehrseg_plan",
                 "nnUNetv2_train", "rehrseg_predict", "rehrseg_evaluate", "rehrseg_export_model"):
        assert name in names, f"the README's pipeline has no {name}"
    assert 8 <= len(commands) <= 14, f"the README's pipeline should be about a dozen commands, has {len(commands)}"
    # comments, assignments and prefixes are not commands or flags
    assert console_commands("X=1 nnUNetv2_train 5 3d_fullres all -tr T  # -bogus\nfor F in 0; do rehrseg_plan -d 5;"
                            " done") == [["nnUNetv2_train", "5", "3d_fullres", "all", "-tr", "T"],
                                         ["rehrseg_plan", "-d", "5"]]
    assert options_in_help("usage: x [-h] -d D [--lr_plans P]\n\noptions:\n  -o O, --output O  out\n"
                           "  --c, --continue  resume\n") == {"-h", "-d", "--lr_plans", "-o", "--output", "--c",
                                                              "--continue"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_flag_is_in_the_commands_help(path, help_options):
    commands = [c for block in bash_blocks(path) for c in console_commands(block)]
    unknown = [(" ".join(c), f) for c in commands for f in flags(c) if f not in help_options[c[0]]]
    assert not unknown, f"flags that `-h` does not list: {unknown}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_block_parses_and_defines_its_variables(path):
    defined = set(ENVIRONMENT)
    for block in bash_blocks(path):
        result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert result.returncode == 0, (path, result.stderr, block[:500])
        shell = without_heredocs(block)
        for line in shell.splitlines():
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", code))
            missing = used - defined - set(re.findall(r"\bfor (\w+) in\b", code))
            assert not missing, f"{os.path.relpath(path, ROOT)}: {sorted(missing)} used before it is defined: {line}"
            defined |= set(re.findall(r"(?:^|\s|export\s)([A-Za-z_]\w*)=", code))
            defined |= set(re.findall(r"\bfor (\w+) in\b", code))


def test_readme_is_an_entry_point():
    text = open(README).read()
    lines = text.splitlines()
    assert len(lines) <= 170, f"README.md has {len(lines)} lines (at most 170)"
    first = bash_blocks(README)[0]
    assert [line for line in first.splitlines() if line and not line.startswith("#")] == [QUICKSTART_MAIN,
                                                                                          QUICKSTART_TESTS]
    assert "source .venv/bin/activate" in bash_blocks(README)[1]
    assert text.index("source .venv/bin/activate") < text.index("## Which path should I use?")
    # the export line is not needed; where it is mentioned, it is for older installs only
    for path in FILES:
        for line in open(path).read().splitlines():
            if "nnUNet_extTrainer" in line and line.lstrip().startswith("export "):
                pytest.fail(f"{os.path.relpath(path, ROOT)} asks for an export line: {line}")
    assert TOPICS <= {os.path.basename(p) for p in DOCS}, "README should link every topic file"
    for path in DOCS:
        assert os.path.isfile(path) and os.path.getsize(path) > 500, f"{path} is linked but missing or empty"


def test_ci_runs_the_readmes_test_command():
    ci = [line for line in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
          if line and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == [QUICKSTART_TESTS]
